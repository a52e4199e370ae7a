"""The one home of image value conversion: arrays and ComfyUI IMAGE tensors <-> (H, W, 3) uint8 RGB.

One rule everywhere (analyzer, evaluator, nodes, demo CLI), so every reader sees the same pixels
of the same photo: floats are clipped to [0, 1] (NaN -> 0), scaled by 255 and rounded half to even
(``np.round``, as ``torch.round``); 16-bit values are rounded the same way; RGBA is composited over
mid grey (``ALPHA_BACKGROUND``), never dropped, so a transparent pixel's hidden colour never
reaches a detector.
"""

from __future__ import annotations

import numpy as np

ALPHA_BACKGROUND = 128  # transparent pixels are composited over mid grey


def to_rgb_uint8(image, name: str = "image") -> np.ndarray:
    """Any (H, W), (H, W, 1|3|4) uint8 / uint16 / bool / float [0, 1] array -> contiguous (H, W, 3) uint8 RGB.

    Raises ValueError naming ``name`` for any other layout or dtype.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        raise ValueError(f"{name}: expected channels last (H, W, C), got shape {array.shape}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(
            f"{name}: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {array.shape}"
        )
    if array.dtype == np.uint8 and array.shape[-1] != 4:  # fast path, no float copy
        return np.ascontiguousarray(array if array.shape[-1] == 3 else np.repeat(array, 3, axis=2))
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / 65535.0
    elif array.dtype == bool:
        values = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: integer images must be 8- or 16-bit, got {array.dtype}")
    else:
        values = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    values = np.clip(values, 0.0, 1.0)
    if values.shape[-1] == 4:
        alpha = values[:, :, 3:4]
        values = values[:, :, :3] * alpha + (ALPHA_BACKGROUND / 255.0) * (1.0 - alpha)
    elif values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=2)
    return np.ascontiguousarray(np.round(values * 255.0).astype(np.uint8))


def _as_batch(images, name: str):
    """A ComfyUI IMAGE (B, H, W, C), or one (H, W, C) image as a batch of one."""
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise ValueError(f"{name}: expected an IMAGE (B, H, W, 3), got shape {tuple(images.shape)}")
    return images


def image_to_uint8(images, index: int = 0, name: str = "image") -> np.ndarray:
    """Item ``index`` of a ComfyUI IMAGE (B, H, W, C) float 0..1 -> (H, W, 3) uint8 RGB."""
    batch = _as_batch(images, name)
    if not -batch.shape[0] <= index < batch.shape[0]:
        raise ValueError(f"{name}: asked for image {index} of a batch of {batch.shape[0]}")
    return to_rgb_uint8(batch[index].detach().cpu().float().numpy(), f"{name} {index}")


def images_to_uint8(images, name: str = "images") -> list[np.ndarray]:
    """Every item of a ComfyUI IMAGE (B, H, W, C) float 0..1 -> list of (H, W, 3) uint8 RGB."""
    batch = _as_batch(images, name)
    return [image_to_uint8(batch, index, name) for index in range(batch.shape[0])]


def uint8_to_images(arrays):
    """(H, W, 3) uint8 array, (B, H, W, 3) array or list of same-size arrays -> ComfyUI IMAGE (B, H, W, 3) float."""
    import torch

    stacked = np.asarray(arrays) if not isinstance(arrays, (list, tuple)) else np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[None]
    if stacked.ndim != 4 or stacked.shape[-1] != 3 or stacked.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 images, got {stacked.dtype} of shape {stacked.shape}")
    return torch.from_numpy(stacked.astype(np.float32) / 255.0)  # (B, H, W, 3)
