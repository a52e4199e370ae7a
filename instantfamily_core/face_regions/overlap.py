"""Where two slots' regions overlap: keep both, or only the nearest face (``config.OVERLAP_RULES``)."""

from __future__ import annotations

import torch

from ..config import DEFAULT_OVERLAP, OVERLAP_RULES
from ..masks import FaceMasks


def resolve_overlap(face_masks: FaceMasks, overlap: str = DEFAULT_OVERLAP) -> FaceMasks:
    """Apply the overlap rule in image space.

    "both": unchanged (an overlapped pixel sees both faces). "nearest": a pixel covered by several
    slots stays only in the slot whose face centre is nearest (in pixels).
    """
    if overlap not in OVERLAP_RULES:
        raise ValueError(f"overlap must be one of {OVERLAP_RULES}, got {overlap!r}")
    if overlap == "both" or len(face_masks) < 2:
        return face_masks
    n, height, width = face_masks.masks.shape
    on = face_masks.masks >= 0.5  # (N, H, W)
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    cx = face_masks.centres[:, 0].float() * width
    cy = face_masks.centres[:, 1].float() * height
    dx = xs[None, None, :] - cx[:, None, None]  # (N, 1, W)
    dy = ys[None, :, None] - cy[:, None, None]  # (N, H, 1)
    distance = (dx**2 + dy**2).masked_fill(~on, float("inf"))  # (N, H, W)
    nearest = distance.argmin(dim=0)  # (H, W)
    keep = on & (nearest[None] == torch.arange(n)[:, None, None])
    return FaceMasks(masks=keep.float(), centres=face_masks.centres, boxes=face_masks.boxes)
