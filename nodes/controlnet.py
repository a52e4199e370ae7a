"""Pose+Circle ControlNet node: a ControlNet whose cross-attention sees the same faces and masks.

No ComfyUI version passes the model's attention patches into a ControlNet, so the pack uses a
subclass of ``comfy.controlnet.ControlNet`` that, while its control model runs, hands each
SpatialTransformer the transformer options carrying the InstantFamily patch.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging

log = logging.getLogger("InstantFamily")


def _spatial_transformers(block):
    return [m for m in block.modules() if hasattr(m, "transformer_blocks")]


def _forward_with_options(original, options, x, context=None, transformer_options=None, *args, **kwargs):
    return original(x, context, transformer_options=options)


# Sampler options the control model's layers may use; the UNet's own patches stay out of it.
_HOST_OPTIONS = ("cond_or_uncond", "uuids", "optimized_attention_override")


def control_replaces(control_model, patch) -> dict:
    """{"attn2": {key: replace}, ["attn1": ...]} of the control model's layers for one FacePatch."""
    from ..instantfamily_core.comfy_patch import CrossAttentionReplace, SelfAttentionReplace
    from ..instantfamily_core.unet_keys import cross_attention_layers

    layers = cross_attention_layers(control_model)
    replaces = {
        "attn2": {key: CrossAttentionReplace(patch, dict(enumerate(modules))) for key, modules in layers.items()}
    }
    if patch.settings.isolate_self_attention:
        replaces["attn1"] = {key: SelfAttentionReplace(patch) for key in layers}
    return replaces


@contextlib.contextmanager
def face_options_on(control_model, replaces: dict, latent_shape, sigmas, host_options: dict | None):
    """Route the face patch into every cross-attention of ``control_model`` for one call.

    host_options: the sampler's transformer options (0.3.x), whose ``cond_or_uncond`` keeps the
    faces off the uncond rows of a batched cond + uncond call; None on hosts that pass none.
    """
    wrapped = []
    shared = {name: host_options[name] for name in _HOST_OPTIONS if host_options and name in host_options}
    try:
        for key in replaces["attn2"]:
            block = control_model.middle_block if key[0] == "middle" else control_model.input_blocks[key[1]]
            options = dict(
                shared,
                patches_replace={kind: {key: r[key]} for kind, r in replaces.items()},
                block=key,
                original_shape=list(latent_shape),
                sigmas=sigmas,
                transformer_index=0,
            )
            for transformer in _spatial_transformers(block):
                transformer.forward = functools.partial(_forward_with_options, transformer.forward, options)
                wrapped.append(transformer)
        yield
    finally:
        for transformer in wrapped:
            del transformer.forward  # drop the instance attribute: the class's forward is back


def host_batches_cond_and_uncond() -> bool:
    """Whether this host's sampler hands ControlNets its transformer options (0.3.x and newer):
    then one control object serves cond and uncond in one batched pass."""
    import comfy.controlnet

    return "transformer_options" in inspect.signature(comfy.controlnet.ControlNet.get_control).parameters


