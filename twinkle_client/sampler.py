"""Sampler client (http.md §9.3): ``<base>/sampler/<model_id>/twinkle/*``; ``TorchSampler`` serves it on the CPU."""

from __future__ import annotations

from typing import Any

from twinkle_client.http import request, serialize

__all__ = ["TorchSampler", "vLLMSampler"]


class vLLMSampler:
    def __init__(self, model_id: str, **kw: Any) -> None:
        self.model_id = model_id.split("://", 1)[-1]
        self.prefix = f"sampler/{self.model_id}/twinkle"
        request("POST", f"{self.prefix}/create", {})

    def set_template(self, template_cls: str = "Template", adapter_name: str = "", **kwargs: Any) -> None:
        request("POST", f"{self.prefix}/set_template",
                {"template_cls": template_cls, "adapter_name": adapter_name, **serialize(kwargs)})

    def sample(self, inputs: Any, sampling_params: Any = None, adapter_name: str = "", adapter_uri: str | None = None,
               num_samples: int = 1) -> list[dict[str, Any]]:
        """Sample with the base model, your live adapter (``adapter_name``) or a checkpoint (``adapter_uri``)."""
        body = {"inputs": serialize(inputs), "sampling_params": serialize(sampling_params),
                "adapter_name": adapter_name, "adapter_uri": adapter_uri}
        return request("POST", f"{self.prefix}/sample", body)["samples"]


TorchSampler = vLLMSampler
