"""Nodes of the engine: load a checkpoint, build the embedding stack, patch a MODEL."""

from __future__ import annotations

import functools
import inspect
import logging

from ..instantfamily_core.comfy_patch import OPTIONS_KEY

log = logging.getLogger("InstantFamily")

CATEGORY = "InstantFamily"


def host_attention(q, k, v, heads, extra_options):
    """The host's own attention, called exactly as its CrossAttention calls it.

    0.3.x passes ``attn_precision`` and ``transformer_options`` (which carry a model-level
    attention override or a per-layer backend); the 2024 host passes neither. What the host's
    function accepts is read from its signature, once per function.
    """
    from comfy.ldm.modules import attention

    function = attention.optimized_attention
    kwargs = {}
    accepted = _accepted_keywords(function)
    if "attn_precision" in accepted:
        kwargs["attn_precision"] = extra_options.get("attn_precision")
    if "transformer_options" in accepted:
        kwargs["transformer_options"] = extra_options
    return function(q, k, v, heads, **kwargs)


@functools.lru_cache(maxsize=8)
def _accepted_keywords(function) -> frozenset[str]:
    """The optional keywords of ComfyUI's attention function (a ``**kwargs`` accepts both)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return frozenset({"attn_precision", "transformer_options"})
    return frozenset(p.name for p in parameters)


def percent_to_sigma(model, percent: float) -> float:
    sampling = (
        model.get_model_object("model_sampling") if hasattr(model, "get_model_object") else model.model.model_sampling
    )
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

    DESCRIPTION = "Loads an InstantFamily checkpoint: the face projector, the Pose+Circle ControlNet and UNet changes."

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {
            "required": {
                "instantfamily_file": (
                    folder_paths.get_filename_list("instantfamily"),
                    {
                        "tooltip": "an InstantFamily checkpoint (.safetensors) in models/instantfamily, from the bundled trainer"
                    },
                )
            }
        }

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

    DESCRIPTION = "Turns every ID into face tokens (1 global + L*L local), in ID order: the stack the model attends to."

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

    DESCRIPTION = (
        "Puts every ID of the stack into the model's cross-attention, each visible only inside its "
        "face region. Its settings also reach the Pose+Circle ControlNet of the same graph."
    )

    @classmethod
    def INPUT_TYPES(cls):
        from ..instantfamily_core.config import DEFAULT_OVERLAP, MASK_MODES, OVERLAP_RULES

        return {
            "required": {
                "model": ("MODEL",),
                "instantfamily": ("INSTANTFAMILY_MODEL",),
                "stack": ("INSTANTFAMILY_STACK",),
                "face_masks": ("INSTANTFAMILY_FACE_MASKS",),
                "weight": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 3.0,
                        "step": 0.05,
                        "tooltip": "ID influence: 0 = the model without InstantFamily (bit for bit, "
                        "trained UNet changes included), 1 = as trained",
                    },
                ),
                "start_at": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "part of the schedule where the faces start to act "
                        "(0 = first step); also for the Pose+Circle ControlNet",
                    },
                ),
                "end_at": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "part of the schedule where the faces stop (1 = last step)",
                    },
                ),
                "mask_mode": (
                    ["as trained", *MASK_MODES],
                    {
                        "default": "as trained",
                        "tooltip": "hard: a face is invisible outside its region; paper: the paper's literal "
                        "M * QK formula, which leaks a little everywhere; as trained: the checkpoint's",
                    },
                ),
                "overlap": (
                    list(OVERLAP_RULES),
                    {
                        "default": DEFAULT_OVERLAP,
                        "tooltip": "where two face regions overlap: both faces visible (paper) or only the nearest",
                    },
                ),
            },
            "optional": {
                "attn1_isolation": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "beyond the paper: face regions do not attend to each other in self-attention",
                    },
                ),
            },
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = f"{CATEGORY}/conditioning"

    def apply(
        self,
        model,
        instantfamily,
        stack,
        face_masks,
        weight,
        start_at,
        end_at,
        mask_mode="as trained",
        overlap="both",
        attn1_isolation=False,
    ):
        from ..instantfamily_core.comfy_patch import FacePatch, FaceSettings

        if start_at > end_at:
            raise ValueError(f"start_at ({start_at}) must not be after end_at ({end_at})")
        check_model_fits(model, instantfamily, "Apply InstantFamily")
        if existing_face_patch(model) is not None:
            raise ValueError(
                "Apply InstantFamily: this MODEL already went through an Apply InstantFamily node. Put every "
                "person into one stack instead (chain Load Faces nodes through their 'faces' input, or use one "
                "group photo) and use a single Apply InstantFamily"
            )
        mode = instantfamily.config.mask_mode if mask_mode == "as trained" else mask_mode
        settings = FaceSettings(
            stack,
            face_masks,
            mode=mode,
            weight=weight,
            overlap=overlap,
            sigma_start=percent_to_sigma(model, start_at),
            sigma_end=percent_to_sigma(model, end_at),
            isolate_self_attention=attn1_isolation,
        )
        patched = model.clone()
        patch = FacePatch(settings, host_attention)
        if not settings.enabled:
            # weight 0 or no IDs: the plain model; the settings still travel, so the ControlNet knows.
            patched.model_options.setdefault("transformer_options", {})[OPTIONS_KEY] = patch
            return (patched,)
        if instantfamily.unet_deltas:
            applied = patched.add_patches({k: (v,) for k, v in instantfamily.unet_deltas.items()}, 1.0)
            if len(applied) != len(instantfamily.unet_deltas):
                missing = sorted(set(instantfamily.unet_deltas) - set(applied))
                raise ValueError(
                    f"Apply InstantFamily: {instantfamily.path or 'the checkpoint'} changes UNet weights this MODEL "
                    f"does not have ({missing[:2]}...): use the base model it was trained on "
                    f"({instantfamily.config.base_model})"
                )
        install_patch(patched, patch)
        return (patched,)


def existing_face_patch(model):
    """The FacePatch an Apply InstantFamily node put on ``model``, or None."""
    return model.model_options.get("transformer_options", {}).get(OPTIONS_KEY)


# ComfyUI model-config classes of the families a checkpoint's ``base_model`` may name.
FAMILY_CLASSES = {
    "SD1.5": ("SD15",),
    "SDXL": ("SDXL", "SDXLRefiner", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"),
}


def model_family(model) -> str:
    """The family of a MODEL, named like a checkpoint's ``base_model`` ("SD1.5", "SDXL") when known."""
    classes = {cls.__name__ for cls in type(model.model.model_config).__mro__}
    for family, names in FAMILY_CLASSES.items():
        if classes & set(names):
            return family
    return type(model.model.model_config).__name__


