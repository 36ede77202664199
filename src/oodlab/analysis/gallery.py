"""``oodlab similarity gallery``: eval images next to their nearest training images (paper Fig. 2).

For ``queries`` eval samples drawn with a seeded generator, shows the query and its top-``k``
training neighbours (rank 0 first) with their cosine similarities, so one can see what a given
similarity means visually. Outputs under ``OUT``::

    {eval_set}/gallery.png    one row per query (most similar first): the query (red frame), then
                              its k neighbours captioned "rank r  score" and their keys
    {eval_set}/index.html     the same as a static, self-contained page (images embedded as base64
                              data URIs, with their original bytes)
    {eval_set}/gallery.csv    query_key, rank, train_key, score of the shown pairs
    manifest.json

Images are read by key with :mod:`oodlab.data.lookup` (only the shards that can hold them).
"""

from __future__ import annotations

import html
import io
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from oodlab.utils.artifacts import data_uri, new_figure, save_png, write_csv
from oodlab.data.lookup import read_images
from oodlab.similarity.layout import NeighborsFolder
from oodlab.utils.atomic import write_text
from oodlab.utils.errors import InputError
from oodlab.utils.names import check_names
from oodlab.utils.progress import summary
from oodlab.utils.runs import RunFolder, fingerprint

log = logging.getLogger(__name__)

#: longest side of a thumbnail in gallery.png (pixels)
THUMB = 160


def select_queries(path: Path, queries: int, k: int, seed: int) -> Any:
    """The shown pairs: ``queries`` eval samples drawn uniformly without replacement (seeded), with
    their neighbours of rank < k, ordered by the query's rank-0 score (descending) then rank.

    Returns:
        pandas DataFrame: query_key, rank (int), train_key, score (float64).
    """
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if not {"query_key", "rank", "train_key", "score"} <= set(names):
        raise InputError(path, f"has columns {names}", "expected an `oodlab neighbors` eval file")
    frame = pq.read_table(path, columns=["query_key", "rank", "train_key", "score"],
                          filters=[("rank", "<", k)]).to_pandas()
    if frame.empty:
        raise InputError(path, "holds no neighbours", "re-run `oodlab neighbors` with k >= 1")
    keys = frame["query_key"].drop_duplicates().to_numpy()  # file order
    rng = np.random.default_rng(seed)
    chosen = keys[np.sort(rng.choice(len(keys), size=min(queries, len(keys)), replace=False))]
    shown = frame[frame["query_key"].isin(set(chosen.tolist()))].copy()
    top = shown[shown["rank"] == 0].set_index("query_key")["score"]
    drawn = {q: i for i, q in enumerate(chosen.tolist())}  # file order breaks ties
    order = {q: i for i, q in enumerate(sorted(drawn, key=lambda q: (-top.get(q, -np.inf), drawn[q])))}
    shown["_order"] = shown["query_key"].map(order)
    shown = shown.sort_values(["_order", "rank"], kind="stable").drop(columns="_order").reset_index(drop=True)
    shown["score"] = shown["score"].astype(np.float64)
    return shown


