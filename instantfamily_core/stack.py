"""The multimodal embedding stack K = concat(K_t, K_f1, ..., K_fN) (paper Eq. 4-5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .identity import Faces
from .projector import Projector


@dataclass
class EmbeddingStack:
    """Face tokens of N identity slots, in slot order; the value of ``INSTANTFAMILY_STACK``.

    face_tokens: (N, tokens_per_face, d_K). The text tokens are not stored: they are whatever
    context the sampler passes, and the face tokens are appended after them.
    """

    face_tokens: torch.Tensor
    labels: tuple[str, ...] = ()

    @property
    def num_faces(self) -> int:
        return int(self.face_tokens.shape[0])

    @property
    def tokens_per_face(self) -> int:
        return int(self.face_tokens.shape[1])

    def flat_tokens(self) -> torch.Tensor:
        """(N * tokens_per_face, d_K): the face part of the context, slot after slot."""
        return self.face_tokens.reshape(-1, self.face_tokens.shape[-1])


@torch.no_grad()
def build_stack(projector: Projector, faces: Faces) -> EmbeddingStack:
    """Project every identity of ``faces`` (any N, order preserved) into face tokens."""
    config = projector.config
    parameter = next(projector.parameters())
    if len(faces) == 0:
        tokens = parameter.new_zeros(0, config.tokens_per_face, config.d_K)
        return EmbeddingStack(face_tokens=tokens.float().cpu())
    global_feature = torch.from_numpy(faces.global_features()).to(parameter)
    local_feature = torch.from_numpy(faces.local_features()).to(parameter)
    tokens = projector(global_feature, local_feature).float().cpu()  # (N, T, d_K)
    labels = tuple(identity.label or f"ID {i}" for i, identity in enumerate(faces.identities))
    return EmbeddingStack(face_tokens=tokens, labels=labels)


def check_recognizer(config_recognizer, faces_recognizer) -> None:
    """Refuse faces analysed by a recognizer other than the one the checkpoint was trained with."""
    trained, used = config_recognizer, faces_recognizer
    if trained.sha256 and used.sha256 and trained.sha256 != used.sha256:
        raise ValueError(
            f"the faces were analysed with recognizer '{used.file_name}' (sha256 {used.sha256[:12]}…) but this "
            f"InstantFamily checkpoint was trained with '{trained.file_name}' (sha256 {trained.sha256[:12]}…) "
            f"from the '{trained.pack}' pack: load that pack in Load Face Analyzer"
        )
    if tuple(trained.global_shape) != tuple(used.global_shape) or tuple(trained.local_shape) != tuple(used.local_shape):
        raise ValueError(
            f"the face recognizer outputs global {tuple(used.global_shape)} / local {tuple(used.local_shape)} features "
            f"but the checkpoint expects {tuple(trained.global_shape)} / {tuple(trained.local_shape)}: load the "
            f"'{trained.pack or 'trained'}' pack in Load Face Analyzer"
        )
