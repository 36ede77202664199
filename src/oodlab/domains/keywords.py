"""``oodlab domains keywords``: the paper's caption baseline, done right.

A sample is flagged a rendition when its caption holds one of the domain words as a whole word,
case-insensitively: a word starts and ends at a letter/digit boundary, so "paintball" does not
match "paint", "Sketchers" does not match "sketch", and "hand-drawn" matches both "hand-drawn"
and "drawn" (a hyphen is a boundary). The reference code matched substrings. With a label file
(ground truth, or a labelled sample) the flags are scored: precision and recall of "rendition".

Outputs: ``flags.parquet`` (key, caption, matched: the first word found or null, flagged),
``manifest.json`` (counts; the score when labels were given).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from oodlab.domains.labels import DOMAINS, read_labels
from oodlab.utils.atomic import write_parquet
from oodlab.utils.errors import InputError
from oodlab.utils.progress import summary
from oodlab.utils.runs import RunFolder, fingerprint

#: words that name a rendition in a caption (singular and plural: matching is whole-word)
RENDITION_WORDS = ("sketch", "sketches", "sketched", "drawing", "drawings", "drawn", "hand-drawn", "painting",
                   "paintings", "painted", "illustration", "illustrations", "clipart", "clip art", "cartoon",
                   "cartoons", "doodle", "doodles", "infographic", "infograph", "vector", "watercolor", "watercolour",
                   "art", "artwork")


def word_pattern(words: Sequence[str]) -> re.Pattern[str]:
    """A case-insensitive pattern matching any of ``words`` as a whole word (longest first, so
    "hand-drawn" wins over "drawn" as the match reported)."""
    if not words:
        raise InputError(None, "no domain words given", "pass --word WORD (repeat) or leave the default list")
    alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.IGNORECASE)


def match_captions(captions: Sequence[str | None], words: Sequence[str] = RENDITION_WORDS) -> list[str | None]:
    """Per caption the first domain word it holds as a whole word (lower case), or None."""
    pattern = word_pattern(words)
    out = []
    for caption in captions:
        m = pattern.search(caption) if caption else None
        out.append(m.group(0).lower() if m else None)
    return out


def domains_keywords(
    store: str | Path,
    out: str | Path,
    *,
    words: Sequence[str] | None = None,
    labels: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Flag the samples whose caption names a rendition, from a store's metadata captions.

    Args:
        store: an embedding store with a ``caption`` metadata column (``oodlab embed --text``, or
            any clip-retrieval folder with captions).
        out: output folder (``flags.parquet``, ``manifest.json``).
        words: the domain words (default :data:`RENDITION_WORDS`).
        labels: a label file to score the flags against (precision, recall of rendition).
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (``counts``; ``score`` with labels).
    """
    import pyarrow as pa

    from oodlab.embeddings.store import EmbeddingStore

    chosen = list(words or RENDITION_WORDS)
    word_pattern(chosen)
    source = EmbeddingStore(store)
    meta = source.read_metadata()
    if "caption" not in meta.columns:
        raise InputError(store, f"has no caption metadata (columns: {list(meta.columns)[:8]})",
                         "embed the shards with --text, or pass a store whose metadata holds captions")
    run = RunFolder(out, "domains keywords", inputs={"store": fingerprint(store),
                                                     "labels": None if labels is None else fingerprint(labels)},
                    parameters={"words": chosen}, reads=[store] + ([labels] if labels else []))
    done = run.open(overwrite)
    if done is not None:
        return done
    keys = meta[source.key_column].astype(str).tolist()
    captions = [None if c is None or c != c else str(c) for c in meta["caption"].tolist()]
    matched = match_captions(captions, chosen)
    flagged = np.array([m is not None for m in matched])
    write_parquet(run.out / "flags.parquet", pa.table({"key": keys, "caption": pa.array(captions, pa.string()),
                                                       "matched": pa.array(matched, pa.string()), "flagged": flagged}))
    counts = {"samples": len(keys), "flagged": int(flagged.sum())}
    score = None
    if labels is not None:
        truth = read_labels(labels)
        known = np.array([k in truth for k in keys])
        is_rendition = np.array([truth.get(k) == DOMAINS.index("rendition") for k in keys])
        tp = int((flagged & is_rendition & known).sum())
        score = {"labelled": int(known.sum()), "precision": tp / max(int((flagged & known).sum()), 1),
                 "recall": tp / max(int((is_rendition & known).sum()), 1)}
    manifest = run.finish(counts=counts, outputs={"flags": "flags.parquet"}, score=score)
    extra = "" if score is None else f"; rendition precision {score['precision']:.3f}, recall {score['recall']:.3f}"
    summary(f"domains keywords: {counts['flagged']:,} of {counts['samples']:,} captions name a rendition{extra} -> {run.out}")
    return manifest
