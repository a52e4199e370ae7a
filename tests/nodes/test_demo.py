"""The built-in demo's prompt on a real ComfyUI host, with tiny toy files built here (never committed).

Proves: the toy base model becomes a ComfyUI SD1.5-family MODEL that computes what the diffusers
UNet computes (weights converted, head count kept); the demo prompt -- toy nodes plus the pack's
real Load InstantFamily Model, Build Embedding Stack, Face Mask, Pose + Circle Image, Apply
InstantFamily, Pose+Circle ControlNet and the stock KSampler -- runs and returns images whose
control circles carry the palette colours, and whose generation depends on the identities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scripts import run_demo


@pytest.fixture(scope="module")
def toy_assets(tmp_path_factory):
    """A toy demo assets folder: random-init toy base, untrained toy recognizer, random checkpoint."""
    from diffusers import ControlNetModel

    from instantfamily_core.checkpoint import save_checkpoint
    from instantfamily_core.config import InstantFamilyConfig
    from instantfamily_core.faces.recognizer import OnePassRecognizer
    from instantfamily_core.ldm_convert import controlnet_to_ldm, ldm_controlnet_kwargs
    from instantfamily_core.projector import Projector
    from toyworld import base_model
    from toyworld.encoder import ONNX_NAME, ToyFaceNet, export_onnx

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("toy_assets")
    torch.manual_seed(0)
    base = base_model.new_toy_base(seed=0)
    with torch.no_grad():  # a visible effect of the face tokens: the UNet's output conv is not zero
        for p in base.unet.conv_out.parameters():
            p.normal_(0, 0.05)
    base_model.save_toy_base(base, root / "toy_base.safetensors")
    onnx = export_onnx(ToyFaceNet(), root / "insightface" / "models" / "toyface" / ONNX_NAME)
    recognizer = OnePassRecognizer(str(onnx), providers=["CPUExecutionProvider"], pack="toyface")
    controlnet = ControlNetModel.from_unet(base.unet, conditioning_channels=3)
    config = InstantFamilyConfig(
        d_K=base_model.TEXT_WIDTH,
        projector_hidden=64,
        recognizer=recognizer.info,
        controlnet=ldm_controlnet_kwargs(controlnet.config),
    )
    save_checkpoint(
        root / "instantfamily" / "toy_instantfamily_demo.safetensors",
        config,
        Projector(config).state_dict(),
        controlnet_to_ldm(controlnet.state_dict(), controlnet.config),
    )
    return root, base


@pytest.fixture(scope="module")
def demo_nodes(comfy_host, toy_assets):
    """The pack's demo module (as ComfyUI loaded it) pointed at the toy assets."""
    root, _ = toy_assets
    demo = comfy_host.pack_import("nodes.demo")
    folders = comfy_host.folder_paths.folder_names_and_paths
    demo_folders = {demo.DEMO_INSTANTFAMILY: root / "instantfamily", demo.DEMO_INSIGHTFACE: root / "insightface"}
    saved = {name: list(folders[name][0]) for name in demo_folders}
    for name, folder in demo_folders.items():  # only the toy files built here: not the repo's bundled demo model
        folders[name][0][:] = [str(folder)]
    previous = demo.ASSETS
    demo.ASSETS = str(root)
    comfy_host.folder_paths.filename_list_cache.clear()
    yield demo
    demo.ASSETS = previous
    for name, paths in saved.items():
        folders[name][0][:] = paths
    comfy_host.folder_paths.filename_list_cache.clear()


def test_toy_base_model_in_comfy_computes_the_diffusers_unet(comfy_host, demo_nodes, toy_assets):
    root, base = toy_assets
    model = demo_nodes.build_comfy_model(str(root / "toy_base.safetensors"))
    from toyworld.base_model import load_toy_base

    loaded = load_toy_base(root / "toy_base.safetensors")
    x, t, context = torch.randn(2, 4, 32, 32), torch.tensor([20.0, 700.0]), torch.randn(2, 16, 64)
    with torch.no_grad():
        comfy = model.model.diffusion_model(x, timesteps=t, context=context)
        diffusers = loaded.unet(x, t, encoder_hidden_states=context).sample
    assert torch.allclose(comfy, diffusers, atol=1e-4), float((comfy - diffusers).abs().max())
    heads = {m.heads for name, m in model.model.diffusion_model.named_modules() if name.endswith("attn2")}
    assert heads == {8}


