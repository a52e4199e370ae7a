"""The trainer's models as a ComfyUI host runs them (shared by the node tests of trained checkpoints)."""


def comfy_model_from(unet):
    """The trainer's base UNet (diffusers) as a ComfyUI MODEL (ldm naming; ComfyUI's SD15 or SDXL model
    class, by the UNet's config); needs the host started."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from instantfamily_core.ldm_convert import ldm_unet_config, unet_to_ldm

    config = ldm_unet_config(unet.config)
    heads = {k: config[k] for k in ("num_heads", "num_head_channels")}
    family = comfy.supported_models.SDXL if config.get("adm_in_channels") else comfy.supported_models.SD15
    model_config = family(config)  # (ComfyUI of 2024 edits ``config`` in place)
    model_config.unet_config.update(heads)  # the classes force the real models' heads; the tiny nets have fewer
    model = model_config.get_model({})
    model.diffusion_model.load_state_dict(unet_to_ldm(unet.state_dict(), unet.config))
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
