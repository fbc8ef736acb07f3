"""A PNG grid of studies with their boxes drawn and their reports beside them.

For a person to judge at a glance whether the phantoms look like chest radiographs and
whether boxes, labels and text agree; it reads an export folder, so it shows exactly what
training and tests will see.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from radreport.data.phantoms.export import load_png16, read_manifest

PALETTE = ((255, 80, 80), (80, 200, 255), (255, 200, 60), (120, 255, 120), (255, 120, 255),
           (255, 160, 80), (160, 160, 255))
TILE_PX = 384
TEXT_PX = 360


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def study_tile(rec: dict[str, Any], root: Path) -> Image.Image:
    """One study: the film with numbered finding boxes, and its report to the right."""
    image = load_png16(root / rec["image"])
    scale = TILE_PX / image.shape[0]
    film = Image.fromarray((image * 255).astype(np.uint8)).resize((TILE_PX, TILE_PX))
    tile = Image.new("RGB", (TILE_PX + TEXT_PX, TILE_PX), (18, 18, 18))
    tile.paste(film.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(tile)
    small = _font(11)
    for i, finding in enumerate(rec["findings"]):
        colour = PALETTE[i % len(PALETTE)]
        x0, y0, x1, y1 = (round(c * scale) for c in finding["box"])
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=2)
        draw.text((x0 + 2, max(0, y0 - 12)), f"{i + 1} {finding['kind']}", fill=colour,
                  font=small)
    lines = [f"{rec['study_id']}  {rec['view']}  {rec['size']}px",
             f"Indication: {rec['clinical_indication']}", ""]
    lines += [*_wrapped("FINDINGS: " + rec["findings_text"]), ""]
    lines += _wrapped("IMPRESSION: " + rec["impression_text"])
    draw.multiline_text((TILE_PX + 8, 6), "\n".join(lines), fill=(230, 230, 230), font=small,
                        spacing=2)
    return tile


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, width=58)


def write_contact_sheet(export_dir: Path, out_png: Path, *, count: int = 12,
                        columns: int = 2) -> Path:
    """Tile the first ``count`` studies of an export folder into ``out_png``."""
    records = read_manifest(export_dir)[:count]
    if not records:
        raise ValueError(f"no studies in {export_dir}")
    tiles = [study_tile(rec, export_dir) for rec in records]
    tw, th = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tw, rows * th), (0, 0, 0))
    for n, tile in enumerate(tiles):
        sheet.paste(tile, ((n % columns) * tw, (n // columns) * th))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
