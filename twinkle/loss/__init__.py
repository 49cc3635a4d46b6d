"""Training losses. Each is called as ``loss(inputs, outputs, **kw) -> {'loss', 'num_tokens'}``.

``torch_loss_mapping`` maps upstream's short names (the snake_case class name without ``Loss``: ``dpo``,
``dr_grpo``, ``infonce``, ...) to the classes.
"""

from twinkle.loss.base import Loss, selective_log_softmax
from twinkle.loss.cross_entropy import ChunkedCrossEntropyLoss, CrossEntropyLoss
from twinkle.loss.dpo import DPOLoss
from twinkle.loss.gkd import GKDLoss
from twinkle.loss.grpo import GRPOLoss
from twinkle.loss.grpo_variants import BNPOLoss, CISPOLoss, DRGRPOLoss, GSPOLoss, SAPOLoss
from twinkle.loss.infonce import InfonceLoss
from twinkle.loss.liger import LigerFusedLinearCrossEntropyLoss
from twinkle.loss.mse import MSELoss
from twinkle.loss.preference import CPOLoss, ORPOLoss, SimPOLoss

torch_loss_mapping = {
    "cross_entropy": CrossEntropyLoss,
    "chunked_cross_entropy": ChunkedCrossEntropyLoss,
    "mse": MSELoss,
    "dpo": DPOLoss,
    "simpo": SimPOLoss,
    "cpo": CPOLoss,
    "orpo": ORPOLoss,
    "grpo": GRPOLoss,
    "gspo": GSPOLoss,
    "sapo": SAPOLoss,
    "cispo": CISPOLoss,
    "bnpo": BNPOLoss,
    "dr_grpo": DRGRPOLoss,
    "gkd": GKDLoss,
    "infonce": InfonceLoss,
    "liger_fused_linear_cross_entropy": LigerFusedLinearCrossEntropyLoss,
}

__all__ = [
    "BNPOLoss",
    "CISPOLoss",
    "CPOLoss",
    "ChunkedCrossEntropyLoss",
    "CrossEntropyLoss",
    "DPOLoss",
    "DRGRPOLoss",
    "GKDLoss",
    "GRPOLoss",
    "GSPOLoss",
    "InfonceLoss",
    "LigerFusedLinearCrossEntropyLoss",
    "Loss",
    "MSELoss",
    "ORPOLoss",
    "SAPOLoss",
    "SimPOLoss",
    "selective_log_softmax",
    "torch_loss_mapping",
]
