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


@contextlib.contextmanager
def face_options_on(control_model, patch, latent_shape, sigmas):
    """Route the InstantFamily patch into every cross-attention of ``control_model`` for one call."""
    from ..instantfamily_core.unet_keys import cross_attention_keys

    wrapped = []
    try:
        for key in cross_attention_keys(control_model):
            block = control_model.middle_block if key[0] == "middle" else control_model.input_blocks[key[1]]
            replace = {"attn2": {key: patch.attention}}
            if patch.isolate_self_attention:
                replace["attn1"] = {key: patch.self_attention}
            options = {
                "patches": {"attn2_patch": [patch.append_face_tokens]},
                "patches_replace": replace,
                "block": key,
                "original_shape": list(latent_shape),
                "sigmas": sigmas,
                "transformer_index": 0,
            }
            for transformer in _spatial_transformers(block):
                transformer.forward = functools.partial(_forward_with_options, transformer.forward, options)
                wrapped.append(transformer)
        yield
    finally:
        for transformer in wrapped:
            del transformer.forward  # drop the instance attribute: the class's forward is back


@functools.cache
def instantfamily_controlnet_class():
    """The ControlNet subclass, created on first use so that importing the pack needs no ComfyUI."""
    import comfy.controlnet

    class InstantFamilyControlNet(comfy.controlnet.ControlNet):
        """A ControlNet whose control model sees the face tokens (``face_patch``; None = text only)."""

        face_patch = None

        def get_control(self, x_noisy, t, cond, batched_number, *args, **kwargs):
            if self.face_patch is None:
                return super().get_control(x_noisy, t, cond, batched_number, *args, **kwargs)
            with face_options_on(self.control_model, self.face_patch, x_noisy.shape, t):
                return super().get_control(x_noisy, t, cond, batched_number, *args, **kwargs)

        def copy(self):
            # The host's copy() hard-codes its own class (and its constructor differs between
            # versions); copy through it, then restore this class and the face patch.
            c = super().copy()
            c.__class__ = type(self)
            c.face_patch = self.face_patch
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
        raise ValueError(f"{source}: this InstantFamily checkpoint holds no ControlNet weights; "
                         "export it from a training run with the ControlNet (python -m train.export)")
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


class InstantFamilyPoseCircleControlNet:
    """Apply the checkpoint's Pose+Circle ControlNet; its cross-attention is masked like the UNet's."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "model": ("MODEL", {"tooltip": "the base model; the ControlNet mirrors its UNet"}),
                "instantfamily": ("INSTANTFAMILY_MODEL",),
                "stack": ("INSTANTFAMILY_STACK",),
                "face_masks": ("INSTANTFAMILY_FACE_MASKS",),
                "control_image": ("IMAGE", {"tooltip": "pose skeletons + ID circles (Pose+Circle Image node)"}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            }
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply"
    CATEGORY = "InstantFamily/control"

    def apply(self, positive, negative, model, instantfamily, stack, face_masks, control_image,
              strength, start_percent, end_percent):
        from ..instantfamily_core.comfy_patch import InstantFamilyAttentionPatch
        from .engine import host_attention

        if strength == 0:
            return (positive, negative)
        cache = instantfamily.runtime_cache
        key = ("controlnet", id(model.model))
        if key not in cache:
            cache[key] = build_control_model(model, instantfamily, instantfamily.path or "checkpoint")
        base = cache[key]
        config = instantfamily.config
        with_faces = base.copy()
        with_faces.face_patch = InstantFamilyAttentionPatch(
            stack, face_masks, host_attention, mode=config.mask_mode, overlap=config.overlap)
        without_faces = base.copy()  # the negative branch sees the text only, as in the UNet
        hint = control_image.movedim(-1, 1)  # (B, H, W, 3) -> (B, 3, H, W)
        return (
            attach_control(positive, with_faces, hint, strength, (start_percent, end_percent)),
            attach_control(negative, without_faces, hint, strength, (start_percent, end_percent)),
        )


def attach_control(conditioning, control, hint, strength, percent_range):
    """Chain ``control`` after any ControlNet already on each conditioning entry."""
    copies = {}
    out = []
    for embedding, options in conditioning:
        options = options.copy()
        previous = options.get("control", None)
        if previous not in copies:
            c = control.copy().set_cond_hint(hint, strength, percent_range)
            c.set_previous_controlnet(previous)
            copies[previous] = c
        options["control"] = copies[previous]
        options["control_apply_to_uncond"] = False
        out.append([embedding, options])
    return out


NODE_CLASS_MAPPINGS = {"InstantFamilyPoseCircleControlNet": InstantFamilyPoseCircleControlNet}
NODE_DISPLAY_NAME_MAPPINGS = {"InstantFamilyPoseCircleControlNet": "Pose+Circle ControlNet (InstantFamily)"}
