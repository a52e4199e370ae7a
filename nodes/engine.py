"""Nodes of the engine: load a checkpoint, build the embedding stack, patch a MODEL."""

from __future__ import annotations

import logging

log = logging.getLogger("InstantFamily")

CATEGORY = "InstantFamily"


def host_attention(q, k, v, heads, extra_options):
    """The host's own attention, called exactly as ComfyUI's CrossAttention calls it."""
    from comfy.ldm.modules.attention import optimized_attention

    precision = extra_options.get("attn_precision")
    try:
        return optimized_attention(q, k, v, heads, attn_precision=precision)
    except TypeError:  # ComfyUI of early 2024: no attn_precision argument
        return optimized_attention(q, k, v, heads)


def percent_to_sigma(model, percent: float) -> float:
    sampling = model.get_model_object("model_sampling") if hasattr(model, "get_model_object") else model.model.model_sampling
    return float(sampling.percent_to_sigma(percent))


def load_instantfamily_file(name: str):
    """Resolve a file name under models/instantfamily and load it (clear errors on failure)."""
    import folder_paths

    from ..instantfamily_core.checkpoint import load_checkpoint

    path = folder_paths.get_full_path("instantfamily", name)
    if path is None:
        folders = folder_paths.get_folder_paths("instantfamily")
        raise ValueError(f"InstantFamily checkpoint '{name}' not found; put it in one of {folders}")
    return load_checkpoint(path)


class InstantFamilyModelLoader:
    """Load an InstantFamily checkpoint (projector + ControlNet + optional UNet deltas)."""

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"instantfamily_file": (folder_paths.get_filename_list("instantfamily"),)}}

    RETURN_TYPES = ("INSTANTFAMILY_MODEL",)
    RETURN_NAMES = ("instantfamily",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"

    def load(self, instantfamily_file):
        model = load_instantfamily_file(instantfamily_file)
        log.info("InstantFamily: loaded %s", model.path)
        return (model,)


class InstantFamilyBuildEmbeddingStack:
    """Project each identity into L*L+1 face tokens, in slot order."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"instantfamily": ("INSTANTFAMILY_MODEL",), "faces": ("INSTANTFAMILY_FACES",)}}

    RETURN_TYPES = ("INSTANTFAMILY_STACK",)
    RETURN_NAMES = ("stack",)
    FUNCTION = "build"
    CATEGORY = f"{CATEGORY}/conditioning"

    def build(self, instantfamily, faces):
        from ..instantfamily_core.stack import build_stack, check_recognizer

        check_recognizer(instantfamily.config.recognizer, faces.recognizer)
        return (build_stack(instantfamily.projector, faces),)


class InstantFamilyApply:
    """Patch a MODEL clone: face tokens in every cross-attention, masked to each face's region."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "instantfamily": ("INSTANTFAMILY_MODEL",),
                "stack": ("INSTANTFAMILY_STACK",),
                "face_masks": ("INSTANTFAMILY_FACE_MASKS",),
                "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                     "tooltip": "ID influence: 0 = the unpatched model, 1 = as trained"}),
                "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "mask_mode": (["as trained", "hard", "paper"], {"default": "as trained"}),
                "overlap": (["both", "nearest"], {"default": "both",
                                                  "tooltip": "where two face regions overlap: both faces visible (paper) or only the nearest"}),
            },
            "optional": {
                "attn1_isolation": ("BOOLEAN", {"default": False,
                                                "tooltip": "beyond the paper: face regions do not attend to each other in self-attention"}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = f"{CATEGORY}/conditioning"

    def apply(self, model, instantfamily, stack, face_masks, weight, start_at, end_at, mask_mode="as trained",
              overlap="both", attn1_isolation=False):
        from ..instantfamily_core.comfy_patch import InstantFamilyAttentionPatch

        if start_at > end_at:
            raise ValueError(f"start_at ({start_at}) must not be after end_at ({end_at})")
        patched = model.clone()
        if instantfamily.unet_deltas:
            patched.add_patches({k: (v,) for k, v in instantfamily.unet_deltas.items()}, 1.0)
        if weight == 0 or stack.num_faces == 0:
            return (patched,)
        mode = instantfamily.config.mask_mode if mask_mode == "as trained" else mask_mode
        patch = InstantFamilyAttentionPatch(
            stack, face_masks, host_attention, mode=mode, weight=weight, overlap=overlap,
            sigma_start=percent_to_sigma(patched, start_at), sigma_end=percent_to_sigma(patched, end_at),
            isolate_self_attention=attn1_isolation,
        )
        install_patch(patched, patch)
        return (patched,)


def install_patch(model, patch) -> list[tuple[str, int]]:
    """Install ``patch`` on every cross-attention key of ``model`` (a clone); returns the keys."""
    from ..instantfamily_core.unet_keys import cross_attention_keys

    keys = cross_attention_keys(model.model.diffusion_model)
    if not keys:
        raise ValueError("this MODEL has no cross-attention layers: InstantFamily needs an SD1.5-family model")
    model.set_model_attn2_patch(patch.append_face_tokens)
    for block, index in keys:
        model.set_model_attn2_replace(patch.attention, block, index)
        if patch.isolate_self_attention:
            model.set_model_attn1_replace(patch.self_attention, block, index)
    model.model_options.setdefault("transformer_options", {})["instantfamily_patch"] = patch
    return keys


NODE_CLASS_MAPPINGS = {
    "InstantFamilyModelLoader": InstantFamilyModelLoader,
    "InstantFamilyBuildEmbeddingStack": InstantFamilyBuildEmbeddingStack,
    "InstantFamilyApply": InstantFamilyApply,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstantFamilyModelLoader": "Load InstantFamily Model",
    "InstantFamilyBuildEmbeddingStack": "Build Embedding Stack",
    "InstantFamilyApply": "Apply InstantFamily",
}
