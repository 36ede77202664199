"""``oodlab domains label-page``: a self-contained HTML page for labelling a sample by hand.

The page shows the sample's images (embedded as data URIs: it opens from the file system) one
at a time with the rest as a strip; keys ``n`` / ``r`` / ``a`` (or ``1`` / ``2`` / ``3``) label the
current image natural / rendition / ambiguous and move on, the arrow keys move, and "Export"
downloads ``labels.csv`` (key, label), the label file every ``oodlab domains`` command reads.

Which images to show: with predictions, a sample stratified by the classifier's rendition score
(equal numbers from each of ``STRATA`` score bins, so that the rare renditions and the uncertain
middle are labelled, not only the easy naturals); else a uniform sample of the keys.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from oodlab.data.lookup import read_images
from oodlab.domains.model import read_predictions
from oodlab.subsets.keylists import read_keys
from oodlab.utils.artifacts import data_uri
from oodlab.utils.atomic import write_text
from oodlab.utils.errors import InputError
from oodlab.utils.progress import summary
from oodlab.utils.runs import RunFolder, fingerprint

PAGE = "index.html"
STRATA = 5

_SCRIPT = """
const items = JSON.parse(document.getElementById('items').textContent);
const names = {n: 'natural', r: 'rendition', a: 'ambiguous', 1: 'natural', 2: 'rendition', 3: 'ambiguous'};
window.labels = {};
let at = 0;
function show() {
  document.querySelectorAll('.thumb').forEach((el, i) => {
    el.classList.toggle('current', i === at);
    const label = window.labels[items[i]];
    el.dataset.label = label || '';
  });
  document.getElementById('big').src = document.getElementById('t' + at).src;
  document.getElementById('status').textContent =
    `${at + 1} / ${items.length}: ${items[at]} - ${window.labels[items[at]] || 'unlabelled'} ` +
    `(${Object.keys(window.labels).length} labelled)`;
}
window.exportCsv = function () {
  const rows = ['key,label'].concat(items.filter(k => window.labels[k]).map(k => `${k},${window.labels[k]}`));
  return rows.join('\\n') + '\\n';
};
function download() {
  const blob = new Blob([window.exportCsv()], {type: 'text/csv'});
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = 'labels.csv';
  a.click();
}
document.addEventListener('keydown', e => {
  if (names[e.key]) { window.labels[items[at]] = names[e.key]; at = Math.min(at + 1, items.length - 1); }
  else if (e.key === 'ArrowRight') { at = Math.min(at + 1, items.length - 1); }
  else if (e.key === 'ArrowLeft') { at = Math.max(at - 1, 0); }
  else { return; }
  e.preventDefault();
  show();
});
document.querySelectorAll('.thumb').forEach((el, i) => el.addEventListener('click', () => { at = i; show(); }));
document.getElementById('export').addEventListener('click', download);
show();
"""

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}#big{width:256px;height:256px;
image-rendering:pixelated;border:1px solid #ccc}.strip{display:flex;flex-wrap:wrap;gap:4px;margin-top:1em}
.thumb{width:48px;height:48px;border:3px solid transparent;cursor:pointer}.thumb.current{border-color:#0969da}
.thumb[data-label=natural]{outline:3px solid #1a7f37}.thumb[data-label=rendition]{outline:3px solid #cf222e}
.thumb[data-label=ambiguous]{outline:3px solid #9a6700}kbd{border:1px solid #999;border-radius:3px;padding:0 4px}"""


def choose_sample(keys: np.ndarray, scores: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """``n`` keys: uniform, or (with scores float [len(keys)]) about n / STRATA from each
    equal-width bin of the score in [0, 1] (bins with fewer keys give all they have)."""
    rng = np.random.default_rng(seed)
    if scores is None:
        return keys[np.sort(rng.choice(len(keys), min(n, len(keys)), replace=False))]
    bins = np.minimum((np.asarray(scores) * STRATA).astype(int), STRATA - 1)
    chosen = []
    for b in range(STRATA):
        members = np.flatnonzero(bins == b)
        chosen.extend(rng.choice(members, min(len(members), -(-n // STRATA)), replace=False).tolist())
    return keys[np.sort(np.array(chosen[: max(n, 0)], np.int64))] if chosen else keys[:0]


def domains_label_page(
    keys: str | Path,
    data: Sequence[str | Path],
    out: str | Path,
    *,
    domain_predictions: str | Path | None = None,
    sample: int = 200,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a labelling page for a sample of ``keys``.

    Args:
        keys: a key list of the candidates (e.g. a store's or a subset's keys).
        data: where the images are (shards or folders, as ``oodlab similarity gallery`` reads them).
        out: output folder (``index.html``, ``manifest.json``).
        domain_predictions: an ``oodlab domains predict`` folder: stratify by its rendition score.
        sample: images on the page.
        seed: of the sample.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (``keys``: the sampled keys, in page order).
    """
    if sample < 1:
        raise InputError(None, f"sample must be >= 1, got {sample}", "pass --sample 200")
    candidates = np.asarray(read_keys(keys)).astype(str)
    scores = None
    if domain_predictions is not None:
        predicted = read_predictions(domain_predictions, ["p_rendition"])
        score = dict(zip(predicted.key, predicted.p_rendition))
        scores = np.array([score.get(k, np.nan) for k in candidates])
        if np.isnan(scores).any():
            raise InputError(domain_predictions, f"has no prediction for {int(np.isnan(scores).sum())} of the keys",
                             "predict the domains of the store these keys come from")
    run = RunFolder(out, "domains label-page",
                    inputs={"keys": fingerprint(keys), "data": [str(d) for d in data],
                            "domain_predictions": None if domain_predictions is None else fingerprint(domain_predictions)},
                    parameters={"sample": sample, "seed": seed}, reads=[keys, *data] + ([domain_predictions] if domain_predictions else []))
    done = run.open(overwrite)
    if done is not None:
        return done
    chosen = choose_sample(candidates, scores, sample, seed)
    images = read_images(chosen.tolist(), list(data))
    thumbs = "".join(f'<img class="thumb" id="t{i}" src="{data_uri(images[k])}" alt="{html.escape(k)}" title="{html.escape(k)}">'
                     for i, k in enumerate(chosen.tolist()))
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>Label domains</title>',
        f"<style>{_STYLE}</style></head><body>", "<h1>Natural, rendition or ambiguous?</h1>",
        "<p><kbd>n</kbd> natural, <kbd>r</kbd> rendition, <kbd>a</kbd> ambiguous (or <kbd>1</kbd> <kbd>2</kbd> "
        "<kbd>3</kbd>); <kbd>&larr;</kbd> <kbd>&rarr;</kbd> move; click a thumbnail to go to it. "
        '<button id="export">Export labels.csv</button></p>',
        '<img id="big" alt="current image"><p id="status"></p>', f'<div class="strip">{thumbs}</div>',
        f'<script type="application/json" id="items">{json.dumps(chosen.tolist())}</script>',
        f"<script>{_SCRIPT}</script>", "</body></html>", ""])
    write_text(run.out / PAGE, page)
    manifest = run.finish(counts={"sample": len(chosen), "candidates": len(candidates)}, outputs={"page": PAGE},
                          keys=chosen.tolist())
    summary(f"domains label-page: {len(chosen)} of {len(candidates):,} images "
            f"({'stratified by rendition score' if scores is not None else 'uniform'}) -> {run.out / PAGE}")
    return manifest
