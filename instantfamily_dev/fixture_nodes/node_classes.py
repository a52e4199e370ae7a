"""Classic-API test nodes: a tiny MODEL, random CONDITIONING and a LATENT probe output node."""

from . import tiny_model

_CATEGORY = "InstantFamily/testing"
_SEED = ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})
_WIDTH = ("INT", {"default": 32, "min": 8, "max": 4096, "step": 8})


class IFTestTinyModel:
    """A randomly initialised SD1.5-shaped (or SDXL-shaped) MODEL with a tiny text width."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"seed": _SEED, "context_dim": _WIDTH},
            "optional": {"family": (["SD1.5", "SDXL"], {"default": "SD1.5"})},
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = _CATEGORY

    def build(self, seed, context_dim, family="SD1.5"):
        return (tiny_model.tiny_sd15_model(context_dim=context_dim, seed=seed, family=family),)


class IFTestConditioning:
    """A CONDITIONING holding a random (batch, tokens, context_dim) text embedding."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": _SEED,
                "context_dim": _WIDTH,
                "tokens": ("INT", {"default": 77, "min": 1, "max": 1024}),
                "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
            },
            "optional": {"pooled": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip": "SDXL: 1280; 0: none"})},
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"
    CATEGORY = _CATEGORY

    def build(self, seed, context_dim, tokens, batch, pooled=0):
        conditioning = tiny_model.random_conditioning(context_dim, seed, batch, tokens, pooled=pooled or None)
        return (conditioning,)


class IFTestLatentProbe:
    """Output node: passes a LATENT through and reports its shape in the ui dict."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = _CATEGORY

    def probe(self, samples):
        shape = [int(s) for s in samples["samples"].shape]
        return {"ui": {"latent_shape": [shape]}, "result": (samples,)}


NODE_CLASS_MAPPINGS = {
    "IFTestTinyModel": IFTestTinyModel,
    "IFTestConditioning": IFTestConditioning,
    "IFTestLatentProbe": IFTestLatentProbe,
}
NODE_DISPLAY_NAME_MAPPINGS = {name: name for name in NODE_CLASS_MAPPINGS}
