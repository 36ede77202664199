"""Writing the analysis artifacts: figures (Agg, no display), CSV tables and HTML, atomically and
byte-reproducibly (no timestamps or software versions inside the files)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from oodlab.utils.atomic import atomic_open


def new_figure(width: float, height: float, **kwargs: Any) -> Any:
    """A matplotlib Figure on the Agg canvas (never pyplot: no global state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Render ``fig`` to ``path`` as PNG atomically; the same figure gives the same bytes."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, metadata={"Software": None})
    return path


def write_csv(path: str | Path, frame: Any) -> Path:
    """Write a pandas DataFrame as CSV (no index, '\\n' line ends) atomically."""
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        frame.to_csv(f, index=False, lineterminator="\n")
    return path


def data_uri(data: bytes) -> str:
    """An image's bytes as a ``data:`` URI (its MIME type read from the bytes), so that a page
    embeds it and opens from the file system with nothing beside it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            mime = Image.MIME.get(img.format or "", "application/octet-stream")
    except Exception:
        mime = "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
