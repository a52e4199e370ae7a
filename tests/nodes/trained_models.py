"""The trainer's models as a ComfyUI host runs them (shared by the node tests of trained checkpoints)."""


def comfy_model_from(unet):
    """The trainer's base UNet (diffusers) as a ComfyUI MODEL (ldm naming, SD1.5 family); needs the host started."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from instantfamily_core.ldm_convert import ldm_unet_config, unet_to_ldm

    config = ldm_unet_config(unet.config)
    heads = config["num_heads"]
    model_config = comfy.supported_models.SD15(config)  # (ComfyUI of 2024 edits ``config`` in place)
    model_config.unet_config["num_heads"] = heads  # SD15 forces SD1.5's 8 heads; the tiny net has fewer
    model = model_config.get_model({})
    model.diffusion_model.load_state_dict(unet_to_ldm(unet.state_dict(), unet.config))
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