def check_model_fits(model, instantfamily, node: str) -> None:
    """Refuse a MODEL of another family, context width or attention layout than the checkpoint's."""
    from ..instantfamily_core.unet_keys import cross_attention_keys

    config = instantfamily.config
    family = model_family(model)
    if family != config.base_model:
        raise ValueError(
            f"{node}: {family} model, {config.base_model} checkpoint ({instantfamily.path or 'InstantFamily'}): "
            f"load a {config.base_model} base model, or an InstantFamily checkpoint trained for {family}"
        )
    context = model.model.model_config.unet_config.get("context_dim")
    if context is not None and int(context) != config.d_K:
        raise ValueError(
            f"{node}: the model's cross-attention is {context} wide but the checkpoint's face tokens are "
            f"{config.d_K} wide: use the base model the checkpoint was trained on ({config.base_model})"
        )
    if not cross_attention_keys(model.model.diffusion_model):
        raise ValueError(
            f"{node}: this MODEL has no cross-attention layers: InstantFamily needs a {config.base_model} model"
        )


def install_patch(model, patch) -> list[tuple[str, int]]:
    """Install ``patch`` on every cross-attention of ``model`` (a clone); returns the block keys.

    A replace another pack installed earlier at a key is wrapped, not overwritten (see
    comfy_patch._ComposableReplace); one keyed with a transformer index, which ComfyUI calls
    instead of the (block, index) one, is wrapped under that same key.
    """
    from ..instantfamily_core.comfy_patch import CrossAttentionReplace, SelfAttentionReplace
    from ..instantfamily_core.unet_keys import cross_attention_layers

    layers = cross_attention_layers(model.model.diffusion_model)
    for (block, index), modules in layers.items():
        _install_at(
            model,
            "attn2",
            block,
            index,
            len(modules),
            lambda indices, previous, modules=modules: CrossAttentionReplace(
                patch, {t: modules[t] for t in indices}, previous
            ),
        )
        if patch.settings.isolate_self_attention:
            _install_at(
                model,
                "attn1",
                block,
                index,
                len(modules),
                lambda indices, previous: SelfAttentionReplace(patch, previous),
            )
    model.model_options["transformer_options"][OPTIONS_KEY] = patch
    return list(layers)


def _install_at(model, kind: str, block: str, index: int, count: int, make) -> None:
    """``make(transformer_indices, previous)`` at (block, index), and at every (block, index, t)
    key another pack already uses (wrapping what is there)."""
    existing = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    for t in range(count):
        if (block, index, t) in existing:
            model.set_model_patch_replace(make([t], existing[(block, index, t)]), kind, block, index, t)
    model.set_model_patch_replace(make(range(count), existing.get((block, index))), kind, block, index)


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