def similarity_gallery(
    neighbors: str | Path,
    eval_data: Mapping[str, str | Path],
    train_data: Sequence[str | Path],
    out: str | Path,
    *,
    queries: int = 8,
    k: int = 10,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Eval images next to their nearest training images: a PNG grid and a self-contained HTML page per eval set.

    Args:
        neighbors: an ``oodlab neighbors`` output folder.
        eval_data: eval set name (as in ``neighbors``) -> where its images are: an ImageFolder root
            or shards (see :func:`oodlab.data.lookup.iter_images`).
        train_data: where the training images are (shards: paths, brace patterns, a folder).
        out: output folder (see module docstring).
        queries: eval samples shown per eval set (all when fewer).
        k: neighbours per query (at most the run's k).
        seed: seed of the query draw (the same seed shows the same queries).
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (also written to ``out/manifest.json``), ``counts`` per eval set.

    Raises:
        InputError: bad counts, a missing eval set, images missing from the data.
    """
    if queries < 1 or k < 1:
        raise InputError(None, f"queries and k must be >= 1 (got {queries}, {k})", None)
    if not eval_data:
        raise InputError(None, "no eval data given", "pass --eval-data EVAL_SET=PATH at least once")
    check_names(eval_data, "eval set")
    folder = NeighborsFolder(neighbors)
    train_data = [train_data] if isinstance(train_data, (str, Path)) else list(train_data)
    paths = {}
    for name in eval_data:
        paths[name] = folder.eval_file(name)
        if not paths[name].exists():
            raise InputError(paths[name], f"not found (eval set {name!r})", f"eval sets in this run: {folder.eval_sets() or 'none'}")
    shown = {}  # every image is found before anything is written
    for name, source in eval_data.items():
        pairs = select_queries(paths[name], queries, k, seed)
        query_keys = pairs["query_key"].drop_duplicates().tolist()
        shown[name] = (pairs, query_keys, read_images(query_keys, source),
                       read_images(pairs["train_key"].drop_duplicates().tolist(), train_data))
    run = RunFolder(out, "similarity gallery",
                    inputs={"neighbors": fingerprint(folder.path), "eval_data": {n: str(p) for n, p in eval_data.items()},
                            "train_data": [str(p) for p in train_data]},
                    parameters={"queries": queries, "k": k, "seed": seed}, reads=[folder.path])
    done = run.open(overwrite)
    if done is not None:
        return done
    counts, ranges = {}, []
    for name, (pairs, query_keys, query_images, train_images) in shown.items():
        rows = [(q, [(int(r.rank), r.train_key, float(r.score)) for r in pairs[pairs["query_key"] == q].itertuples()])
                for q in query_keys]
        k_shown = max(len(n) for _, n in rows)
        if k_shown < k:
            log.warning("the run holds only %d neighbours per query; showing %d, not %d", k_shown, k_shown, k)
        write_csv(run.out / name / "gallery.csv", pairs)
        _plot(rows, query_images, train_images, k_shown, name, run.out / name / "gallery.png")
        write_text(run.out / name / "index.html", _html(rows, query_images, train_images, name, folder.path))
        counts[name] = {"queries": len(rows), "neighbours_per_query": k_shown, "train_images": len(train_images)}
        ranges.append(f"{name} {len(rows)} x {k_shown} (rank-0 similarity {min(n[0][2] for _, n in rows):.3f}.."
                      f"{max(n[0][2] for _, n in rows):.3f})")
    manifest = run.finish(counts=counts, model=folder.manifest().get("model"),
                          outputs={"figure": "{eval_set}/gallery.png", "page": "{eval_set}/index.html",
                                   "table": "{eval_set}/gallery.csv"})
    summary(f"gallery: {'; '.join(ranges)} -> {run.out}")
    return manifest


def _short(key: str, width: int = 24) -> str:
    return key if len(key) <= width else "…" + key[-(width - 1):]


def _thumbnail(data: bytes) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            img.thumbnail((THUMB, THUMB))
            return np.asarray(img)
    except Exception as err:  # an undecodable image is shown as a placeholder, not an error
        log.warning("cannot decode an image (%s)", err)
        return None


def _cell(ax: Any, data: bytes, caption: str, color: str, width: float) -> None:
    thumb = _thumbnail(data)
    if thumb is None:
        ax.text(0.5, 0.5, "unreadable\nimage", ha="center", va="center", fontsize=8, transform=ax.transAxes)
    else:
        ax.imshow(thumb)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(color)
        spine.set_linewidth(width)
    ax.set_title(caption, fontsize=7, pad=3)


def _plot(rows: list, query_images: dict, train_images: dict, k: int, eval_set: str, path: Path) -> None:
    height = 2.0 * len(rows) + 0.5
    fig = new_figure(1.75 * (k + 1), height)
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    # fixed margins (constrained layout is slow for large grids): room for the title and captions
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.75 / height, wspace=0.06, hspace=0.45 if len(rows) > 1 else 0)
    for r, (query, neigh) in enumerate(rows):
        _cell(axes[r, 0], query_images[query], f"query\n{_short(query)}", "C3", 3.0)
        for c in range(k):
            ax = axes[r, c + 1]
            if c < len(neigh):
                rank, key, score = neigh[c]
                _cell(ax, train_images[key], f"rank {rank}  {score:.3f}\n{_short(key)}", "0.6", 1.0)
            else:
                ax.set_axis_off()
    fig.suptitle(f"{eval_set}: nearest training images (cosine similarity)", fontsize=10)
    save_png(fig, path)


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td{padding:6px;vertical-align:top;text-align:center}
td.query{border-right:3px solid #d62728}figure{margin:0}
img{max-width:180px;max-height:180px;display:block;margin:auto}
figcaption{font-size:12px;max-width:180px;word-break:break-all}.score{font-weight:bold}"""


def _figure(data: bytes, caption: str, key: str) -> str:
    return (f'<figure><img src="{data_uri(data)}" alt="{html.escape(key)}" title="{html.escape(key)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _html(rows: list, query_images: dict, train_images: dict, eval_set: str, neighbors: Path) -> str:
    e = html.escape
    lines = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Nearest neighbours: {e(eval_set)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>Nearest training images of {e(eval_set)}</h1>",
             f"<p>Each row: an eval image, then its nearest training images (rank 0 first) with their cosine "
             f"similarity. Source: <code>{e(str(neighbors))}</code>.</p>", "<table>"]
    for query, neigh in rows:
        cells = [f'<td class="query">{_figure(query_images[query], f"query<br>{e(query)}", query)}</td>']
        for rank, key, score in neigh:
            caption = f'rank {rank} <span class="score">{score:.3f}</span><br>{e(key)}'
            cells.append(f"<td>{_figure(train_images[key], caption, key)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines += ["</table>", "</body></html>", ""]
    return "\n".join(lines)
