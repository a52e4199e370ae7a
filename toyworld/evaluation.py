"""Generate toy scenes with a trained checkpoint and score them with the independent judge.

A *case* is N identities with a template layout (from ``world.make_scene``: face boxes, skeletons,
and the real rendering of those identities, used as the oracle), a caption, and one reference
portrait per identity (a separate rendering: the conditioning never sees the scene's pixels).
Generation runs the trainer's ``InstantFamilyNet`` (the same noise prediction the ComfyUI patch
computes, see the trainer's equivalence test) loaded from the pack's exported checkpoint, with a
batched DDIM sampler and classifier-free guidance (uncond rows: empty caption, no faces).

Scores per case, judge embeddings against a gallery of fresh portraits of each identity:
per-region similarity (region n vs identity n), mixing (region n's best-matching identity of the
stack is another one), MultiSim (``instantfamily_core.evaluation.metrics``, N-identity form), slot accuracy
and swapped pairs (``instantfamily_core.evaluation.positions``: region n judged as slot n) and background
colour accuracy (does the generated background have the caption's colour).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import world
from .base_model import VAE_FACTOR, ToyBase, load_toy_base
from .judge import Judge


@dataclass
class Case:
    identities: list[int]
    caption: str
    colour: str
    boxes: np.ndarray  # (N, 4) px of the S x S scene
    bodies: list[np.ndarray]
    background_mask: np.ndarray  # (S, S) bool
    oracle: np.ndarray  # (S, S, 3) the real rendering of the same identities and layout
    portraits: list[world.Portrait] = field(default_factory=list)
    keypoints: list[np.ndarray] = field(default_factory=list)  # per person (5, 2) face points in pixels


def make_case(identities: list[int], rng: np.random.Generator, size: int = 32, portrait_size: int = 64) -> Case:
    scene = world.make_scene(identities, rng, size=size)
    portraits = [world.render_portrait(world.identity_params(i), portrait_size, rng) for i in identities]
    return Case(
        list(identities),
        scene.caption,
        scene.colour,
        scene.face_boxes().astype(np.float32),
        scene.bodies(),
        scene.background_mask,
        scene.image,
        portraits,
        [p.keypoints for p in scene.people],
    )


def make_cases(pool, counts, per_count: int, seed: int, size: int = 32) -> list[Case]:
    rng = np.random.default_rng(seed)
    return [
        make_case([int(i) for i in rng.choice(pool, n, replace=False)], rng, size)
        for n in counts
        for _ in range(per_count)
    ]


# ---------------------------------------------------------------------------------------------
# the network


def load_net(base_path: str | Path, checkpoint_path: str | Path, device: str | torch.device = "cpu"):
    """(InstantFamilyNet, ToyBase) on ``device`` from the toy base file and a pack checkpoint, rebuilt
    by the trainer's own inverse of its export (``train.export.net_from_export``)."""
    from train.export import net_from_export

    toy = load_toy_base(base_path)
    toy.text_encoder.to(device)
    return net_from_export(checkpoint_path, toy.unet).requires_grad_(False).to(device), toy


def _device(net) -> torch.device:
    return next(net.parameters()).device


class IsolatedSelfAttnProcessor:
    """attn1 processor: face regions do not attend to each other (core ``FaceAttention.self_attention``)."""

    def __init__(self, face_batch):
        self.face_batch = face_batch

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        from instantfamily_core.attention import sdpa_attention

        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)  # (B, Q, H*d)
        face_attention = self.face_batch.face_attention
        if face_attention is None:
            out = sdpa_attention(q, k, v, attn.heads)
        else:
            out = face_attention.self_attention(q, k, v, attn.heads, latent_size=self.face_batch.latent_size)
        return attn.to_out[1](attn.to_out[0](out))


def set_attn1_isolation(net, enabled: bool) -> None:
    """Switch attn1 isolation on (core function) or back to plain SDPA in the UNet and ControlNet."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for model in (net.unet, net.controlnet):
        processors = dict(model.attn_processors)
        for name in processors:
            if name.endswith("attn1.processor"):
                processors[name] = IsolatedSelfAttnProcessor(net.face_batch) if enabled else AttnProcessor2_0()
        model.set_attn_processor(processors)


class _CachedHint(torch.nn.Module):
    """The ControlNet's hint encoder, evaluated once per control tensor object: at inference the
    control image is the same at every step, and at 8x the latent size its encoder costs more than
    the rest of the toy ControlNet. Exact: the same module on the same input."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(control) -> (control, hint)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        hit = self.cache.get(id(cond))
        if hit is None or hit[0] is not cond:  # (holding the tensor keeps its id from being reused)
            hit = self.cache[id(cond)] = (cond, self.inner(cond))
        return hit[1]