@functools.cache
def instantfamily_controlnet_class():
    """The ControlNet subclass, created on first use so that importing the pack needs no ComfyUI."""
    import comfy.controlnet

    from ..instantfamily_core.comfy_patch import OPTIONS_KEY

    class InstantFamilyControlNet(comfy.controlnet.ControlNet):
        """A ControlNet whose control model sees the faces.

        While sampling it runs the FacePatch of the MODEL being sampled (the sampler's transformer
        options carry it, 0.3.x), so Apply InstantFamily's settings are the ControlNet's too;
        ``face_patch`` (from the node's model input) serves hosts that pass no options.
        ``sees_faces`` False: the text-only copy for the negative on such hosts.
        """

        face_patch = None
        sees_faces = True

        def get_control(self, x_noisy, t, cond, batched_number, *args, **kwargs):
            host_options = args[0] if args else kwargs.get("transformer_options")
            patch = self._patch_for(host_options)
            if patch is None or not patch.settings.enabled:
                return super().get_control(x_noisy, t, cond, batched_number, *args, **kwargs)
            sigmas = host_options.get("sigmas", t) if host_options else t
            with face_options_on(self.control_model, self._replaces(patch), x_noisy.shape, sigmas, host_options):
                return super().get_control(x_noisy, t, cond, batched_number, *args, **kwargs)

        def _patch_for(self, host_options):
            if not self.sees_faces:
                return None
            runtime = host_options.get(OPTIONS_KEY) if host_options else None
            return runtime if runtime is not None else self.face_patch

        def _replaces(self, patch) -> dict:
            cache = self.__dict__.setdefault("_replaces_by_patch", {})
            if patch not in cache:
                cache.clear()  # one patch per prompt; never keep an old prompt's faces alive
                cache[patch] = control_replaces(self.control_model, patch)
            return cache[patch]

        def copy(self):
            # The host's copy() hard-codes its own class (and its constructor differs between
            # versions); copy through it, then restore this class and the face settings.
            c = super().copy()
            c.__class__ = type(self)
            c.face_patch = self.face_patch
            c.sees_faces = self.sees_faces
            return c

    return InstantFamilyControlNet


def build_control_model(model, checkpoint, source: str):
    """The checkpoint's ldm ControlNet, built from the constructor arguments it records (the
    trainer's export writes them); older files without them mirror ``model``'s UNet."""
    import comfy.cldm.cldm
    import comfy.model_management
    import comfy.ops

    state = checkpoint.controlnet_state
    if not state:
        raise ValueError(
            f"{source}: this InstantFamily checkpoint holds no ControlNet weights; "
            "export it from a training run with the ControlNet (python -m train.export)"
        )
    if checkpoint.config.controlnet:
        config = dict(checkpoint.config.controlnet)
    else:
        config = dict(model.model.model_config.unet_config)
        config.pop("out_channels", None)
    config["hint_channels"] = int(state["input_hint_block.0.weight"].shape[1])
    manual_cast = getattr(model.model, "manual_cast_dtype", None)
    config["operations"] = comfy.ops.manual_cast if manual_cast is not None else comfy.ops.disable_weight_init
    config["dtype"] = model.model.get_dtype()
    if "device" in inspect.signature(comfy.cldm.cldm.ControlNet.__init__).parameters:
        config["device"] = comfy.model_management.unet_offload_device()
    control_model = comfy.cldm.cldm.ControlNet(**config)
    missing, unexpected = control_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{source}: its ControlNet does not fit this MODEL's UNet (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); use the base model the checkpoint was trained on"
        )
    cls = instantfamily_controlnet_class()
    return cls(control_model, load_device=comfy.model_management.get_torch_device(), manual_cast_dtype=manual_cast)


def cached_control_model(model, checkpoint):
    """The checkpoint's ControlNet for ``model``'s UNet config and dtype, built once per process.

    Keyed by what the build depends on (never by ``id()``, which a reloaded model can reuse).
    """
    unet = model.model
    key = (
        "controlnet",
        repr(sorted(unet.model_config.unet_config.items())),
        str(unet.get_dtype()),
        str(getattr(unet, "manual_cast_dtype", None)),
    )
    cache = checkpoint.runtime_cache
    if key not in cache:
        cache[key] = build_control_model(model, checkpoint, checkpoint.path or "checkpoint")
    return cache[key]


def same_faces(settings, stack, face_masks) -> bool:
    """Whether ``stack`` and ``face_masks`` are the ones ``settings`` were built from."""
    import torch

    if settings.stack is stack and settings.face_masks is face_masks:
        return True
    return (
        settings.stack.face_tokens.shape == stack.face_tokens.shape
        and torch.equal(settings.stack.face_tokens, stack.face_tokens)
        and settings.face_masks.masks.shape == face_masks.masks.shape
        and torch.equal(settings.face_masks.masks, face_masks.masks)
    )


