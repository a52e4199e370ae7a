"""Test stand-ins for the weights-dependent parts of the example workflows (see tests/nodes/workflow_fixtures.py).

- ``IFTestDecode``: LATENT -> IMAGE without a VAE (stands in for VAEDecode of the SD1.5 checkpoint).
- ``IFTestLatentValues``: output node reporting a LATENT's values in its ui dict (so HTTP tests can compare
  results exactly, not through 8-bit images).
- ``IFTestPoseKeypoint``: IMAGE -> (IMAGE, POSE_KEYPOINT) of N standing people, left to right
  (stands in for comfyui_controlnet_aux's DWPreprocessor).
"""

import torch

_CATEGORY = "InstantFamily/testing"


class IFTestDecode:
    """A fixed, deterministic LATENT -> IMAGE map: a 4->3 channel mix, sigmoid(x / 100), 8x nearest upsampling."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = _CATEGORY

    def decode(self, samples):
        latent = samples["samples"].float()  # (B, 4, h, w)
        mix = torch.tensor([[0.8, -0.3, 0.2, 0.1], [0.1, 0.7, -0.2, 0.3], [-0.2, 0.2, 0.9, -0.1]])
        rgb = torch.einsum("oc,bchw->bohw", mix, latent[:, :4])  # (B, 3, h, w)
        rgb = torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest")  # (B, 3, 8h, 8w)
        return (torch.sigmoid(rgb / 100.0).permute(0, 2, 3, 1).contiguous(),)  # (B, 8h, 8w, 3)


class IFTestLatentValues:
    """Output node: the latent's shape and values (flattened, float) in the ui dict; keep latents tiny."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = _CATEGORY

    def report(self, samples):
        latent = samples["samples"].float()
        return {"ui": {"shape": list(latent.shape), "values": latent.flatten().tolist()}}


def standing_person(cx: float, top: float, height: float) -> list[float]:
    """COCO-18 body keypoints (x, y, c) * 18, normalised, of a person standing at x = cx."""
    u = height / 8.0  # head-to-toe in 8 units
    points = [
        (cx, top + 0.5 * u),
        (cx, top + 1.5 * u),  # nose, neck
        (cx - u, top + 1.5 * u),
        (cx - 1.3 * u, top + 3 * u),
        (cx - 1.4 * u, top + 4.3 * u),  # right arm
        (cx + u, top + 1.5 * u),
        (cx + 1.3 * u, top + 3 * u),
        (cx + 1.4 * u, top + 4.3 * u),  # left arm
        (cx - 0.5 * u, top + 4.3 * u),
        (cx - 0.6 * u, top + 6.2 * u),
        (cx - 0.6 * u, top + 8 * u),  # right leg
        (cx + 0.5 * u, top + 4.3 * u),
        (cx + 0.6 * u, top + 6.2 * u),
        (cx + 0.6 * u, top + 8 * u),  # left leg
        (cx - 0.2 * u, top + 0.3 * u),
        (cx + 0.2 * u, top + 0.3 * u),  # eyes
        (cx - 0.4 * u, top + 0.4 * u),
        (cx + 0.4 * u, top + 0.4 * u),  # ears
    ]
    return [v for x, y in points for v in (x, y, 1.0)]


class IFTestPoseKeypoint:
    """POSE_KEYPOINT of ``people`` standing figures spread evenly from left to right; the image passes through."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "people": ("INT", {"default": 2, "min": 1, "max": 16})}}

    RETURN_TYPES = ("IMAGE", "POSE_KEYPOINT")
    FUNCTION = "estimate"
    CATEGORY = _CATEGORY

    def estimate(self, image, people):
        height, width = int(image.shape[1]), int(image.shape[2])
        frame = {
            "people": [
                {
                    "pose_keypoints_2d": standing_person((k + 0.5) / people, 0.1, 0.8),
                    "face_keypoints_2d": None,
                    "hand_left_keypoints_2d": None,
                    "hand_right_keypoints_2d": None,
                }
                for k in range(people)
            ],
            "canvas_width": width,
            "canvas_height": height,
        }
        return (image, [frame])


NODE_CLASS_MAPPINGS = {
    "IFTestDecode": IFTestDecode,
    "IFTestLatentValues": IFTestLatentValues,
    "IFTestPoseKeypoint": IFTestPoseKeypoint,
}
