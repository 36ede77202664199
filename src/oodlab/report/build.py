"""``oodlab report OUT``: one static, self-contained HTML page of a demo folder's results.

``OUT/report/index.html`` opens from the file system without a server: figures are embedded as
``data:`` URIs, tables are the experiments' own ``*.md`` tables rendered as HTML, and links to
the artifacts and manifests are relative to the page. Sections (:data:`SECTIONS`, in pipeline
order) each read their artifacts and are left out when those are missing, so a partial demo gives
a partial report; each later experiment adds its section to the registry.
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from oodlab.utils.artifacts import data_uri, new_figure
from oodlab.train.log import read_losses
from oodlab.utils.atomic import read_json, write_text
from oodlab.utils.errors import InputError
from oodlab.utils.progress import summary
from oodlab.utils.runs import RunFolder, fingerprint

REPORT = "report"
PAGE = "index.html"
DEMO_RESULTS = "demo.json"

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}.holds{color:#1a7f37;font-weight:bold}
.fails{color:#cf222e;font-weight:bold}.inconclusive{color:#9a6700;font-weight:bold}
figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:560px;border:1px solid #eee}
figcaption{font-size:13px;color:#555;max-width:560px}.note{color:#555;font-size:14px}
nav a{margin-right:1em}code{background:#f6f6f6;padding:0 3px}"""


@dataclass
class Page:
    """What the sections read (the demo folder and its ``demo.json``) and where the page goes."""

    folder: Path
    results: dict[str, Any]
    out: Path

    def link(self, path: str | Path, text: str | None = None) -> str:
        """A link, relative to the page, to an artifact under the demo folder (None if missing)."""
        target = Path(path)
        if not target.is_absolute():
            target = self.folder / target
        rel = Path("..") / target.relative_to(self.folder) if target.is_relative_to(self.folder) else target
        return f'<a href="{html.escape(rel.as_posix())}">{html.escape(text or rel.name)}</a>'


