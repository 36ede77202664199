"""Training CLIP with open_clip's trainer: recorded configurations, resumable runs that keep the
untrained epoch 0, and the equivalent torchrun / Slurm command lines for clusters."""

from oodlab.train.config import MODEL_DEFAULTS, PAPER_DEFAULTS, TrainConfig
from oodlab.train.data import TrainData, resolve_train_data
from oodlab.train.launch import train_commands
from oodlab.train.run import TrainingFailed, train

__all__ = [
    "MODEL_DEFAULTS", "PAPER_DEFAULTS", "TrainConfig", "TrainData", "TrainingFailed", "resolve_train_data", "train",
    "train_commands",
]
