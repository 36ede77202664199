"""Prompt template sets for zero-shot classification (``{c}`` stands for the class name)."""

from __future__ import annotations

import functools
from typing import Callable

from oodlab.evaluation.classes import resource_lines


@functools.lru_cache(maxsize=None)
def openai_imagenet() -> tuple[str, ...]:
    """The 80 OpenAI ImageNet templates (CLIP paper; open_clip and CLIP_benchmark use the same)."""
    return tuple(resource_lines("openai_imagenet_templates.txt"))


@functools.lru_cache(maxsize=None)
def openai_plus_domainnet() -> tuple[str, ...]:
    """The 80 OpenAI templates plus 6 naming the DomainNet domains they lack (clipart,
    infograph, quickdraw; painting and sketch are in the 80): 86, as in the ICML 2025 evaluation."""
    return openai_imagenet() + tuple(resource_lines("domainnet_templates.txt"))


#: template-set name -> the templates
TEMPLATE_SETS: dict[str, Callable[[], tuple[str, ...]]] = {
    "openai": openai_imagenet,
    "openai+domainnet": openai_plus_domainnet,
}


def prompts(templates: tuple[str, ...], name: str) -> list[str]:
    """The prompts of one class: each template with ``{c}`` replaced by ``name``."""
    return [t.replace("{c}", name) for t in templates]
