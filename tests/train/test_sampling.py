"""The trainer's one sampler (train.sampling.guided_ddim) against DDIM + CFG written out plainly here:
the deterministic DDIM update from the scheduler's alphas, each branch run on its own (no batching)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.masks import masks_from_boxes
from train.net import FaceInputs
from train.sampling import guided_ddim


class StandInNet(torch.nn.Module):
    """Noise prediction that depends on every input the sampler passes (latent, step, text, faces, control,
    SDXL's pooled text)."""

    config = InstantFamilyConfig(d_gf=4, d_lf=4, L=2)

    def forward(self, x, t, text, faces, control, pooled=None):
        per_row = (
            text.mean(dim=(1, 2))
            + 0.05 * torch.tensor(faces.counts, dtype=x.dtype)
            + 0.01 * control.mean(dim=(1, 2, 3))
            + 1e-4 * t.to(x.dtype)
        )  # (rows,)
        if pooled is not None:
            per_row = per_row + 0.3 * pooled.mean(dim=1)
        return 0.1 * x + 0.2 * x.flip(-1) + per_row[:, None, None, None]


def _faces(counts):
    return FaceInputs(
        [torch.randn(n, 4) for n in counts],
        [torch.randn(n, 4, 2, 2) for n in counts],
        [masks_from_boxes(torch.tensor([[2.0, 2.0, 6.0, 6.0]] * n), (8, 8)) if n else None for n in counts],
    )


@pytest.mark.parametrize("with_pooled", [False, True], ids=["sd15", "sdxl_pooled"])
def test_guided_ddim_is_ddim_with_classifier_free_guidance(with_pooled):
    torch.manual_seed(0)
    net, guidance, batch = StandInNet(), 3.0, 2
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(4)
    latents = torch.randn(batch, 4, 8, 8)
    text = torch.randn(2 * batch, 5, 16)  # unconditional rows first
    faces = _faces([2, 1])
    control = torch.rand(batch, 3, 8, 8)
    pooled = torch.randn(2 * batch, 6) if with_pooled else None  # in the order of text

    ours = guided_ddim(net, scheduler, latents, text, faces, control, guidance, pooled)

    alphas = scheduler.alphas_cumprod
    expected = latents.clone()
    timesteps = [int(t) for t in scheduler.timesteps]
    for i, t in enumerate(timesteps):
        previous = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
        steps = torch.full((batch,), t)
        uncond_pooled, cond_pooled = (None, None) if pooled is None else (pooled[:batch], pooled[batch:])
        uncond = net(expected, steps, text[:batch], FaceInputs.empty(batch, net.config), control, uncond_pooled)
        cond = net(expected, steps, text[batch:], faces, control, cond_pooled)
        eps = uncond + guidance * (cond - uncond)
        x0 = (expected - (1 - alphas[t]).sqrt() * eps) / alphas[t].sqrt()
        expected = previous.sqrt() * x0 + (1 - previous).sqrt() * eps
    assert torch.allclose(ours, expected, atol=1e-5), float((ours - expected).abs().max())

    unguided = guided_ddim(net, scheduler, latents, text, faces, control, 1.0, pooled)
    assert (unguided - ours).abs().max() > 1e-3, "the guidance scale changed nothing"
