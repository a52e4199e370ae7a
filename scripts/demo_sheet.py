"""The demo's one picture: references, control image, generation, swapped stack, no faces, and the judge's verdicts.

Used by ``scripts/run_demo.py`` after its ComfyUI prompt has run. The judge (``toyworld/judge.py``,
trained apart from the generator and the recognizer) embeds each person's head in a generated scene
and compares it with fresh portraits of every identity in the stack: who landed where, and how
similar. A verdict is correct when the best match at a position is the identity its slot holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PANEL = 256  # px of each scene panel (the 32 x 32 toy scene enlarged x8)
PORTRAIT = 80
GREEN, RED, GREY, INK = (40, 170, 60), (215, 40, 40), (150, 150, 150), (20, 20, 20)


@dataclass
class Verdict:
    """The judge's reading of one position of one generated scene."""

    position: int
    expected: int | None  # the identity the slot at this position holds (None: no faces given)
    best: int  # the stack identity the judge finds most similar there
    similarity: float  # cosine similarity to ``expected`` (or to ``best`` without an expectation)

    @property
    def correct(self) -> bool | None:
        return None if self.expected is None else self.best == self.expected

    def text(self) -> str:
        if self.expected is None:
            return f"{self.best}? {self.similarity:.2f}"
        return f"{self.best} {self.similarity:.2f} {'ok' if self.correct else 'WRONG'}"


def judge_scene(
    judge, scene: np.ndarray, boxes: np.ndarray, identities: list[int], gallery: np.ndarray, expected: list[int] | None
) -> list[Verdict]:
    """Verdicts per position. scene: (S, S, 3) uint8; boxes: (N, 4) normalised head boxes, left to right;
    gallery: (K, d) unit judge embeddings of ``identities``; expected: identity per position, or None."""
    size = scene.shape[0]
    embeddings = judge.embed(scene, np.asarray(boxes, np.float32) * size)  # (N, d)
    sims = embeddings @ gallery.T  # (N, K)
    verdicts = []
    for position, row in enumerate(sims):
        best = identities[int(row.argmax())]
        target = None if expected is None else expected[position]
        similarity = float(row[identities.index(target)] if target is not None else row.max())
        verdicts.append(Verdict(position, target, best, similarity))
    return verdicts


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def compose(
    references: np.ndarray,
    identities: list[int],
    swapped: list[int],
    panels: dict[str, np.ndarray],
    boxes: np.ndarray,
    verdicts: dict[str, list[Verdict]],
    note: str = "",
):
    """The sheet as a PIL image.

    references: (K, h, w, 3) uint8 portraits of ``identities``; panels: title -> (PANEL, PANEL, 3) uint8,
    in display order; boxes: (N, 4) normalised head boxes; verdicts: title -> per-position verdicts.
    """
    from PIL import Image, ImageDraw

    gap, margin = 10, 12
    title_font, font, small = _font(18), _font(14), _font(12)
    lines_below = max((len(v) for v in verdicts.values()), default=0)
    width = margin * 2 + len(panels) * PANEL + (len(panels) - 1) * gap
    top = margin + 28 + PORTRAIT + 22
    height = top + 22 + PANEL + 8 + 18 * lines_below + margin + (18 if note else 0)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (margin, margin),
        "InstantFamily toy demo: each identity lands in its slot's place; swap two in the stack and they swap places",
        fill=INK,
        font=title_font,
    )
    x = margin
    for portrait, identity in zip(references, identities):
        tile = Image.fromarray(portrait).resize((PORTRAIT, PORTRAIT), Image.Resampling.NEAREST)
        sheet.paste(tile, (x, margin + 28))
        slot = identities.index(identity)
        draw.text((x, margin + 30 + PORTRAIT), f"ID {identity} (slot {slot})", fill=INK, font=small)
        x += PORTRAIT + 2 * gap
    draw.text(
        (x + gap, margin + 28),
        f"stack: {', '.join(map(str, identities))}\n"
        f"swapped: {', '.join(map(str, swapped))}\n(references: never seen in training)",
        fill=INK,
        font=font,
    )
    for column, (title, panel) in enumerate(panels.items()):
        left = margin + column * (PANEL + gap)
        draw.text((left, top), title, fill=INK, font=font)
        sheet.paste(Image.fromarray(panel), (left, top + 22))
        for verdict, box in zip(verdicts.get(title, []), boxes):
            colour = GREY if verdict.correct is None else (GREEN if verdict.correct else RED)
            x1, y1, x2, y2 = (float(v) * PANEL for v in box)
            draw.rectangle((left + x1, top + 22 + y1, left + x2, top + 22 + y2), outline=colour, width=2)
            draw.text((left + x1, top + 22 + y2 + 1), str(verdict.best), fill=colour, font=small)
            line_y = top + 22 + PANEL + 8 + 18 * verdict.position
            draw.text((left, line_y), f"place {verdict.position}: {verdict.text()}", fill=colour, font=font)
    if note:
        draw.text((margin, height - margin - 16), note, fill=INK, font=small)
    return sheet
