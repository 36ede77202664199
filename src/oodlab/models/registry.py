"""Tiny open_clip configurations sized to train on the synthetic world on 2 CPU cores.

They are registered with open_clip (``open_clip.add_model_config``), so every open_clip tool,
including its trainer, accepts their names like any built-in architecture.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"

#: name -> what it is for (the architecture is the JSON file of the same name in ``configs/``)
TINY_MODELS: dict[str, str] = {
    "tiny-vit": "ViT, 32 px, patch 8, width 64, 3 layers; text width 64, 2 layers, context 16 (~3.4M params, 3.2M of them the token embedding)",
    "tiny-rn": "ModifiedResNet [1,1,1,1] width 32, 64 px; same text tower as tiny-vit",
}

_registered = False


def register_tiny_configs() -> None:
    """Make the tiny configs known to open_clip (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    _registered = True
