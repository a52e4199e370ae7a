"""Generate toy scenes with a trained checkpoint and score them with the independent judge.

A *case* is N identities with a template layout (from ``world.make_scene``: face boxes, skeletons,
and the real rendering of those identities, used as the oracle), a caption, and one reference
portrait per identity (a separate rendering: the conditioning never sees the scene's pixels).
Generation runs the trainer's ``InstantFamilyNet`` (the same noise prediction the ComfyUI patch
computes, see the trainer's equivalence test) loaded from the pack's exported checkpoint, with a
batched DDIM sampler and classifier-free guidance (uncond rows: empty caption, no faces).

Scores per case, judge embeddings against a gallery of fresh portraits of each identity:
per-region similarity (region n vs identity n), mixing (region n's best-matching identity of the
stack is another one), MultiSim (``instantfamily_core.metrics``, N-identity form) and background
colour accuracy (does the generated background have the caption's colour).
"""

from __future__ import annotations

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


def make_case(identities: list[int], rng: np.random.Generator, size: int = 32, portrait_size: int = 64) -> Case:
    scene = world.make_scene(identities, rng, size=size)
    portraits = [world.render_portrait(world.identity_params(i), portrait_size, rng) for i in identities]
    return Case(list(identities), scene.caption, scene.colour, scene.face_boxes().astype(np.float32),
                scene.bodies(), scene.background_mask, scene.image, portraits)


def make_cases(pool, counts, per_count: int, seed: int, size: int = 32) -> list[Case]:
    rng = np.random.default_rng(seed)
    return [make_case([int(i) for i in rng.choice(pool, n, replace=False)], rng, size)
            for n in counts for _ in range(per_count)]


# ---------------------------------------------------------------------------------------------
# the network


def load_net(base_path: str | Path, checkpoint_path: str | Path):
    """(InstantFamilyNet, ToyBase) from the toy base file and a pack checkpoint (ControlNet and UNet
    deltas converted back from ComfyUI naming with the trainer's converter)."""
    from diffusers import ControlNetModel

    from instantfamily_core.checkpoint import load_checkpoint
    from train.convert import UNET_PREFIX, controlnet_from_ldm, unet_from_ldm
    from train.net import InstantFamilyNet

    toy = load_toy_base(base_path)
    model = load_checkpoint(checkpoint_path)
    unet = toy.unet
    if model.unet_deltas:
        deltas = unet_from_ldm(model.unet_deltas, toy.unet_config, prefix=UNET_PREFIX)
        params = dict(unet.named_parameters())
        with torch.no_grad():
            for name, delta in deltas.items():
                params[name].add_(delta.float())
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3)
    controlnet.load_state_dict({k: v.float() for k, v in controlnet_from_ldm(model.controlnet_state,
                                                                              controlnet.config).items()})
    net = InstantFamilyNet(unet, controlnet, model.projector, model.config).eval().requires_grad_(False)
    return net, toy


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
    """The ControlNet's hint encoder, evaluated once per control tensor: at inference its input (the
    control image) is the same at every sampling step, and at 8x the latent size it costs more than
    the rest of the toy ControlNet. Exact: the same module on the same input."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.key: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        if self.key is not cond:
            self.key, self.value = cond, self.inner(cond)
        return self.value


# ---------------------------------------------------------------------------------------------
# conditioning and sampling


def reference_features(features, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Global (N, 512) and local (N, 512, 7, 7) features of the case's reference portraits."""
    globals_, locals_ = [], []
    for portrait in case.portraits:
        g, l = features.features(portrait.image, [portrait.geometry.keypoints])
        globals_.append(g[0])
        locals_.append(l[0])
    return torch.from_numpy(np.stack(globals_)), torch.from_numpy(np.stack(locals_))


def case_example(case: Case, config, features, full_masks: bool = False) -> dict:
    """The trainer's example dict (control image, caption, features, masks) for one case."""
    from instantfamily_core.control_image import draw_control_image
    from instantfamily_core.masks import FaceMasks, masks_from_boxes

    size = int(case.background_mask.shape[0])
    pixels = size * VAE_FACTOR
    boxes = case.boxes / size  # normalised
    control = draw_control_image((pixels, pixels), config, case.bodies, face_boxes=boxes)
    masks = masks_from_boxes(torch.from_numpy(case.boxes * VAE_FACTOR), (pixels, pixels), config.mask_margin)
    if full_masks:
        masks = FaceMasks(torch.ones_like(masks.masks), masks.centres, masks.boxes)
    global_feature, local_feature = reference_features(features, case)
    return {"control": torch.from_numpy(control.astype(np.float32) / 255.0).permute(2, 0, 1), "caption": case.caption,
            "global_features": global_feature, "local_features": local_feature, "masks": masks,
            "control_uint8": control}


@torch.no_grad()
def sample(net, toy: ToyBase, examples: list[dict], steps: int = 20, guidance: float = 4.0, seed: int = 0,
           with_faces: bool = True) -> np.ndarray:
    """Batched DDIM + CFG: (B, S, S, 3) uint8 scenes, one per example."""
    from diffusers import DDIMScheduler

    from train.net import FaceInputs

    from .pretrain import noise_scheduler

    scheduler = DDIMScheduler.from_config(noise_scheduler().config)
    scheduler.set_timesteps(steps)
    batch = len(examples)
    size = examples[0]["control"].shape[-1] // VAE_FACTOR
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, size, size, generator=generator) * scheduler.init_noise_sigma
    text = toy.text_encoder.encode([""] * batch + [e["caption"] for e in examples])  # (2B, T, d)
    uncond = FaceInputs.empty(batch, net.config)
    if with_faces:
        cond = FaceInputs([e["global_features"] for e in examples], [e["local_features"] for e in examples],
                          [e["masks"] for e in examples])
    else:
        cond = FaceInputs.empty(batch, net.config)
    faces = FaceInputs(uncond.global_features + cond.global_features, uncond.local_features + cond.local_features,
                       uncond.masks + cond.masks)
    control = torch.stack([e["control"] for e in examples])
    control = torch.cat([control, control])
    hint = net.controlnet.controlnet_cond_embedding
    net.controlnet.controlnet_cond_embedding = _CachedHint(hint)
    try:
        for t in scheduler.timesteps:
            model_in = torch.cat([latents, latents])
            noise = net(model_in, torch.full((2 * batch,), int(t)), text, faces, control)
            noise = noise[:batch] + guidance * (noise[batch:] - noise[:batch])
            latents = scheduler.step(noise, t, latents).prev_sample
    finally:
        net.controlnet.controlnet_cond_embedding = hint
    rgb = latents[:, :3].clamp(-1, 1)  # model space = RGB in [-1, 1]
    return ((rgb + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


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
    from instantfamily_core.metrics import score_identities

    generated = judge.embed(image, case.boxes)  # (N, d) regions in slot order
    sims = generated @ references.T  # (N regions, N references)
    n = len(case.identities)
    per_region = np.diag(sims)
    mixed = (sims.argmax(axis=1) != np.arange(n)) if n > 1 else np.zeros(1, bool)
    scores = score_identities(references, generated)
    return {
        "n": n,
        "similarity": float(per_region.mean()),
        "mixing": float(mixed.mean()) if n > 1 else None,
        "multisim": scores.multi_sim,
        "background_ok": background_colour(image, case.background_mask) == case.colour,
    }
