"""Face region masks: image-space masks per identity slot and their per-layer token grids.

The paper enlarges each detector box by a 25% margin and resizes the resulting binary mask to
every latent grid of the UNet (64², 32², 16², 8² at 512 px). Here a mask lives in normalised
image space (N, H, W) and is resized to any (h, w) grid on demand; a face never vanishes at a
coarse grid because the cell under its centre is always kept on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import DEFAULT_OVERLAP, MASK_MARGIN, OVERLAP_RULES


@dataclass
class FaceMasks:
    """The value of an ``INSTANTFAMILY_FACE_MASKS`` socket.

    masks:   (N, H, W) float in [0, 1], slot n's region in the template image's space.
    centres: (N, 2) normalised (x, y) in [0, 1]: the face centre of slot n.
    boxes:   (N, 4) normalised x1, y1, x2, y2 of the face boxes *before* the margin, or None
             when the masks came from user-drawn masks (no face box known).
    """

    masks: torch.Tensor
    centres: torch.Tensor
    boxes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.masks.dim() != 3:
            raise ValueError(f"FaceMasks.masks must be (N, H, W), got shape {tuple(self.masks.shape)}")
        if self.centres.shape != (self.masks.shape[0], 2):
            raise ValueError(
                f"FaceMasks.centres must be ({self.masks.shape[0]}, 2) to match {self.masks.shape[0]} masks, "
                f"got {tuple(self.centres.shape)}"
            )
        if self.boxes is not None and self.boxes.shape != (self.masks.shape[0], 4):
            raise ValueError(f"FaceMasks.boxes must be ({self.masks.shape[0]}, 4), got {tuple(self.boxes.shape)}")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the mask image space."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])


def enlarge_box(box: torch.Tensor, margin: float) -> torch.Tensor:
    """Scale x1, y1, x2, y2 boxes by (1 + margin) about their centres, clipped to [0, 1].

    box: (..., 4) normalised coordinates. The paper's "25% margin" is margin=0.25.
    """
    centre = (box[..., :2] + box[..., 2:]) / 2
    half = (box[..., 2:] - box[..., :2]) / 2 * (1.0 + margin)
    return torch.cat([centre - half, centre + half], dim=-1).clamp(0.0, 1.0)


def masks_from_boxes(boxes: torch.Tensor, image_size: tuple[int, int], margin: float = MASK_MARGIN) -> FaceMasks:
    """Binary masks of the enlarged boxes.

    boxes: (N, 4) x1, y1, x2, y2 in *pixels* of an image of size (height, width).
    """
    height, width = image_size
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    normalised = (boxes / scale).clamp(0.0, 1.0)
    enlarged = enlarge_box(normalised, margin)
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height  # pixel centres
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    inside_y = (ys[None, :] >= enlarged[:, 1:2]) & (ys[None, :] < enlarged[:, 3:4])  # (N, H)
    inside_x = (xs[None, :] >= enlarged[:, 0:1]) & (xs[None, :] < enlarged[:, 2:3])  # (N, W)
    masks = (inside_y[:, :, None] & inside_x[:, None, :]).float()  # (N, H, W)
    centres = (normalised[:, :2] + normalised[:, 2:]) / 2
    return FaceMasks(masks=masks, centres=centres, boxes=normalised)


def masks_from_images(masks: torch.Tensor, threshold: float = 0.5) -> FaceMasks:
    """Face masks from user-drawn masks (N, H, W); each slot's centre is its mask's centroid."""
    masks = (torch.as_tensor(masks, dtype=torch.float32) >= threshold).float()
    if masks.dim() != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    n, height, width = masks.shape
    empty = [i for i in range(n) if masks[i].sum() == 0]
    if empty:
        raise ValueError(f"mask {empty[0]} is empty: paint the region where that person's face should be")
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    total = masks.sum(dim=(1, 2))
    cx = (masks.sum(dim=1) * xs).sum(dim=1) / total
    cy = (masks.sum(dim=2) * ys).sum(dim=1) / total
    return FaceMasks(masks=masks, centres=torch.stack([cx, cy], dim=1), boxes=None)


def centre_crop_box(image_size: tuple[int, int], target_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centre crop that gives ``image_size`` (H, W) the aspect of
    ``target_size`` (h, w): the crop ComfyUI applies to a control image before resizing it to the
    latent (``comfy.utils.common_upscale(..., "center")``), with the same rounding."""
    height, width = image_size
    old_aspect, new_aspect = width / height, target_size[1] / target_size[0]
    x = y = 0
    if old_aspect > new_aspect:
        x = round((width - width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((height - height * (old_aspect / new_aspect)) / 2)
    return y, x, height - 2 * y, width - 2 * x


def crop_to_latent(face_masks: FaceMasks, latent_size: tuple[int, int]) -> FaceMasks:
    """The part of the template a latent of ``latent_size`` (h, w) shows, as ComfyUI shows it.

    Masks and circles are drawn in the template's space; ComfyUI fits the control image to the
    latent by a centre crop to the latent's aspect, then a resize. The masks take the same crop,
    so mask cells and circles stay on the same pixels. Same aspect: the masks unchanged.
    """
    top, left, height, width = centre_crop_box(face_masks.image_size, latent_size)
    if (height, width) == face_masks.image_size:
        return face_masks
    full_h, full_w = face_masks.image_size
    offset = torch.tensor([left / full_w, top / full_h])
    scale = torch.tensor([full_w / width, full_h / height])
    boxes = None
    if face_masks.boxes is not None:
        boxes = ((face_masks.boxes.view(-1, 2, 2) - offset) * scale).view(-1, 4)
    return FaceMasks(
        masks=face_masks.masks[:, top : top + height, left : left + width],
        centres=(face_masks.centres - offset) * scale,
        boxes=boxes,
    )


def latent_grid(tokens: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of an attention layer with ``tokens`` queries.

    The UNet halves the latent with stride-2 convolutions (padding 1), i.e. ceil division,
    so a 64x36 latent has grids 64x36, 32x18, 16x9, 8x5.
    """
    h, w = latent_size
    while h * w > tokens and (h > 1 or w > 1):
        h, w = -(-h // 2), -(-w // 2)
    if h * w != tokens:
        raise ValueError(f"no downsampling of latent {latent_size} has {tokens} positions")
    return h, w


def masks_on_grid(face_masks: FaceMasks, grid: tuple[int, int], overlap: str = DEFAULT_OVERLAP) -> torch.Tensor:
    """Resize slot masks to an attention grid: (N, h*w) bool, row-major like the UNet's tokens.

    A cell is on when at least half of it is covered (area resampling); the cell under each
    face centre is always on (unless the slot's mask is empty), so no face vanishes at 8x8. With ``overlap="nearest"`` a cell
    covered by several faces is kept only for the face whose centre is nearest.
    """
    h, w = grid
    n = len(face_masks)
    if n == 0:
        return torch.zeros(0, h * w, dtype=torch.bool)
    coverage = F.interpolate(face_masks.masks[:, None].float(), size=(h, w), mode="area")[:, 0]  # (N, h, w)
    on = coverage >= 0.5
    col = (face_masks.centres[:, 0] * w).long().clamp(0, w - 1)
    row = (face_masks.centres[:, 1] * h).long().clamp(0, h - 1)
    inside = ((face_masks.centres >= 0) & (face_masks.centres <= 1)).all(dim=1)  # a cropped-off centre forces nothing
    present = (face_masks.masks.flatten(1).amax(dim=1) > 0) & inside  # an all-off mask stays off
    on[torch.arange(n), row, col] |= present
    if overlap == "nearest" and n > 1:
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        dx = xs[None, None, :] - face_masks.centres[:, 0, None, None]  # (N, 1, w)
        dy = ys[None, :, None] - face_masks.centres[:, 1, None, None]  # (N, h, 1)
        distance = (dx**2 + dy**2).masked_fill(~on, float("inf"))  # (N, h, w)
        nearest = distance.argmin(dim=0)  # (h, w)
        on = on & (nearest[None] == torch.arange(n)[:, None, None])
        on[torch.arange(n), row, col] |= present
    elif overlap not in OVERLAP_RULES:
        raise ValueError(f"overlap must be one of {OVERLAP_RULES}, got {overlap!r}")
    return on.reshape(n, h * w)
