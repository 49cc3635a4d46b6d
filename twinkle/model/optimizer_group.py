"""One optimizer group per adapter (``''`` for full-parameter training): everything a training loop steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["OptimizerGroup"]


@dataclass
class OptimizerGroup:
    """The per-adapter training state.

    Attributes:
        adapter_name: the PEFT adapter this group trains; ``''`` trains every parameter that requires grad.
        gradient_accumulation_steps: micro-batches per optimizer step (``gas``).
        cur_step: micro-batches that went through ``backward``; optimizer steps = ``cur_step // gas``.
        pending_tokens / pending_samples: local labelled tokens and rows since the last optimizer step; the
            global token count normalises the gradients of sum-reduced losses at the step.
        consumed_train_samples: global rows consumed by finished optimizer steps (for resume).
        done: the ``cur_step`` at which each of clip/step/zero_grad/lr_step last ran, so each runs once per
            optimizer step whatever order the script calls them in.
    """

    adapter_name: str = ""
    gradient_accumulation_steps: int = 1
    optimizer: Any = None
    lr_scheduler: Any = None
    loss: Any = None
    template: Any = None
    processor: Any = None
    train_metrics: list[Any] = field(default_factory=list)
    eval_metrics: list[Any] = field(default_factory=list)
    cur_step: int = 0
    pending_tokens: Any = 0  # int or a device tensor (read once per optimizer step)
    pending_samples: int = 0
    consumed_train_samples: int = 0
    grads_finalized_at: int = -1
    last_grad_norm: Any = None
    done: dict[str, int] = field(default_factory=dict)
    # the last forward: (batch, outputs with logits, training?) kept until backward consumes it
    last_forward: Any = None
    pending_loss: Any = None
    pending_loss_tokens: Any = 0

    @property
    def optimizer_steps(self) -> int:
        return self.cur_step // max(1, self.gradient_accumulation_steps)

    def at_boundary(self) -> bool:
        """True when the last backward completed an accumulation window."""
        return self.cur_step > 0 and self.cur_step % max(1, self.gradient_accumulation_steps) == 0

    def claim(self, op: str) -> bool:
        """Whether ``op`` should run now: at a boundary, and not yet run for this boundary."""
        if not self.at_boundary() or self.done.get(op) == self.cur_step:
            return False
        self.done[op] = self.cur_step
        return True
