"""Training CLIP with open_clip's trainer: recorded configurations, resumable runs that keep the
untrained epoch 0, and the equivalent torchrun / Slurm command lines for clusters."""

from oodlab.train.checkpoints import Checkpoint, epoch_checkpoints, resolve_checkpoints
from oodlab.train.config import MODEL_DEFAULTS, PAPER_DEFAULTS, TrainConfig
from oodlab.train.data import TrainData, resolve_train_data
from oodlab.train.run import TrainingFailed, train

__all__ = [
    "Checkpoint", "MODEL_DEFAULTS", "PAPER_DEFAULTS", "TrainConfig", "TrainData", "TrainingFailed",
    "epoch_checkpoints", "resolve_checkpoints", "resolve_train_data", "train",
]
