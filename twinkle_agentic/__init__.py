"""``twinkle_agentic``: upstream's agentic package (multi-turn rollouts with tools, environments, agent rewards).

Not built in Twinkle Commons: its rollouts drive vLLM samplers or API clients (GPU / network). Importing any of
its modules raises ``twinkle.errors.NotBuiltError`` naming the feature, never a silent stub.
"""

from __future__ import annotations


def not_built(module: str, feature: str) -> None:
    from twinkle.errors import NotBuiltError

    raise NotBuiltError(
        f"{module}: {feature} is not built in Twinkle Commons (upstream's twinkle_agentic drives vLLM samplers and "
        f"API clients); write the loop with twinkle.sampler.TorchSampler and twinkle.template's tool-call parsers"
    )
