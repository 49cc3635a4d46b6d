"""``MultiLoraTransformersModel`` client (http.md §9.3): the ``TransformersModel`` API over HTTP, one adapter.

Every method POSTs ``{adapter_name, **kwargs}`` to ``<base>/model/<model_id>/twinkle/<method>``; the server adds
the session prefix to the adapter name. Results come back as JSON (tensors as lists).
"""

from __future__ import annotations

import os
from typing import Any

from twinkle_client.http import request, serialize

__all__ = ["MultiLoraTransformersModel"]


class MultiLoraTransformersModel:
    def __init__(self, model_id: str, **kw: Any) -> None:
        self.model_id = model_id.split("://", 1)[-1]
        self.prefix = f"model/{self.model_id}/twinkle"
        self.adapter_name: str | None = None
        self.kw = kw
        self._post("create")

    def _post(self, route: str, **body: Any) -> Any:
        payload = {k: serialize(v) for k, v in body.items()}
        return request("POST", f"{self.prefix}/{route}", payload)

    def _call(self, route: str, adapter_name: str | None = None, **kwargs: Any) -> Any:
        return self._post(route, adapter_name=adapter_name or self.adapter_name or "default", **kwargs)

    @staticmethod
    def _result(answer: Any) -> Any:
        return answer.get("result") if isinstance(answer, dict) and "result" in answer else answer

    # ---------------------------------------------------------------- adapters
    def add_adapter_to_model(self, adapter_name: str, config: Any, **kwargs: Any) -> dict[str, Any]:
        if kwargs.get("save_dir"):
            kwargs["save_dir"] = os.path.abspath(kwargs["save_dir"])
        answer = self._post("add_adapter_to_model", adapter_name=adapter_name, config=config, **kwargs)
        self.adapter_name = adapter_name
        return answer

    def remove_adapter(self, adapter_name: str | None = None) -> None:
        self._call("remove_adapter", adapter_name)

    # ---------------------------------------------------------------- set-up
    def set_loss(self, loss_cls: str, adapter_name: str | None = None, **kwargs: Any) -> None:
        self._call("set_loss", adapter_name, loss_cls=loss_cls, **kwargs)

    def set_optimizer(self, optimizer_cls: str = "AdamW", adapter_name: str | None = None, **kwargs: Any) -> None:
        self._call("set_optimizer", adapter_name, optimizer_cls=optimizer_cls, **kwargs)

    def set_lr_scheduler(self, scheduler_cls: str, adapter_name: str | None = None, **kwargs: Any) -> None:
        self._call("set_lr_scheduler", adapter_name, scheduler_cls=scheduler_cls, **kwargs)

    def set_template(self, template_cls: str = "Template", adapter_name: str | None = None, **kwargs: Any) -> None:
        self._call("set_template", adapter_name, template_cls=template_cls, model_id=self.model_id, **kwargs)

    def set_processor(self, processor_cls: str = "InputProcessor", adapter_name: str | None = None, **kw: Any):
        self._call("set_processor", adapter_name, processor_cls=processor_cls, **kw)

    def add_metric(self, metric_cls: str, is_training: bool | None = None, adapter_name: str | None = None, **kw):
        self._call("add_metric", adapter_name, metric_cls=metric_cls, is_training=is_training, **kw)

    # ---------------------------------------------------------------- training
    def forward(self, inputs: Any, adapter_name: str | None = None, **kwargs: Any) -> Any:
        return self._result(self._call("forward", adapter_name, inputs=inputs, **kwargs))

    def forward_only(self, inputs: Any, adapter_name: str | None = None, **kwargs: Any) -> Any:
        return self._result(self._call("forward_only", adapter_name, inputs=inputs, **kwargs))

    def forward_backward(self, inputs: Any, adapter_name: str | None = None, **kwargs: Any) -> Any:
        return self._result(self._call("forward_backward", adapter_name, inputs=inputs, **kwargs))

    def calculate_loss(self, adapter_name: str | None = None, **kwargs: Any) -> float:
        return self._result(self._call("calculate_loss", adapter_name, **kwargs))

    def backward(self, adapter_name: str | None = None, **kwargs: Any) -> None:
        self._call("backward", adapter_name, **kwargs)

    def step(self, adapter_name: str | None = None, **kwargs: Any) -> None:
        self._call("step", adapter_name, **kwargs)

    def zero_grad(self, adapter_name: str | None = None, **kwargs: Any) -> None:
        self._call("zero_grad", adapter_name, **kwargs)

    def lr_step(self, adapter_name: str | None = None, **kwargs: Any) -> None:
        self._call("lr_step", adapter_name, **kwargs)

    def clip_grad_norm(self, max_grad_norm: float = 1.0, norm_type: float = 2, adapter_name: str | None = None):
        return self._result(self._call("clip_grad_norm", adapter_name, max_grad_norm=max_grad_norm,
                                       norm_type=norm_type))

    def clip_grad_and_step(self, max_grad_norm: float = 1.0, norm_type: float = 2,
                           adapter_name: str | None = None, **kwargs: Any) -> None:
        self._call("clip_grad_and_step", adapter_name, max_grad_norm=max_grad_norm, norm_type=norm_type, **kwargs)

    def calculate_metric(self, is_training: bool = True, adapter_name: str | None = None, **kw: Any) -> dict:
        return self._result(self._call("calculate_metric", adapter_name, is_training=is_training, **kw))

    def get_train_configs(self, adapter_name: str | None = None, **kwargs: Any) -> str:
        return self._result(self._call("get_train_configs", adapter_name, **kwargs))

    def get_state_dict(self, adapter_name: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return self._result(self._call("get_state_dict", adapter_name, **kwargs))

    # ---------------------------------------------------------------- checkpoints
    def save(self, name: str | None = None, save_optimizer: bool = False, is_sampler: bool = False,
             adapter_name: str | None = None, **kwargs: Any) -> dict[str, str]:
        """Save to the server's storage; returns ``{twinkle_path, checkpoint_dir}`` (a ``twinkle://`` URI)."""
        return self._call("save", adapter_name, name=name, save_optimizer=save_optimizer, is_sampler=is_sampler,
                          **kwargs)

    def load(self, name: str, load_optimizer: bool = False, adapter_name: str | None = None, **kwargs: Any) -> None:
        self._call("load", adapter_name, name=name, load_optimizer=load_optimizer, **kwargs)

    def resume_from_checkpoint(self, name: str, resume_only_model: bool = False,
                               adapter_name: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return self._result(self._call("resume_from_checkpoint", adapter_name, name=name,
                                       resume_only_model=resume_only_model, **kwargs))
