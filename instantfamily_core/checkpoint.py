"""The pack's checkpoint: one self-describing safetensors file (DESIGN §3).

Tensors live under the prefixes ``projector.``, ``controlnet.`` (the pose+circle ControlNet in
ComfyUI's ``comfy.cldm.cldm.ControlNet`` naming; the config's ``controlnet`` entry holds its
constructor arguments) and, when the trainer changed the UNet, ``unet.`` (deltas to add to the
base UNet's weights, ComfyUI naming ``diffusion_model.…``). Metadata key ``instantfamily``
holds the InstantFamilyConfig as JSON. Only safetensors is ever read: no unpickling.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import InstantFamilyConfig
from .projector import Projector

METADATA_KEY = "instantfamily"
PREFIXES = ("projector.", "controlnet.", "unet.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


@dataclass
class InstantFamilyModel:
    """A loaded checkpoint: the value of ``INSTANTFAMILY_MODEL``."""

    config: InstantFamilyConfig
    projector: Projector
    controlnet_state: dict[str, torch.Tensor] = field(default_factory=dict)
    unet_deltas: dict[str, torch.Tensor] = field(default_factory=dict)
    path: str = ""
    # Per-process objects built from this checkpoint (e.g. the ControlNet per base MODEL).
    runtime_cache: dict = field(default_factory=dict, repr=False, compare=False)


def save_checkpoint(
    path: str | os.PathLike,
    config: InstantFamilyConfig,
    projector_state: dict[str, torch.Tensor],
    controlnet_state: dict[str, torch.Tensor] | None = None,
    unet_deltas: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the checkpoint atomically (temp file + rename): a crash never leaves half a file."""
    from safetensors.torch import save_file

    config.validate()
    tensors: dict[str, torch.Tensor] = {}
    for prefix, state in (
        ("projector.", projector_state),
        ("controlnet.", controlnet_state or {}),
        ("unet.", unet_deltas or {}),
    ):
        for name, tensor in state.items():
            tensors[prefix + name] = tensor.detach().to("cpu").contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: config.to_json()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _reject_non_safetensors(path: Path) -> None:
    """A safetensors file starts with an 8-byte header length and then '{'; refuse anything else."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise CheckpointError(f"{path}: file is empty or truncated ({len(head)} bytes); download or export it again")
    if head[8:9] == b"{":
        return
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path}: this is a pickle/PyTorch file (.ckpt/.pt/.bin), which InstantFamily refuses to load "
            "because unpickling can run arbitrary code. Export the checkpoint with the bundled trainer "
            "(python -m train.export) to a .safetensors file."
        )
    raise CheckpointError(
        f"{path}: not a safetensors file (unknown header); the file is damaged or of another "
        "format: download or export it again (python -m train.export)"
    )


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> InstantFamilyModel:
    """Load and validate a checkpoint; every failure names the file and what is wrong."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; put InstantFamily checkpoints in ComfyUI/models/instantfamily/")
    _reject_non_safetensors(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as error:  # safetensors raises several types for damaged headers/data
        raise CheckpointError(
            f"{path}: the file is damaged or incomplete (safetensors says: {error}), e.g. an interrupted download "
            "or copy; download or export it again (python -m train.export)"
        ) from error
    if METADATA_KEY not in metadata:
        raise CheckpointError(
            f"{path}: metadata has no '{METADATA_KEY}' entry, so this is not an InstantFamily checkpoint "
            "(a ControlNet or SD model goes in models/controlnet or models/checkpoints instead)"
        )
    try:
        config = InstantFamilyConfig.from_json(metadata[METADATA_KEY])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: invalid InstantFamily config in metadata: {error}") from error

    unknown = sorted(name for name in tensors if not name.startswith(PREFIXES))
    if unknown:
        raise CheckpointError(f"{path}: unexpected tensors {unknown[:3]} (expected prefixes {PREFIXES})")
    groups = {prefix: {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)} for prefix in PREFIXES}

    projector = Projector(config)
    expected = projector.state_dict()
    got = groups["projector."]
    missing = sorted(set(expected) - set(got))
    if missing:
        raise CheckpointError(f"{path}: projector tensors missing: {missing[:5]}")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: unexpected projector tensors {extra[:5]} for the config in its metadata")
    for name, tensor in got.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{path}: projector.{name} has shape {tuple(tensor.shape)} but the config "
                f"(d_gf={config.d_gf}, d_lf={config.d_lf}, L={config.L}, d_K={config.d_K}) needs {tuple(expected[name].shape)}"
            )
    projector.load_state_dict({n: t.float() for n, t in got.items()})
    projector.eval().requires_grad_(False)
    return InstantFamilyModel(
        config=config,
        projector=projector,
        controlnet_state=groups["controlnet."],
        unet_deltas=groups["unet."],
        path=str(path),
    )
