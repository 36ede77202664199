"""A contact sheet of a world: one example per class (rows) and domain (columns)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from oodlab.data.synth.domains import DOMAIN_NAMES
from oodlab.data.synth.plan import DOMAINNET, WorldPlan
from oodlab.utils.atomic import atomic_path


def write_contact_sheet(root: Path, plan: WorldPlan, path: Path) -> Path:
    """Write a PNG grid of the first DomainNet test image of each class x domain, read from ``root``.

    Cells are the images upscaled (at least 96 px) so that they are legible; class names label
    the rows and domain names the columns. Returns ``path``.
    """
    layout = plan.layouts[DOMAINNET]
    size = plan.config.image_size
    cell = max(96, 2 * size)
    font = ImageFont.load_default(size=max(12, cell // 8))
    label_w, header_h = cell, cell // 4
    sheet = Image.new("RGB", (label_w + cell * len(DOMAIN_NAMES), header_h + cell * len(plan.class_names)), "white")
    draw = ImageDraw.Draw(sheet)
    for col, domain in enumerate(DOMAIN_NAMES):
        draw.text((label_w + col * cell + 4, 4), domain, fill="black", font=font)
    per_class = layout.n_train + layout.n_test
    for row, name in enumerate(plan.class_names):
        y = header_h + row * cell
        draw.text((4, y + cell // 2 - 8), name, fill="black", font=font)
        for col in range(len(DOMAIN_NAMES)):
            first_test = col * layout.per_domain + row * per_class + layout.n_train
            with Image.open(root / DOMAINNET / layout.item(first_test).key) as img:
                tile = img.convert("RGB").resize((cell, cell), Image.Resampling.BICUBIC)
            sheet.paste(tile, (label_w + col * cell, y))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
