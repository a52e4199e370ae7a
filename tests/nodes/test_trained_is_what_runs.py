"""What is trained is what runs: the trainer's UNet + ControlNet (diffusers) and its exported
checkpoint loaded through the pack's nodes on a real ComfyUI give the same noise prediction,
for SD1.5 and for SDXL (whose pooled text + size conditioning ComfyUI feeds as ``y``); and a
tiny SDXL training run, exported, runs in the nodes what it trained."""

import inspect

import pytest
import torch
from trained_models import comfy_model_from

BOXES = [[0.0, 0, 30, 30], [20, 20, 64, 64], [40, 0, 64, 20]]  # overlapping regions included
TIMESTEP = 700
MODEL_CONFIGS = {"SD1.5": "tiny", "SDXL": "tiny_sdxl"}


def _sampler_conds(model, text, pooled, x):
    """The model conds (c_crossattn, and y for SDXL) exactly as ComfyUI's sampler encodes a CONDITIONING."""
    import comfy.samplers

    entry = {"cross_attn": text, "model_conds": {}}
    if pooled is not None:
        entry["pooled_output"] = pooled
    (encoded,) = comfy.samplers.encode_model_conds(model.extra_conds, [entry], x, x.device, "positive")
    return {name: cond.cond for name, cond in encoded["model_conds"].items()}


def _faces(config, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(3, config.d_gf, generator=g),
        torch.randn(3, config.d_lf, config.L, config.L, generator=g),
    )


def trainer_prediction(net, latents, text, control, pooled, features):
    """The trainer net's eps at TIMESTEP with the three faces in BOXES, and without faces."""
    from instantfamily_core.masks import masks_from_boxes
    from train.net import FaceInputs

    global_features, local_features = features
    faces = FaceInputs([global_features], [local_features], [masks_from_boxes(torch.tensor(BOXES), (64, 64))])
    t = torch.tensor([TIMESTEP])
    with torch.no_grad():
        return (
            net(latents, t, text, faces, control, pooled=pooled),
            net(latents, t, text, FaceInputs.empty(1, net.config), control, pooled=pooled),
        )


def nodes_prediction(comfy_host, checkpoint_name, base_unet, latents, text, control, pooled, features):
    """The same eps through the nodes: loader, stack, Pose+Circle ControlNet, Apply, the sampler's model call."""
    identity = comfy_host.pack_import("instantfamily_core.identity")
    masks_mod = comfy_host.pack_import("instantfamily_core.masks")
    comfy_host.folder_paths.filename_list_cache.clear()
    (loaded,) = comfy_host.node_class("InstantFamilyModelLoader")().load(checkpoint_name)
    global_features, local_features = features
    faces = identity.Faces(
        [identity.Identity(global_features[i].numpy(), local_features[i].numpy()) for i in range(3)],
        recognizer=loaded.config.recognizer,
    )
    (stack,) = comfy_host.node_class("InstantFamilyBuildEmbeddingStack")().build(loaded, faces)
    face_masks = masks_mod.masks_from_boxes(torch.tensor(BOXES), (64, 64))
    base = comfy_model_from(base_unet)
    conditioning = [[text, {} if pooled is None else {"pooled_output": pooled}]]
    positive, _ = comfy_host.node_class("InstantFamilyPoseCircleControlNet")().apply(
        conditioning, conditioning, base, loaded, stack, face_masks, control.permute(0, 2, 3, 1), 1.0, 0.0, 1.0
    )
    (patched,) = comfy_host.node_class("InstantFamilyApply")().apply(
        base, loaded, stack, face_masks, 1.0, 0.0, 1.0, "as trained", "both"
    )

    import comfy.model_management

    comfy.model_management.load_models_gpu([patched])  # as the sampler does: the UNet K/V deltas are patched in
    sampling = patched.model.model_sampling
    sigma = sampling.sigmas[TIMESTEP].reshape(1)
    assert torch.allclose(sampling.timestep(sigma).float(), torch.tensor([float(TIMESTEP)]))
    x = latents * torch.sqrt(sigma**2 + 1.0)  # ComfyUI scales its input by 1/sqrt(sigma^2 + 1)
    conds = _sampler_conds(patched.model, text, pooled, x)
    assert ("y" in conds) == (pooled is not None)  # SDXL: y = pooled (1280) + 6 sizes x Timestep(256)
    if pooled is not None:
        assert conds["y"].shape == (1, 2816) and torch.equal(conds["y"][:, :1280], pooled)
    options = dict(patched.model_options["transformer_options"], cond_or_uncond=[0], sigmas=sigma)
    control_net = positive[0][1]["control"]
    control_net.pre_run(patched.model, sampling.percent_to_sigma)
    import comfy.controlnet

    host_takes_options = "transformer_options" in inspect.signature(comfy.controlnet.ControlNet.get_control).parameters
    extra = [options] if host_takes_options else []  # 0.3.x passes transformer_options; 2024 does not
    text_only = control_net.copy()  # the same ControlNet without the faces, to show they take part
    text_only.sees_faces = False
    text_only.pre_run(patched.model, sampling.percent_to_sigma)
    with torch.no_grad():
        residuals = control_net.get_control(x, sigma, conds, 1, *extra)
        plain_residuals = text_only.get_control(x, sigma, conds, 1, *extra)
        assert max((a - b).abs().max().item() for a, b in zip(residuals["output"], plain_residuals["output"])) > 1e-5
        denoised = patched.model.apply_model(x, sigma, **conds, control=residuals, transformer_options=options)
    return (x - denoised) / sigma  # the eps prediction


