"""Training infrastructure: data specs, losses, the GETA step schedule, checkpoints, the loop
and data-parallel training. The optimizer (QASSO) lives in geta_onnx.optim; the loop accepts
any torch.optim.Optimizer plus optional hooks."""
from .checkpoint import load as load_checkpoint
from .checkpoint import save as save_checkpoint
from .data import Data, load_data, split_batch
from .evaluate import evaluate
from .losses import Loss, make_loss
from .loop import CHECKPOINT, TrainResult, train
from .schedule import Schedule, StageInfo, lr_scheduler, plan_steps

__all__ = [
    "CHECKPOINT", "Data", "Loss", "Schedule", "StageInfo", "TrainResult", "evaluate", "load_checkpoint", "load_data",
    "lr_scheduler", "make_loss", "plan_steps", "save_checkpoint", "split_batch", "train",
]