def _figure(path: Path, caption: str) -> str:
    return (f'<figure><img src="{data_uri(path.read_bytes())}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


_NUMBER = re.compile(r"^[-+]?[0-9.,]+")


def markdown_tables(text: str) -> str:
    """The pipe tables and paragraphs of oodlab's ``*.md`` tables as HTML (``**x**`` -> bold;
    verdict words get their colour). Only the subset oodlab writes is understood."""
    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-:") for c in r)]
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead><tbody>")
            for r in body:
                cells = []
                for c in r:
                    bold = c.startswith("**") and c.endswith("**")
                    word = c.strip("*")
                    inner = f'<span class="{word}">{html.escape(word)}</span>' if bold else html.escape(c)
                    cls = ' class="num"' if _NUMBER.match(c) else ""
                    cells.append(f"<td{cls}>{inner}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        else:
            flush()
            if line.strip():
                out.append(f'<p class="note">{html.escape(line)}</p>')
    flush()
    return "\n".join(out)


def _md_file(page: Page, path: Path) -> str:
    return markdown_tables(path.read_text(encoding="utf-8")) + f'<p class="note">source: {page.link(path)}</p>'


def _world(page: Page) -> str | None:
    sheet = page.folder / "world" / "contact_sheet.png"
    if not sheet.is_file():
        return None
    counts = page.results.get("world", {}).get("counts", {})
    table = "<table><tr><th>Dataset</th><th>Images</th></tr>" + "".join(
        f'<tr><td>{html.escape(k)}</td><td class="num">{v:,}</td></tr>' for k, v in counts.items()) + "</table>"
    return (_figure(sheet, "contact sheet: each class in each domain") + table
            + f'<p class="note">{page.link(page.folder / "world" / "world.json")} · '
              f'{page.link(page.folder / "world" / "manifest.json", "world manifest")}</p>')


def _similarity_space(page: Page) -> str | None:
    model, nb = page.results.get("model"), page.results.get("neighbors")
    if not model or not nb:
        return None
    parts = [f"<p>The similarity model (CLIP trained on the pool) reaches zero-shot top-1 "
             f"<b>{100 * model['val_top1']:.1f}%</b> on val. {page.link(model['config'], 'config.json')}</p>"]
    if "agreement_md" in nb:
        parts.append(markdown_tables(nb["agreement_md"]))
    parts.append(f"<p>Planted near-duplicates recovered as their test image's nearest pool neighbour: "
                 f"{nb['recovered_as_top1']} of {nb['planted_duplicates']}. "
                 f"{page.link(page.folder / 'neighbors' / 'manifest.json', 'neighbours manifest')}</p>")
    return "\n".join(parts)


def _gap(page: Page) -> str | None:
    gap = page.folder / "similarity" / "gap"
    figures = sorted(gap.glob("histogram_*.png"))
    if not figures:
        return None
    return ("".join(_figure(f, f.stem.replace("histogram_", "") + ": NN similarity to the pool vs ImageNet-train")
                    for f in figures) + f'<p class="note">{page.link(gap / "summary.csv")} · '
            f'{page.link(gap / "histograms.csv")}</p>')


def _gallery(page: Page) -> str | None:
    folder = page.folder / "similarity" / "gallery"
    figures = sorted(folder.glob("*/gallery.png"))
    if not figures:
        return None
    return "".join(_figure(f, f"{f.parent.name}: test images (red) and their nearest pool images") +
                   f'<p class="note">{page.link(f.parent / "index.html", "full-size gallery")}</p>' for f in figures)


def _experiment_tables(page: Page) -> str | None:
    folder = page.folder / "experiment"
    files = [folder / n for n in ("pruned.md", "table.md", "claims.md") if (folder / n).is_file()]
    if not files:
        return None
    return "\n".join(_md_file(page, f) for f in files) + (
        f'<p class="note">{page.link(folder / "results.json", "results.json (every seed)")} · '
        f'{page.link(folder / "table.csv")} · {page.link(folder / "claims.csv")} · '
        f'{page.link(folder / "manifest.json", "experiment manifest")}</p>')


def _domains(page: Page) -> str | None:
    folder = page.folder / "domains"
    files = [f for f in (folder / "composition" / "compose.md", folder / "checks.md", folder / "experiment" / "table.md",
                         folder / "experiment" / "claims.md") if f.is_file()]
    if not files:
        return None
    curves = sorted((folder / "calibration").glob("curve_*.png"))
    return ("\n".join(_md_file(page, f) for f in files)
            + "".join(_figure(c, c.stem.replace("curve_", "") + ": precision vs recall on the calibration sample")
                      for c in curves)
            + f'<p class="note">{page.link(folder / "calibration" / "thresholds.json")} · '
              f'{page.link(folder / "head" / "head.json")} · {page.link(folder / "composition" / "compose.csv")}</p>')


def _accuracy(page: Page) -> str | None:
    figures = sorted((page.folder / "experiment" / "accuracy").glob("*/accuracy.png"))
    if not figures:
        return None
    return "".join(_figure(f, f"{f.parent.name}: accuracy of the full-pool model vs NN similarity") for f in figures)


def _loss_curves(page: Page) -> str | None:
    runs = {"similarity model": [page.folder / "model"]}
    for row in sorted((page.folder / "experiment" / "runs").glob("*")):
        runs[row.name] = sorted(row.glob("seed-*"))
    runs = {name: [r for r in folders if (r / "out.log").is_file()] for name, folders in runs.items()}
    runs = {name: folders for name, folders in runs.items() if folders}
    if not runs:
        return None
    return "".join(_loss_figure(name, folders) for name, folders in runs.items())


def _loss_figure(name: str, folders: list[Path]) -> str:
    fig = new_figure(4.2, 2.8, layout="constrained")
    ax = fig.add_subplot()
    for folder in folders:
        losses = read_losses(folder / "out.log")
        ax.plot(losses["samples"] / 1000, losses["loss"], linewidth=1, label=folder.name if folder.name.startswith("seed") else None)
    ax.set_xlabel("samples seen (thousands)")
    ax.set_ylabel("contrastive loss")
    ax.set_title(name, fontsize=10)
    ax.grid(alpha=0.3)
    if len(folders) > 1:
        ax.legend(fontsize=7, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return (f'<figure><img src="{data_uri(buffer.getvalue())}" alt="loss curve {html.escape(name)}">'
            f"<figcaption>{html.escape(name)}: training loss ({len(folders)} run(s))</figcaption></figure>")


def _artifacts(page: Page) -> str | None:
    manifests = sorted(p for p in page.folder.glob("**/manifest.json") if REPORT not in p.relative_to(page.folder).parts)
    if not manifests:
        return None
    items = "".join(f"<li>{page.link(p, p.relative_to(page.folder).as_posix())}</li>" for p in manifests)
    return f"<p>Every stage's completion record (inputs, parameters, outputs):</p><ul>{items}</ul>"


#: section title -> its body from the demo folder (None: its artifacts are not there)
SECTIONS: dict[str, Callable[[Page], str | None]] = {
    "The synthetic world": _world,
    "The similarity space": _similarity_space,
    "Train-test similarity gap": _gap,
    "Nearest neighbours": _gallery,
    "ICLR 2024: pruning by similarity": _experiment_tables,
    "Accuracy vs similarity": _accuracy,
    "ICLR 2025: natural, rendition, ambiguous": _domains,
    "Training runs": _loss_curves,
    "Artifacts and manifests": _artifacts,
}


def report(out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``OUT/report/index.html`` from a demo folder (the output of ``oodlab demo``).

    Args:
        out: the demo folder (holds ``demo.json``); the page goes to ``OUT/report/``.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`): the report of
            a demo folder that has changed since it was written needs it.

    Returns:
        the manifest (``sections``: the titles on the page).
    """
    folder = Path(out)
    results_path = folder / DEMO_RESULTS
    if not results_path.is_file():
        raise InputError(results_path, "not found", "pass the output folder of `oodlab demo` (run the demo first)")
    run = RunFolder(folder / REPORT, "report", inputs={"demo": fingerprint(results_path)}, parameters={},
                    reads=[results_path])
    done = run.open(overwrite)
    if done is not None:
        return done
    page = Page(folder, read_json(results_path), run.out)
    bodies = {title: body for title, fn in SECTIONS.items() if (body := fn(page)) is not None}
    anchors = {title: re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") for title in bodies}
    e = html.escape
    lines = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>oodlab report: {e(folder.name)}</title><style>{_STYLE}</style></head><body>",
             "<h1>oodlab report</h1>",
             f'<p class="note">Demo folder <code>{e(str(folder.resolve()))}</code>; every number below is read from '
             f"its artifacts (linked).</p>",
             "<nav>" + "".join(f'<a href="#{anchors[t]}">{e(t)}</a>' for t in bodies) + "</nav>"]
    for title, body in bodies.items():
        lines += [f'<section id="{anchors[title]}"><h2>{e(title)}</h2>', body, "</section>"]
    lines += ["</body></html>", ""]
    write_text(run.out / PAGE, "\n".join(lines))
    manifest = run.finish(counts={"sections": len(bodies)}, outputs={"page": PAGE}, sections=list(bodies))
    summary(f"report: {len(bodies)} sections -> {run.out / PAGE}")
    return manifest
