"""Which queries of one attention grid see which faces: the plan the masked attention runs.

Built once per grid (and per batch layout) from the face masks; it groups queries by the set of
faces they see, caches the index tensors and boolean masks each kernel needs, and decides by a
cost model which of the two exact kernels is cheaper on its grid.
"""

from __future__ import annotations

import torch

# The kernel choice's cost model, in query-key pairs of the host's fused attention (measured on a
# 2-core CPU, torch 2.14, SD1.5 widths, 256 px): a boolean-masked SDPA runs the unfused math
# kernel, about 2.5x the cost per pair; one region group's fixed work (gathers, a kernel launch)
# costs about as much as 5k pairs.
DENSE_PAIR_COST = 2.5
GROUP_OVERHEAD_PAIRS = 5_000


class RegionPlan:
    """Which queries of one attention grid see which faces, precomputed once per grid.

    visibility: (R, N, Q) bool. R == 1: shared by every face-seeing row; else one per row.
    """

    def __init__(self, visibility: torch.Tensor):
        if visibility.dim() != 3:
            raise ValueError(f"visibility must be (R, N, Q), got shape {tuple(visibility.shape)}")
        self.visibility = visibility.bool()
        self._groups: list[tuple[torch.Tensor, list[int]]] | None = None
        self._cache: dict = {}

    @property
    def num_faces(self) -> int:
        return int(self.visibility.shape[1])

    @property
    def shared(self) -> bool:
        return self.visibility.shape[0] == 1

    def groups(self) -> list[tuple[torch.Tensor, list[int]]]:
        """Queries grouped by the set of faces they see: [(query_index (Qg,), face ids)].

        The group of queries that see no face is left out: they attend to the text only.
        """
        if self._groups is None:
            per_query = self.visibility[0].T  # (Q, N)
            face_sets, inverse = torch.unique(per_query, dim=0, return_inverse=True)
            self._groups = [
                ((inverse == g).nonzero().squeeze(1), face_set.nonzero().squeeze(1).tolist())
                for g, face_set in enumerate(face_sets)
                if face_set.any()
            ]
        return self._groups

    def region_is_cheaper(self, text_len: int, tokens_per_face: int) -> bool:
        """Whether the region-sparse kernel beats one dense masked SDPA on this grid.

        Both are exact; the choice is cost only. Counted in query-key pairs: dense attends every
        query to the whole stack; region-sparse attends every query to the text, each group's
        queries to [text ; its faces], plus a fixed per-group overhead (gathers, a kernel launch)
        that dominates on coarse grids covered by many regions.
        """
        cache_key = ("cheaper", text_len, tokens_per_face)
        if cache_key not in self._cache:
            queries = self.visibility.shape[2]
            dense = DENSE_PAIR_COST * queries * (text_len + self.num_faces * tokens_per_face)
            region = queries * text_len + sum(
                int(index.numel()) * (text_len + len(faces) * tokens_per_face) + GROUP_OVERHEAD_PAIRS
                for index, faces in self.groups()
            )
            self._cache[cache_key] = region < dense
        return self._cache[cache_key]

    def key_groups(self, text_len: int, tokens_per_face: int, device: torch.device):
        """For each query group: (query_index, key_index) on ``device``; cached."""
        cache_key = ("groups", text_len, tokens_per_face, str(device))
        if cache_key not in self._cache:
            text = torch.arange(text_len)
            entries = []
            for query_index, faces in self.groups():
                face_keys = [text_len + n * tokens_per_face + torch.arange(tokens_per_face) for n in faces]
                key_index = torch.cat([text, *face_keys])
                entries.append((query_index.to(device), key_index.to(device), len(faces)))
            self._cache[cache_key] = entries
        return self._cache[cache_key]

    def isolation_mask(self, device: torch.device) -> torch.Tensor:
        """(R, 1, Q, Q) bool for self-attention: False where query i and key j lie in regions of
        different faces and share none (attn1 isolation, DESIGN "Beyond the paper")."""
        cache_key = ("isolation", str(device))
        if cache_key not in self._cache:
            member = self.visibility.float()  # (R, N, Q)
            share_a_face = (member.transpose(1, 2) @ member) > 0  # (R, Q, Q)
            in_a_region = self.visibility.any(dim=1)  # (R, Q)
            blocked = in_a_region[:, :, None] & in_a_region[:, None, :] & ~share_a_face
            self._cache[cache_key] = (~blocked)[:, None].to(device)
        return self._cache[cache_key]

    def key_mask(self, text_len: int, tokens_per_face: int, device: torch.device) -> torch.Tensor:
        """(R, 1, Q, text_len + N*T) bool: True where a query may see a key."""
        cache_key = ("mask", text_len, tokens_per_face, str(device))
        if cache_key not in self._cache:
            rows, _, queries = self.visibility.shape
            visibility = self.visibility.to(device)  # build the large mask where it is used
            faces = visibility.transpose(1, 2).repeat_interleave(tokens_per_face, dim=2)  # (R, Q, N*T)
            text = torch.ones(rows, queries, text_len, dtype=torch.bool, device=device)
            self._cache[cache_key] = torch.cat([text, faces], dim=2)[:, None]  # (R, 1, Q, K)
        return self._cache[cache_key]
