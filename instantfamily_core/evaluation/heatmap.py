"""Draw an identity confusion matrix as a labelled heatmap image (PIL only, no matplotlib)."""

from __future__ import annotations

import numpy as np

# Dark blue -> teal -> green -> yellow: ordered in lightness, readable for colour-blind viewers.
_RAMP = np.array([(40, 30, 90), (40, 90, 140), (30, 150, 135), (110, 200, 80), (250, 230, 40)], np.float64)
_MISSING = (150, 150, 150)


def colour(t: float) -> tuple[int, int, int]:
    """Colour of t in [0, 1] on the ramp."""
    t = float(np.clip(t, 0.0, 1.0)) * (len(_RAMP) - 1)
    i = min(int(t), len(_RAMP) - 2)
    c = _RAMP[i] + (t - i) * (_RAMP[i + 1] - _RAMP[i])
    return (int(round(c[0])), int(round(c[1])), int(round(c[2])))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable
    except TypeError:  # older Pillow: fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _shorten(text: str, n: int = 14) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def render_confusion(
    matrix,
    row_labels: list[str],
    col_labels: list[str],
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """(N, M) matrix (NaN = missing) -> (H, W, 3) uint8 heatmap with values in the cells.

    Rows are references, columns generated faces. Colours span [vmin, vmax] (default: the finite
    values' range), shown by the colour bar on the right.
    """
    from PIL import Image, ImageDraw

    m = np.asarray(matrix, np.float64)
    n_rows, n_cols = m.shape
    if len(row_labels) != n_rows or len(col_labels) != n_cols:
        raise ValueError(f"labels ({len(row_labels)} rows, {len(col_labels)} columns) do not fit a {m.shape} matrix")
    finite = m[np.isfinite(m)]
    lo = float(finite.min()) if vmin is None and finite.size else (0.0 if vmin is None else float(vmin))
    hi = float(finite.max()) if vmax is None and finite.size else (1.0 if vmax is None else float(vmax))
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5

    cell = int(np.clip(560 // max(n_rows, n_cols, 1), 34, 80))
    font = _font(max(10, cell // 4))
    small = _font(max(10, cell // 5))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([_text_size(probe, _shorten(s), small)[0] for s in row_labels] + [40]) + 12
    label_h = max([_text_size(probe, _shorten(s), small)[0] for s in col_labels] + [40]) + 12
    title_h = 28 if title else 6
    bar_w = 70
    width = label_w + n_cols * cell + bar_w + 10
    height = title_h + label_h + n_rows * cell + 10
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((6, 6), title, fill=(0, 0, 0), font=_font(14))
    x0, y0 = label_w, title_h + label_h

    for j, label in enumerate(col_labels):  # column labels written bottom-up above their column
        text = _shorten(label)
        tw, th = _text_size(probe, text, small)
        tile = Image.new("RGB", (tw + 4, th + 6), (255, 255, 255))
        ImageDraw.Draw(tile).text((2, 0), text, fill=(0, 0, 0), font=small)
        tile = tile.rotate(90, expand=True)
        img.paste(tile, (x0 + j * cell + (cell - tile.width) // 2, y0 - tile.height - 4))
    for i, label in enumerate(row_labels):
        text = _shorten(label)
        tw, th = _text_size(probe, text, small)
        draw.text((x0 - tw - 6, y0 + i * cell + (cell - th) // 2), text, fill=(0, 0, 0), font=small)

    for i in range(n_rows):
        for j in range(n_cols):
            v = m[i, j]
            box = (x0 + j * cell, y0 + i * cell, x0 + (j + 1) * cell - 1, y0 + (i + 1) * cell - 1)
            if np.isfinite(v):
                fill = colour((v - lo) / (hi - lo))
                text = f"{v:.2f}"
            else:
                fill, text = _MISSING, "none"
            draw.rectangle(box, fill=fill, outline=(255, 255, 255))
            light = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 140
            tw, th = _text_size(draw, text, font)
            draw.text(
                (box[0] + (cell - tw) // 2, box[1] + (cell - th) // 2),
                text,
                fill=(0, 0, 0) if light else (255, 255, 255),
                font=font,
            )

    # colour bar with its range
    bx, bh = x0 + n_cols * cell + 14, n_rows * cell
    for k in range(bh):
        draw.line([(bx, y0 + k), (bx + 14, y0 + k)], fill=colour(1.0 - k / max(bh - 1, 1)))
    draw.text((bx + 18, y0 - 2), f"{hi:.2f}", fill=(0, 0, 0), font=small)
    draw.text((bx + 18, y0 + bh - _text_size(draw, "0", small)[1] - 4), f"{lo:.2f}", fill=(0, 0, 0), font=small)
    return np.asarray(img)