@pytest.mark.parametrize("family", ["SD1.5", "SDXL"])
def test_exported_checkpoint_through_the_nodes_predicts_what_the_trainer_predicts(comfy_host, family):
    from net_fixtures import inputs, pooled_text, tiny_net  # tests/train is on pytest's pythonpath (pyproject.toml)

    from instantfamily_core.ldm_convert import controlnet_to_ldm, ldm_controlnet_kwargs

    net = tiny_net(seed=0, model_config=MODEL_CONFIGS[family])
    latents, _, text, control = inputs(batch=1, seed=2)
    pooled = pooled_text(batch=1) if family == "SDXL" else None
    config_mod = comfy_host.pack_import("instantfamily_core.config")
    checkpoint = comfy_host.pack_import("instantfamily_core.checkpoint")

    # export: the trainer's weights -> the pack's single safetensors file (ldm naming)
    config = config_mod.InstantFamilyConfig.from_dict(
        {
            **{k: v for k, v in net.config.__dict__.items() if k != "recognizer"},
            "controlnet": ldm_controlnet_kwargs(net.controlnet.config),
        }
    )
    name = f"trained-{family}.safetensors"
    checkpoint.save_checkpoint(
        comfy_host.models_dir / "instantfamily" / name,
        config,
        net.projector.state_dict(),
        controlnet_to_ldm(net.controlnet.state_dict(), net.controlnet.config),
    )
    features = _faces(net.config)
    trained, without_faces = trainer_prediction(net, latents, text, control, pooled, features)
    runs = nodes_prediction(comfy_host, name, net.unet, latents, text, control, pooled, features)
    assert (trained - without_faces).abs().max() > 1e-3  # the faces matter, so the comparison means something
    assert (runs - trained).abs().max() <= 1e-4, (runs - trained).abs().max()

    # the other family's model is refused at Apply, naming both
    other = "SD1.5" if family == "SDXL" else "SDXL"
    (loaded,) = comfy_host.node_class("InstantFamilyModelLoader")().load(name)
    (stack,) = comfy_host.node_class("InstantFamilyBuildEmbeddingStack")().build(
        loaded, comfy_host.pack_import("instantfamily_core.identity").Faces([], recognizer=loaded.config.recognizer)
    )
    face_masks = comfy_host.pack_import("instantfamily_core.masks").masks_from_boxes(torch.zeros(0, 4), (64, 64))
    other_model = comfy_model_from(tiny_net(seed=0, model_config=MODEL_CONFIGS[other]).unet)
    with pytest.raises(ValueError, match=f"{other} model, {family} checkpoint"):
        comfy_host.node_class("InstantFamilyApply")().apply(
            other_model, loaded, stack, face_masks, 1.0, 0.0, 1.0, "as trained", "both"
        )


@pytest.fixture(scope="module")
def sdxl_training_run(comfy_host, tmp_path_factory):
    """prepare (tiny pack, raw folder) -> 2 tiny SDXL steps with UNet K/V -> export float32 into models/."""
    from train_fixtures import face_fixtures, prepare_args, train_args, write_raw_folder

    from train.export import export
    from train.options import parse
    from train.prepare import main as prepare
    from train.train import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core box (see tests/train/conftest.py)
    try:
        root = tmp_path_factory.mktemp("sdxl_run")
        face_fixtures().build_tiny_pack(str(root / "insightface"), "tinypack_sdxl")
        raw = write_raw_folder(root / "raw")
        assert prepare(prepare_args([raw], root / "prepared", str(root / "insightface"), "tinypack_sdxl")) == 0
        args = train_args(root / "prepared", root / "run", "--model-config", "tiny_sdxl", "--max-steps", "2")
        trainer = Trainer(parse([*args, "--train-unet-kv", "true", "--checkpoint-every", "2"]))
        trainer.run()
        export(
            root / "run" / "checkpoints" / "latest", comfy_host.models_dir / "instantfamily" / "sdxl-run.safetensors"
        )
        yield trainer
    finally:
        torch.set_num_threads(threads)