@contextlib.contextmanager
def cached_hint(net):
    """While active, the net's ControlNet encodes each control tensor it is given only once."""
    hint = net.controlnet.controlnet_cond_embedding
    net.controlnet.controlnet_cond_embedding = _CachedHint(hint)
    try:
        yield
    finally:
        net.controlnet.controlnet_cond_embedding = hint


# ---------------------------------------------------------------------------------------------
# conditioning and sampling


def reference_features(features, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Global (N, 512) and local (N, 512, 7, 7) features of the case's reference portraits."""
    globals_, locals_ = [], []
    for portrait in case.portraits:
        global_feature, local_feature = features.features(portrait.image, [portrait.geometry.keypoints])
        globals_.append(global_feature[0])
        locals_.append(local_feature[0])
    return torch.from_numpy(np.stack(globals_)), torch.from_numpy(np.stack(locals_))


def case_pose(case: Case, size: int) -> list[dict]:
    """The case's POSE_KEYPOINT on a ``size`` px canvas: 18 body + 68 face points per person (the DWPose layout)."""
    from instantfamily_core.pose import encode_pose_keypoint

    scene_size = int(case.background_mask.shape[0])
    landmarks = [world.head_landmarks(box, points, scene_size) for box, points in zip(case.boxes, case.keypoints)]
    return encode_pose_keypoint(case.bodies, size, size, landmarks)


def case_example(case: Case, config, features, full_masks: bool = False) -> dict:
    """The trainer's example dict (control image, caption, features, masks) for one case, its regions and
    control image made from its POSE_KEYPOINT as the Face Mask and Pose + Circle Image nodes make them."""
    from instantfamily_core import face_regions
    from instantfamily_core.images import uint8_to_images
    from instantfamily_core.masks import FaceMasks
    from instantfamily_core.pose import parse_pose_keypoint

    pixels = int(case.background_mask.shape[0]) * VAE_FACTOR
    frame = parse_pose_keypoint(case_pose(case, pixels))
    positions = face_regions.pose_positions(frame)
    order = [positions.index(person) for person in range(len(case.identities))]  # slot n = person n of the case
    masks, _ = face_regions.face_masks_from_pose(frame, len(order), order, config.mask_margin)
    control = face_regions.control_image_for_slots(masks, config, frame.size, frame.bodies())
    if full_masks:
        masks = FaceMasks(torch.ones_like(masks.masks), masks.centres, masks.boxes)
    global_feature, local_feature = reference_features(features, case)
    return {
        "control": uint8_to_images(control)[0].permute(2, 0, 1),  # (3, H, W) in [0, 1]
        "caption": case.caption,
        "global_features": global_feature,
        "local_features": local_feature,
        "masks": masks,
        "control_uint8": control,
    }


@torch.no_grad()
def sample(
    net,
    toy: ToyBase,
    examples: list[dict],
    steps: int = 20,
    guidance: float = 4.0,
    seed: int = 0,
    with_faces: bool = True,
) -> np.ndarray:
    """Batched DDIM + CFG (the trainer's sampler) on the net's device: (B, S, S, 3) uint8 scenes, one per example."""
    from diffusers import DDIMScheduler

    from train.net import FaceInputs
    from train.sampling import guided_ddim

    from .pretrain import noise_scheduler

    # The toy "latent" is the scene itself, RGB in [-1, 1]: DDIM may clip its x0 estimate to that range.
    scheduler = DDIMScheduler.from_config(noise_scheduler().config, clip_sample=True, clip_sample_range=1.0)
    scheduler.set_timesteps(steps)
    batch = len(examples)
    size = examples[0]["control"].shape[-1] // VAE_FACTOR
    device = _device(net)
    generator = torch.Generator().manual_seed(seed)  # CPU noise: the same draws on every device
    latents = (torch.randn(batch, 4, size, size, generator=generator) * scheduler.init_noise_sigma).to(device)
    text = toy.text_encoder.encode([""] * batch + [e["caption"] for e in examples]).to(device)  # (2B, T, d)
    if with_faces:
        faces = FaceInputs(
            [e["global_features"] for e in examples],
            [e["local_features"] for e in examples],
            [e["masks"] for e in examples],
        )
    else:
        faces = FaceInputs.empty(batch, net.config)
    control = torch.stack([e["control"] for e in examples]).to(device)  # (B, 3, H, W)
    with cached_hint(net):
        latents = guided_ddim(net, scheduler, latents, text, faces, control, guidance)
    rgb = latents[:, :3].clamp(-1, 1)  # model space = RGB in [-1, 1]
    return ((rgb + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# scoring


def gallery(judge: Judge, identities: list[int], seed: int, views: int = 3) -> np.ndarray:
    """(N, d) mean judge embedding of ``views`` fresh portraits per identity (unit length)."""
    rng = np.random.default_rng([seed, 31337])
    out = []
    for identity in identities:
        params = world.identity_params(identity)
        shots = [world.render_portrait(params, 64, rng) for _ in range(views)]
        embs = np.concatenate([judge.embed(s.image, [s.geometry.box]) for s in shots])
        mean = embs.mean(axis=0)
        out.append(mean / np.linalg.norm(mean))
    return np.stack(out)


def background_colour(image: np.ndarray, mask: np.ndarray) -> str:
    """The caption colour word whose rendered background (any style) has the mean colour nearest to
    that of ``image`` where ``mask`` is set."""
    pixels = image[mask] if mask.any() else image.reshape(-1, 3)
    mean = pixels.astype(np.float32).mean(axis=0)
    names, means = _background_means()
    return names[int(np.argmin(((means - mean) ** 2).sum(axis=1)))]


_BACKGROUND_MEANS: tuple[list[str], np.ndarray] | None = None


def _background_means() -> tuple[list[str], np.ndarray]:
    """(colour word per row, mean RGB 0-255) of every (colour, style) background, rendered once."""
    global _BACKGROUND_MEANS
    if _BACKGROUND_MEANS is None:
        rng = np.random.default_rng(0)
        names, means = [], []
        for colour in world.BACKGROUND_COLOURS:
            for style in world.BACKGROUND_STYLES:
                names.append(colour)
                means.append(world._background(32, colour, style, rng).reshape(-1, 3).mean(axis=0) * 255)
        _BACKGROUND_MEANS = (names, np.array(means, np.float32))
    return _BACKGROUND_MEANS


def score(judge: Judge, image: np.ndarray, case: Case, references: np.ndarray) -> dict:
    """Scores of one generated scene (S, S, 3) against its case's reference gallery (N, d)."""
    from instantfamily_core.evaluation.metrics import score_identities
    from instantfamily_core.evaluation.positions import score_slots

    generated = judge.embed(image, case.boxes)  # (N, d) regions in slot order
    sims = generated @ references.T  # (N regions, N references)
    n = len(case.identities)
    per_region = np.diag(sims)
    mixed = (sims.argmax(axis=1) != np.arange(n)) if n > 1 else np.zeros(1, bool)
    scores = score_identities(references, generated)
    slots = score_slots(references, generated, np.arange(n))  # region n holds slot n's face
    return {
        "n": n,
        "similarity": float(per_region.mean()),
        "mixing": float(mixed.mean()) if n > 1 else None,
        "multisim": scores.multi_sim,
        "slot_accuracy": slots.slot_accuracy,
        "swaps": len(slots.swaps) if n > 1 else None,
        "background_ok": background_colour(image, case.background_mask) == case.colour,
    }


def box_cells(box, size: int) -> np.ndarray:
    """(S, S) bool: the latent cells a head box (scene px = latent cells) touches."""
    x1, y1, x2, y2 = box
    cells = np.zeros((size, size), bool)
    cells[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
    return cells


def face_area(case: Case) -> np.ndarray:
    """(S, S) bool: the union of the case's head boxes on the scene (= latent) grid."""
    size = case.background_mask.shape[0]
    return np.any([box_cells(box, size) for box in case.boxes], axis=0)


@torch.no_grad()
def identity_gain(
    net, toy: ToyBase, examples: list[dict], cases: list[Case], timesteps=(300, 500, 700), seed: int = 0
) -> dict:
    """How much the model uses WHO the faces are: its denoising error inside the head boxes with
    each case's own reference features vs with other cases' features in the same slots (masks,
    circles, caption and noise unchanged). ``gain`` = shuffled / correct - 1 (0: identity ignored).

    examples: ``case_example`` of each case (the scene's real rendering is the clean latent).
    """
    from train.net import FaceInputs

    from .pretrain import noise_scheduler, scene_latents

    scheduler = noise_scheduler()
    count = len(examples)
    if count < 2:
        raise ValueError("identity_gain needs at least two cases (their faces are swapped)")
    shift = [(r + 1) % count for r in range(count)]  # row r borrows row r+1's faces, cycling
    shuffled_g, shuffled_l = [], []
    for r, e in enumerate(examples):
        n, donor = e["global_features"].shape[0], examples[shift[r]]
        take = torch.arange(n) % donor["global_features"].shape[0]
        shuffled_g.append(donor["global_features"][take])
        shuffled_l.append(donor["local_features"][take])
    device = _device(net)
    latents = scene_latents(np.stack([c.oracle for c in cases])).to(device)  # (B, 4, S, S)
    area = torch.from_numpy(np.stack([face_area(c) for c in cases]))[:, None].expand(-1, 3, -1, -1)  # (B, 3, S, S)
    text = toy.text_encoder.encode([e["caption"] for e in examples]).to(device)
    control = torch.stack([e["control"] for e in examples]).to(device)
    masks = [e["masks"] for e in examples]
    inputs = {
        "correct": FaceInputs([e["global_features"] for e in examples], [e["local_features"] for e in examples], masks),
        "shuffled": FaceInputs(shuffled_g, shuffled_l, masks),
    }
    generator = torch.Generator().manual_seed(seed)
    errors = {name: [] for name in inputs}
    with cached_hint(net):
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=generator).to(device)
            steps = torch.full((count,), int(t), device=device)
            noisy = scheduler.add_noise(latents, noise, steps)
            for name, faces in inputs.items():
                error = ((net(noisy, steps, text, faces, control) - noise)[:, :3] ** 2).cpu()  # (B, 3, S, S)
                errors[name].append(float(error[area].mean()))
    correct, shuffled = float(np.mean(errors["correct"])), float(np.mean(errors["shuffled"]))
    return {"correct": correct, "shuffled": shuffled, "gain": shuffled / correct - 1}


@torch.no_grad()
def influence_locality(
    net, toy: ToyBase, examples: list[dict], cases: list[Case], timesteps=(300, 500, 700), seed: int = 0, batch: int = 8
) -> dict:
    """Where does changing one person's face features change the noise prediction? A measure of
    identity mixing that does not depend on how well the model samples.

    For every case with 2+ people and every person k: replace k's features by another identity's
    (borrowed from the next case), keep everything else (noise, masks, circles, caption), and
    compare the noise predictions. ``other_faces`` = mean squared change per cell inside the
    OTHER people's head boxes / the same inside k's own head box; ``background`` = the same over
    background cells; each is the median over people, cases and timesteps (``own``: the mean change
    on the own head). Hard masks confine the direct path to k's region (what is left flows through
    self-attention and convolutions); without masks every head sees k's tokens.
    """
    from train.net import FaceInputs

    from .pretrain import noise_scheduler, scene_latents

    scheduler = noise_scheduler()
    size = int(cases[0].background_mask.shape[0])
    jobs = []  # (case index, swapped person or -1 for the original)
    for c, case in enumerate(cases):
        if len(case.identities) >= 2:
            jobs += [(c, -1)] + [(c, k) for k in range(len(case.identities))]
    if not jobs:
        raise ValueError("influence_locality needs cases with at least two people")

    def features(c: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        global_features, local_features = examples[c]["global_features"].clone(), examples[c]["local_features"].clone()
        if k >= 0:
            donor = examples[(c + 1) % len(examples)]
            global_features[k], local_features[k] = donor["global_features"][0], donor["local_features"][0]
        return global_features, local_features

    device = _device(net)
    latents = scene_latents(np.stack([case.oracle for case in cases])).to(device)  # (C, 4, S, S)
    text = toy.text_encoder.encode([e["caption"] for e in examples]).to(device)
    parts = []  # per batch of jobs, fixed across timesteps: (jobs, case index, faces, control)
    for start in range(0, len(jobs), batch):
        part = jobs[start : start + batch]
        global_features, local_features = zip(*(features(c, k) for c, k in part))
        parts.append(
            (
                part,
                torch.tensor([c for c, _ in part], device=device),
                FaceInputs(list(global_features), list(local_features), [examples[c]["masks"] for c, _ in part]),
                torch.stack([examples[c]["control"] for c, _ in part]).to(device),
            )
        )
    head_cells = [[box_cells(b, size) for b in case.boxes] for case in cases]
    generator = torch.Generator().manual_seed(seed)
    ratios = {"other_faces": [], "background": []}
    own_energy = []
    with cached_hint(net):
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=generator).to(device)  # one draw per case, shared by its jobs
            noisy = scheduler.add_noise(latents, noise, torch.full((len(cases),), int(t), device=device))
            steps = torch.full((batch,), int(t), device=device)
            predictions = torch.cat(
                [
                    net(noisy[rows], steps[: len(part)], text[rows], faces, control)[:, :3].cpu()
                    for part, rows, faces, control in parts
                ]
            )  # (jobs, 3, S, S)
            original = {c: predictions[j] for j, (c, k) in enumerate(jobs) if k < 0}
            for j, (c, k) in enumerate(jobs):
                if k < 0:
                    continue
                change = ((predictions[j] - original[c]) ** 2).mean(dim=0).numpy()  # (S, S)
                boxes = head_cells[c]
                own = change[boxes[k]].mean()
                others = [change[b & ~boxes[k]].mean() for m, b in enumerate(boxes) if m != k and (b & ~boxes[k]).any()]
                own_energy.append(own)
                if others:  # (another head entirely inside k's box leaves nothing to compare)
                    ratios["other_faces"].append(np.mean(others) / own)
                ratios["background"].append(change[cases[c].background_mask].mean() / own)
    return {"own": float(np.mean(own_energy)), **{k: float(np.median(v)) for k, v in ratios.items()}}
