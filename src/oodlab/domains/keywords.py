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
    import pyarrow.parquet as pq

    from oodlab.embeddings.store import EmbeddingStore
    from oodlab.subsets.keylists import KeyListWriter

    chosen = list(words or RENDITION_WORDS)
    word_pattern(chosen)
    source = EmbeddingStore(store)
    names = pq.read_schema(source.parts[0].meta_path).names if source.parts else []
    if "caption" not in names:
        raise InputError(store, f"has no caption metadata (columns: {names[:8]})",
                         "embed the shards with --text, or pass a store whose metadata holds captions")
    run = RunFolder(out, "domains keywords", inputs={"store": fingerprint(store),
                                                     "labels": None if labels is None else fingerprint(labels)},
                    parameters={"words": chosen}, reads=[store] + ([labels] if labels else []))
    done = run.open(overwrite)
    if done is not None:
        return done
    truth = read_labels(labels) if labels is not None else None
    rendition = DOMAINS.index("rendition")
    tally = {"samples": 0, "flagged": 0, "labelled": 0, "tp": 0, "flagged_labelled": 0, "renditions": 0}
    schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("matched", pa.string()), ("flagged", pa.bool_())])
    # part by part: memory is one part's captions, never the store's
    with KeyListWriter(run.out / "flags.parquet", schema) as writer:
        for part in source.parts:
            meta = pq.read_table(part.meta_path, columns=[source.key_column, "caption"]).to_pandas()
            keys = meta[source.key_column].astype(str).tolist()
            captions = [None if c is None or c != c else str(c) for c in meta["caption"].tolist()]
            matched = match_captions(captions, chosen)
            flagged = np.array([m is not None for m in matched], bool)
            writer.write({"key": pa.array(keys, pa.string()), "caption": pa.array(captions, pa.string()),
                          "matched": pa.array(matched, pa.string()), "flagged": pa.array(flagged)})
            tally["samples"] += len(keys)
            tally["flagged"] += int(flagged.sum())
            if truth is not None:
                known = np.array([k in truth for k in keys], bool)
                is_rendition = np.array([truth.get(k) == rendition for k in keys], bool)
                tally["labelled"] += int(known.sum())
                tally["tp"] += int((flagged & is_rendition & known).sum())
                tally["flagged_labelled"] += int((flagged & known).sum())
                tally["renditions"] += int((is_rendition & known).sum())
    counts = {"samples": tally["samples"], "flagged": tally["flagged"]}
    score = None if truth is None else {
        "labelled": tally["labelled"], "precision": tally["tp"] / max(tally["flagged_labelled"], 1),
        "recall": tally["tp"] / max(tally["renditions"], 1)}
    manifest = run.finish(counts=counts, outputs={"flags": "flags.parquet"}, score=score)
    extra = "" if score is None else f"; rendition precision {score['precision']:.3f}, recall {score['recall']:.3f}"
    summary(f"domains keywords: {counts['flagged']:,} of {counts['samples']:,} captions name a rendition{extra} -> {run.out}")
    return manifest