class InstantFamilyPoseCircleControlNet:
    """Apply the checkpoint's Pose+Circle ControlNet; its cross-attention is masked like the UNet's."""

    DESCRIPTION = (
        "The checkpoint's pose ControlNet, fed the Pose+Circle image. Its cross-attention sees each "
        "ID only inside that ID's face region, with the settings of Apply InstantFamily on its model."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "model": (
                    "MODEL",
                    {
                        "tooltip": "the model Apply InstantFamily returned: the ControlNet runs its "
                        "settings (weight, start/end, mask mode, overlap)"
                    },
                ),
                "instantfamily": ("INSTANTFAMILY_MODEL",),
                "stack": ("INSTANTFAMILY_STACK",),
                "face_masks": ("INSTANTFAMILY_FACE_MASKS",),
                "control_image": ("IMAGE", {"tooltip": "pose skeletons + ID circles (Pose+Circle Image node)"}),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 10.0,
                        "step": 0.01,
                        "tooltip": "how strongly the pose and circles steer the image (0 = no ControlNet)",
                    },
                ),
                "start_percent": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.001,
                        "tooltip": "part of the schedule where the ControlNet starts (0 = first step)",
                    },
                ),
                "end_percent": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.001,
                        "tooltip": "part of the schedule where the ControlNet stops (1 = last step)",
                    },
                ),
            }
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply"
    CATEGORY = "InstantFamily/control"

    def apply(
        self,
        positive,
        negative,
        model,
        instantfamily,
        stack,
        face_masks,
        control_image,
        strength,
        start_percent,
        end_percent,
    ):
        from ..instantfamily_core.comfy_patch import FacePatch, FaceSettings
        from .engine import check_model_fits, existing_face_patch, host_attention

        if strength == 0:
            return (positive, negative)
        check_model_fits(model, instantfamily, "Pose+Circle ControlNet")
        patch = existing_face_patch(model)
        if patch is None:
            config = instantfamily.config
            patch = FacePatch(
                FaceSettings(stack, face_masks, mode=config.mask_mode, overlap=config.overlap), host_attention
            )
            log.info(
                "Pose+Circle ControlNet: its model has no Apply InstantFamily, so the ControlNet's faces use "
                "the checkpoint's defaults (weight 1, whole schedule)"
            )
        elif not same_faces(patch.settings, stack, face_masks):
            raise ValueError(
                "Pose+Circle ControlNet: its stack / face_masks are not the ones Apply InstantFamily used on its "
                "model; connect the same Build Embedding Stack and Face Mask outputs to both nodes"
            )
        control = cached_control_model(model, instantfamily).copy()
        control.face_patch = patch
        # Without faces (weight 0, no IDs) nothing differs between the rows: always one object.
        shared = host_batches_cond_and_uncond() or not patch.settings.enabled
        if shared:
            uncond_control = control  # one object on both sides: ComfyUI batches cond + uncond in one pass
        else:  # the sampler cannot tell the ControlNet which rows are uncond: a text-only copy for them
            uncond_control = control.copy()
            uncond_control.sees_faces = False
        hint = control_image.movedim(-1, 1)  # (B, H, W, 3) -> (B, 3, H, W)
        window = (start_percent, end_percent)
        chained = {}
        return (
            attach_control(positive, control, hint, strength, window, chained),
            attach_control(negative, uncond_control, hint, strength, window, chained if shared else {}),
        )


def attach_control(conditioning, control, hint, strength, percent_range, chained: dict):
    """Chain ``control`` after any ControlNet already on each conditioning entry.

    chained: previous ControlNet -> our copy chained after it; sharing it between positive and
    negative gives both the same object, which lets ComfyUI batch cond with uncond.
    """
    out = []
    for embedding, options in conditioning:
        options = options.copy()
        previous = options.get("control", None)
        if previous not in chained:
            c = control.copy().set_cond_hint(hint, strength, percent_range)
            c.set_previous_controlnet(previous)
            chained[previous] = c
        options["control"] = chained[previous]
        options["control_apply_to_uncond"] = False
        out.append([embedding, options])
    return out


NODE_CLASS_MAPPINGS = {"InstantFamilyPoseCircleControlNet": InstantFamilyPoseCircleControlNet}
NODE_DISPLAY_NAME_MAPPINGS = {"InstantFamilyPoseCircleControlNet": "Pose+Circle ControlNet (InstantFamily)"}
