"""What is trained is what runs: the trainer's UNet + ControlNet (diffusers) and its exported
checkpoint loaded through the pack's nodes on a real ComfyUI give the same noise prediction."""

import inspect

import torch
from trained_models import comfy_model_from

BOXES = [[0.0, 0, 30, 30], [20, 20, 64, 64], [40, 0, 64, 20]]  # overlapping regions included
TIMESTEP = 700


def _tiny_trainer_net():
    from net_fixtures import inputs, tiny_net  # tests/train is on pytest's pythonpath (pyproject.toml)

    return tiny_net(seed=0), inputs(batch=1, seed=2)


def test_exported_checkpoint_through_the_nodes_predicts_what_the_trainer_predicts(comfy_host):
    from instantfamily_core.ldm_convert import controlnet_to_ldm, ldm_controlnet_kwargs
    from instantfamily_core.masks import masks_from_boxes as core_masks_from_boxes
    from train.net import FaceInputs

    net, (latents, _, text, control) = _tiny_trainer_net()
    config_mod = comfy_host.pack_import("instantfamily_core.config")
    checkpoint = comfy_host.pack_import("instantfamily_core.checkpoint")
    identity = comfy_host.pack_import("instantfamily_core.identity")
    masks_mod = comfy_host.pack_import("instantfamily_core.masks")

    # export: the trainer's weights -> the pack's single safetensors file (ldm naming)
    config = config_mod.InstantFamilyConfig.from_dict(
        {
            **{k: v for k, v in net.config.__dict__.items() if k != "recognizer"},
            "controlnet": ldm_controlnet_kwargs(net.controlnet.config),
        }
    )
    checkpoint.save_checkpoint(
        comfy_host.models_dir / "instantfamily" / "trained.safetensors",
        config,
        net.projector.state_dict(),
        controlnet_to_ldm(net.controlnet.state_dict(), net.controlnet.config),
    )
    comfy_host.folder_paths.filename_list_cache.clear()
    (loaded,) = comfy_host.node_class("InstantFamilyModelLoader")().load("trained.safetensors")

    g = torch.Generator().manual_seed(5)
    global_features = torch.randn(3, net.config.d_gf, generator=g)
    local_features = torch.randn(3, net.config.d_lf, net.config.L, net.config.L, generator=g)
    with torch.no_grad():
        trained = net(
            latents,
            torch.tensor([TIMESTEP]),
            text,
            FaceInputs([global_features], [local_features], [core_masks_from_boxes(torch.tensor(BOXES), (64, 64))]),
            control,
        )
        without_faces = net(latents, torch.tensor([TIMESTEP]), text, FaceInputs.empty(1, net.config), control)

    # the same inputs through the nodes
    faces = identity.Faces(
        [identity.Identity(global_features[i].numpy(), local_features[i].numpy()) for i in range(3)],
        recognizer=loaded.config.recognizer,
    )
    (stack,) = comfy_host.node_class("InstantFamilyBuildEmbeddingStack")().build(loaded, faces)
    face_masks = masks_mod.masks_from_boxes(torch.tensor(BOXES), (64, 64))
    base = comfy_model_from(net.unet)
    conditioning = [[text, {}]]
    positive, _ = comfy_host.node_class("InstantFamilyPoseCircleControlNet")().apply(
        conditioning, conditioning, base, loaded, stack, face_masks, control.permute(0, 2, 3, 1), 1.0, 0.0, 1.0
    )
    (patched,) = comfy_host.node_class("InstantFamilyApply")().apply(
        base, loaded, stack, face_masks, 1.0, 0.0, 1.0, "as trained", "both"
    )

    sampling = patched.model.model_sampling
    sigma = sampling.sigmas[TIMESTEP].reshape(1)
    assert torch.allclose(sampling.timestep(sigma).float(), torch.tensor([float(TIMESTEP)]))
    x = latents * torch.sqrt(sigma**2 + 1.0)  # ComfyUI scales its input by 1/sqrt(sigma^2 + 1)
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
        residuals = control_net.get_control(x, sigma, {"c_crossattn": text}, 1, *extra)
        plain_residuals = text_only.get_control(x, sigma, {"c_crossattn": text}, 1, *extra)
        assert max((a - b).abs().max().item() for a, b in zip(residuals["output"], plain_residuals["output"])) > 1e-5
        denoised = patched.model.apply_model(x, sigma, c_crossattn=text, control=residuals, transformer_options=options)
    runs = (x - denoised) / sigma  # the eps prediction

    assert (trained - without_faces).abs().max() > 1e-3  # the faces matter, so the comparison means something
    assert (runs - trained).abs().max() <= 1e-4, (runs - trained).abs().max()
