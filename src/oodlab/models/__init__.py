"""Models: open_clip architectures with weights from local files only, and tiny CPU configs."""

from oodlab.models.loading import LoadedModel, load_model, read_state_dict
from oodlab.models.registry import TINY_MODELS, register_tiny_configs

__all__ = ["LoadedModel", "load_model", "read_state_dict", "TINY_MODELS", "register_tiny_configs"]
