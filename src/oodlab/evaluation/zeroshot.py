"""Zero-shot classification with a CLIP model: class prototypes from prompt templates, cosine logits.

For class ``c`` with prompts ``t_1..t_T`` (templates filled with its name) the prototype is
``w_c = normalize(mean_t normalize(encode_text(t)))``; an image's logits are
``normalize(encode_image(x)) @ W^T`` (cosine similarity, no logit scale), as in CLIP, open_clip,
CLIP_benchmark and both papers.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from oodlab.evaluation.templates import prompts


class ClassPrototypes:
    """Zero-shot class prototypes of one model, each computed once.

    The prototype of class name ``c`` under templates ``T`` is
    ``normalize(mean_t normalize(encode_text(t(c))))``, float32 [d]. Each class's prompts are
    encoded together, in one batch of ``len(T)``, so a prototype does not depend on which other
    classes or datasets were evaluated before (results are bit-identical whether a run is
    resumed or not), and datasets sharing classes and templates (ImageNet and its variants, the
    class subsets of IN-R/A) share them. Memory: one row per distinct (class, template set).

    Args:
        model: an open_clip model (``encode_text``).
        tokenizer: list[str] -> LongTensor [n, context].
    """

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self._rows: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    @torch.inference_mode()
    def __call__(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Prototypes of ``class_names``: float32 [n_classes, d], rows L2-normalised."""
        templates = tuple(templates)
        device = next(self.model.parameters()).device
        for name in class_names:
            if (name, templates) not in self._rows:
                tokens = self.tokenizer(prompts(templates, name)).to(device)
                emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
                self._rows[(name, templates)] = F.normalize(emb.mean(dim=0), dim=-1).cpu()
        return torch.stack([self._rows[(name, templates)] for name in class_names])


def classify(
    model: Any, batches: Iterable[torch.Tensor], prototypes: torch.Tensor, *, k: int = 5
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Zero-shot predictions, batch by batch (memory: one batch).

    Args:
        batches: float image batches [b, 3, H, W] on the model's device and dtype.
        prototypes: float32 [n_classes, d], L2-normalised.

    Yields:
        per batch: ``topk`` int64 [b, min(k, n_classes)] class indices by decreasing cosine,
        ``scores`` float32 [b, same] their cosine similarities, ``logits`` float32
        [b, n_classes] all cosine similarities (in [-1, 1]).
    """
    k = min(k, prototypes.shape[0])
    weights = prototypes.float()
    for x in batches:
        with torch.inference_mode():
            z = F.normalize(model.encode_image(x).float(), dim=-1).cpu()
        logits = z @ weights.T
        scores, topk = logits.topk(k, dim=1)
        yield topk, scores, logits