def test_a_tiny_sdxl_training_run_exported_runs_in_the_nodes_what_it_trained(comfy_host, sdxl_training_run):
    from net_fixtures import inputs, pooled_text

    from train.models import load_base

    net = sdxl_training_run.accelerator.unwrap_model(sdxl_training_run.net).eval()
    base_unet = load_base("", "tiny_sdxl", seed=0).unet  # the run's base; its trained K/V travel as deltas
    assert any(not torch.equal(a, b) for a, b in zip(base_unet.parameters(), net.unet.parameters()))
    g = torch.Generator().manual_seed(9)
    latents, _, _, control = inputs(batch=1, seed=2)
    text = torch.randn(1, 77, net.config.d_K, generator=g)
    pooled = pooled_text(batch=1)
    features = _faces(net.config)
    trained, without_faces = trainer_prediction(net, latents, text, control, pooled, features)
    runs = nodes_prediction(comfy_host, "sdxl-run.safetensors", base_unet, latents, text, control, pooled, features)
    assert (trained - without_faces).abs().max() > 1e-4
    assert (runs - trained).abs().max() <= 1e-4, (runs - trained).abs().max()


def test_the_exported_sdxl_controlnet_gets_y_and_serves_cond_and_uncond_in_the_sampler(comfy_host, sdxl_training_run):
    from net_fixtures import pooled_text

    from instantfamily_core.masks import masks_from_boxes
    from train.models import load_base

    comfy_host.folder_paths.filename_list_cache.clear()
    (loaded,) = comfy_host.node_class("InstantFamilyModelLoader")().load("sdxl-run.safetensors")
    identity = comfy_host.pack_import("instantfamily_core.identity")
    global_features, local_features = _faces(loaded.config)
    faces = identity.Faces(
        [identity.Identity(global_features[i].numpy(), local_features[i].numpy()) for i in range(3)],
        recognizer=loaded.config.recognizer,
    )
    (stack,) = comfy_host.node_class("InstantFamilyBuildEmbeddingStack")().build(loaded, faces)
    face_masks = comfy_host.pack_import("instantfamily_core.masks").masks_from_boxes(torch.tensor(BOXES), (64, 64))
    assert torch.equal(face_masks.masks, masks_from_boxes(torch.tensor(BOXES), (64, 64)).masks)
    base = comfy_model_from(load_base("", "tiny_sdxl", seed=0).unet)
    (patched,) = comfy_host.node_class("InstantFamilyApply")().apply(
        base, loaded, stack, face_masks, 1.0, 0.0, 1.0, "as trained", "both"
    )
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 77, loaded.config.d_K, generator=g), {"pooled_output": pooled_text(1, seed=4)}]]
    negative = [[torch.randn(1, 77, loaded.config.d_K, generator=g), {"pooled_output": pooled_text(1, seed=5)}]]
    control_image = torch.rand(1, 64, 64, 3, generator=g)
    positive, negative = comfy_host.node_class("InstantFamilyPoseCircleControlNet")().apply(
        positive, negative, patched, loaded, stack, face_masks, control_image, 1.0, 0.0, 1.0
    )
    control_model = positive[0][1]["control"].control_model
    seen = []
    original = type(control_model).forward

    def recording(self, x, hint, timesteps, context, y=None, *args, **kwargs):
        seen.append((x.shape[0], None if y is None else tuple(y.shape)))
        return original(self, x, hint, timesteps, context, y, *args, **kwargs)

    type(control_model).forward = recording
    try:
        out = comfy_host.sample(patched, positive, negative, torch.zeros(1, 4, 8, 8), seed=3, steps=2, cfg=3.0)
    finally:
        type(control_model).forward = original
    assert torch.isfinite(out).all()
    import comfy.controlnet

    batched = "transformer_options" in inspect.signature(comfy.controlnet.ControlNet.get_control).parameters
    assert seen == ([(2, (2, 2816))] * 2 if batched else [(1, (1, 2816))] * 4), seen  # y: pooled + sizes
