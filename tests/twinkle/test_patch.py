import pytest
import torch

from twinkle.patch import Patch


class ScaleLinear(Patch):
    def __call__(self, module, factor=2.0):
        with torch.no_grad():
            for m in module.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.mul_(factor)


class Replace(Patch):
    def __call__(self, module):
        return torch.nn.Sequential(module, torch.nn.Identity())


def test_patch_changes_module_in_place_and_base_is_abstract():
    lin = torch.nn.Linear(2, 2, bias=False)
    before = lin.weight.clone()
    assert ScaleLinear()(lin, factor=3.0) is None
    assert torch.allclose(lin.weight, before * 3)
    assert isinstance(Replace()(lin), torch.nn.Sequential)
    with pytest.raises(NotImplementedError):
        Patch()(lin)