def test_demo_prompt_runs_the_real_nodes(comfy_host, demo_nodes, toy_assets, tmp_path, monkeypatch):
    prompt = run_demo.demo_prompt(
        "3000, 3001, 3002", "three people on a teal gradient background", seed=0, steps=2, cfg=3.0
    )
    outputs = comfy_host.run_prompt(prompt)
    generated = outputs["decode"][0]
    assert generated.shape == (1, 256, 256, 3) and torch.isfinite(generated).all()
    assert 0 <= float(generated.min()) and float(generated.max()) <= 1

    faces = outputs["faces"][0]
    assert len(faces) == 3 and faces.recognizer.pack == "toyface"
    assert faces.local_features().shape == (3, 512, 7, 7)
    masks, preview = outputs["mask"]
    assert len(masks) == 3 and preview.shape[-1] == 3
    control = (outputs["control"][0][0].numpy() * 255).round().astype(np.uint8)  # (256, 256, 3)
    config = outputs["instantfamily"][0].config
    for slot, (x1, y1, x2, y2) in enumerate((masks.boxes.numpy() * 256).astype(int)):
        head = control[y1:y2, x1:x2]
        assert np.all(head == np.array(config.palette_colour(slot), np.uint8), axis=-1).any(), f"slot {slot} circle"

    # the same seed with the first two IDs swapped in the stack: the same places and control image, other faces
    swapped_masks = outputs["mask_swapped"][0]
    assert torch.equal(swapped_masks.boxes, masks.boxes)
    assert torch.equal(outputs["control_swapped"][0], outputs["control"][0])
    assert not torch.allclose(outputs["decode_swapped"][0], generated), "swapping the stack changed nothing"
    assert not torch.allclose(outputs["decode_plain"][0], generated)

    # the picture: a verdict under each person of each generation (a random judge here: only the layout is checked)
    from toyworld.judge import Judge, JudgeNet

    torch.manual_seed(0)
    Judge(JudgeNet()).save(Path(toy_assets[0]) / run_demo.JUDGE)
    monkeypatch.setattr(run_demo, "ASSETS", Path(toy_assets[0]))
    sheet, verdicts = run_demo.demo_sheet(outputs, "3000, 3001, 3002")
    assert set(verdicts) == {"generated", "same seed, first two IDs swapped", "same seed, no faces"}
    assert [v.expected for v in verdicts["generated"]] == [3000, 3001, 3002]
    assert [v.expected for v in verdicts["same seed, first two IDs swapped"]] == [3001, 3000, 3002]
    assert all(v.expected is None and v.best in (3000, 3001, 3002) for v in verdicts["same seed, no faces"])
    assert sheet.size[0] > 4 * 256 and sheet.size[1] > 256 + 80
    sheet.save(tmp_path / "demo.png")
    assert (tmp_path / "demo.png").stat().st_size > 10_000

    other = comfy_host.run_prompt(
        run_demo.demo_prompt(
            "3100, 3101, 3102", "three people on a teal gradient background", seed=0, steps=2, cfg=3.0, compare=False
        )
    )
    assert "decode_swapped" not in other
    assert not torch.allclose(other["decode"][0], generated), "the generated image ignores the identities"


def test_toy_faces_refuses_more_people_than_layouts(comfy_host, demo_nodes):
    node = demo_nodes.InstantFamilyToyFaces()
    with pytest.raises(ValueError, match="1 to 6 people"):
        node.make("1, 2, 3, 4, 5, 6, 7", 0, "toyface")
    with pytest.raises(ValueError, match="identity numbers"):
        node.make("alice, bob", 0, "toyface")


def test_demo_graph_runs_unet_and_controlnet_once_per_step_with_cond_and_uncond_batched(comfy_host, demo_nodes):
    """Counted over a real prompt: on hosts whose sampler hands ControlNets its transformer options
    (0.3.x), each step is one UNet call and one ControlNet call of batch 2 (cond + uncond); the
    2024 host needs two calls of batch 1 each."""
    import comfy.cldm.cldm
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel

    steps = 3
    calls = []

    def count(module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        if isinstance(module, comfy.cldm.cldm.ControlNet):
            calls.append(("controlnet", x.shape[0]))
        elif isinstance(module, openaimodel.UNetModel):
            calls.append(("unet", x.shape[0]))

    prompt = run_demo.demo_prompt(
        "3000, 3001, 3002", "three people", seed=0, steps=steps, cfg=3.0, compare=False
    )  # one generation: no swapped / no-faces branches
    original_call = torch.nn.Module.__call__

    def counting_call(self, *args, **kwargs):
        if isinstance(self, (comfy.cldm.cldm.ControlNet, openaimodel.UNetModel)):
            count(self, args, kwargs)
        return original_call(self, *args, **kwargs)

    torch.nn.Module.__call__ = counting_call
    try:
        comfy_host.run_prompt(prompt)
    finally:
        torch.nn.Module.__call__ = original_call
    batched = comfy_host.pack_import("nodes.controlnet").host_batches_cond_and_uncond()
    per_step = [("controlnet", 2), ("unet", 2)] if batched else [("controlnet", 1), ("unet", 1)] * 2
    assert sorted(calls) == sorted(per_step * steps), calls
