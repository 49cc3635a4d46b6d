"""Learning-rate schedulers found by name in ``model.set_lr_scheduler('CosineWarmupScheduler', ...)``.

Both are ``torch.optim.lr_scheduler.LambdaLR``; ``s`` counts optimizer steps (one per ``lr_step``).
"""

from twinkle.module.scheduler._warmup import CosineWarmupScheduler, LinearWarmupScheduler

__all__ = ["CosineWarmupScheduler", "LinearWarmupScheduler"]
