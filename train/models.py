"""Base SD1.5 / SDXL parts, loaded offline: a diffusers folder, a single-file checkpoint, or random init.

Configs come from ``train/configs/<name>/`` (shipped with the pack: ``sd15`` and ``sdxl`` for the
real models, ``tiny`` and ``tiny_sdxl`` for tests and CPU smoke runs). The family is the UNet
config's (SDXL: ``addition_embed_type="text_time"``, two text encoders, a pooled embedding).
Nothing here ever reaches the Hugging Face Hub.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from instantfamily_core.ldm_convert import base_model_family

logger = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
SINGLE_FILE_UNET_PREFIX = "model.diffusion_model."
SINGLE_FILE_CLIP_PREFIXES = ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")
# SDXL single files (ComfyUI's and Stability's): CLIP-L in transformers naming, OpenCLIP bigG in its own
SDXL_CLIP_L_PREFIXES = ("conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.0.transformer.")
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."


@dataclass
class BaseModels:
    """The frozen base model; SDXL has a second text encoder and tokenizer (None for SD1.5)."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    noise_scheduler: object
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_2: object | None = None

    @property
    def family(self) -> str:
        """ "SD1.5" or "SDXL", from the UNet's config."""
        return base_model_family(self.unet.config)

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]

    @property
    def tokenizers(self) -> list:
        return [t for t in (self.tokenizer, self.tokenizer_2) if t is not None]


@dataclass
class TextConditioning:
    """context (B, 77, d_K); pooled (B, 1280) for SDXL (text_encoder_2's projected embedding), else None."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None


def config_dir(name: str) -> Path:
    """A shipped config set (``sd15``, ``tiny``) or a folder with unet/ vae/ text_encoder/ scheduler/ configs."""
    path = CONFIG_ROOT / name if (CONFIG_ROOT / name).is_dir() else Path(name)
    if not (path / "unet" / "config.json").is_file():
        shipped = sorted(p.name for p in CONFIG_ROOT.iterdir() if p.is_dir())
        raise ValueError(
            f"model config {name!r}: no unet/config.json there; use one of {shipped} or a diffusers folder"
        )
    return path


def _tokenizer(path: Path):
    from transformers import CLIPTokenizer

    if not ((path / "vocab.json").is_file() or (path / "tokenizer.json").is_file()):
        raise ValueError(
            f"no CLIP tokenizer (vocab.json + merges.txt, or tokenizer.json) in {path}; pass --tokenizer pointing to the 'tokenizer' "
            "folder of a diffusers SD1.5 copy or to ComfyUI's comfy/sd1_tokenizer folder"
        )
    return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)


def family_of_config(configs: Path) -> str:
    """The family ("SD1.5" / "SDXL") of a config set, from its UNet config."""
    from diffusers import UNet2DConditionModel

    return base_model_family(UNet2DConditionModel.load_config(str(configs / "unet")))


def family_of_single_file(path: Path) -> str:
    """The family of a single-file checkpoint, from its keys (SDXL's second text encoder, size embedding)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    if any(k.startswith(SDXL_CLIP_G_PREFIX) or k.startswith(SINGLE_FILE_UNET_PREFIX + "label_emb.") for k in keys):
        return "SDXL"
    return "SD1.5"


def _text_encoder_from_single_file(path: Path, config: Path, prefixes: Sequence[str] = SINGLE_FILE_CLIP_PREFIXES):
    """The CLIP text encoder whose weights are under one of ``prefixes`` (transformers naming)."""
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config), local_files_only=True))
    # transformers 4 names the weights text_model.*, transformers 5 without that level
    inner = "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""
    state = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            for prefix in prefixes:
                if key.startswith(prefix):
                    state[inner + key[len(prefix) :]] = f.get_tensor(key)
                    break
    _load_text_encoder(model, state, path, "CLIP")
    return model


def _open_clip_text_encoder_from_single_file(path: Path, config: Path):
    """SDXL's second text encoder (OpenCLIP naming in single files) as ``CLIPTextModelWithProjection``."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(config), local_files_only=True))
    with safe_open(str(path), framework="pt") as f:
        weights = {k: f.get_tensor(k) for k in f.keys() if k.startswith(SDXL_CLIP_G_PREFIX)}
    _load_text_encoder(model, convert_open_clip_checkpoint(model, weights, prefix=SDXL_CLIP_G_PREFIX), path, "OpenCLIP")
    return model


def _load_text_encoder(model: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: text encoder keys do not match the config's {what} text encoder "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def load_base(pretrained: str, model_config: str = "sd15", tokenizer: str = "", seed: int = 0) -> BaseModels:
    """Load UNet, VAE, CLIP text encoder(s), tokenizer(s) and the DDPM noise schedule.

    pretrained: a diffusers SD1.5 / SDXL folder, a single-file ``.safetensors`` (ComfyUI's
    checkpoints), or "" for a random initialisation from the configs (tests, benchmarks; never for
    real training). ``model_config`` names the family (``sd15``/``tiny`` or ``sdxl``/``tiny_sdxl``);
    weights of the other family are refused. SDXL's second tokenizer is ``tokenizer_2`` beside the
    first, or else the first padded with token 0 (CLIP-L and bigG share the vocabulary).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    configs = config_dir(model_config)
    family = family_of_config(configs)
    scheduler = DDPMScheduler.from_pretrained(str(configs / "scheduler"), local_files_only=True)
    tokenizer_path = Path(tokenizer) if tokenizer else None
    if not pretrained:
        logger.warning(
            "no --pretrained weights: random initialisation from %s (only for tests and benchmarks)", configs
        )
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(configs / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(configs / "vae")))
        encoders = _random_text_encoders(configs, family)
        tokenizer_path = tokenizer_path or configs / "tokenizer"
    elif Path(pretrained).is_dir():
        root = Path(pretrained)
        found = family_of_config(root)
        if found != family:
            raise ValueError(_wrong_family(pretrained, found, model_config, family))
        unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(str(root), subfolder="vae", local_files_only=True)
        encoders = _pretrained_text_encoders(root, family)
        tokenizer_path = tokenizer_path or root / "tokenizer"
    elif Path(pretrained).is_file() and pretrained.endswith(".safetensors"):
        found = family_of_single_file(Path(pretrained))
        if found != family:
            raise ValueError(_wrong_family(pretrained, found, model_config, family))
        kwargs = {"config": str(configs), "local_files_only": True}
        unet = UNet2DConditionModel.from_single_file(pretrained, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_single_file(pretrained, subfolder="vae", **kwargs)
        if family == "SDXL":
            encoders = [
                _text_encoder_from_single_file(Path(pretrained), configs / "text_encoder", SDXL_CLIP_L_PREFIXES),
                _open_clip_text_encoder_from_single_file(Path(pretrained), configs / "text_encoder_2"),
            ]
        else:
            encoders = [_text_encoder_from_single_file(Path(pretrained), configs / "text_encoder")]
        tokenizer_path = tokenizer_path or configs / "tokenizer"
    else:
        raise ValueError(
            f"--pretrained {pretrained!r}: expected a diffusers folder or a .safetensors {family} checkpoint"
        )
    tokenizers = [_tokenizer(tokenizer_path)]
    if family == "SDXL":
        second = tokenizer_path.parent / "tokenizer_2"
        tokenizers.append(_tokenizer(second) if second.is_dir() else _zero_padded(tokenizers[0]))
    base = BaseModels(unet, vae, encoders[0], tokenizers[0], scheduler)
    if family == "SDXL":
        base.text_encoder_2, base.tokenizer_2 = encoders[1], tokenizers[1]
    return base


def _zero_padded(tokenizer):
    """SDXL's second tokenizer made from the first: the same vocabulary, padded with token 0 ("!" in
    CLIP's), as SDXL's own tokenizer_2 and ComfyUI's clip_g tokenizer pad (the first pads with the end token)."""
    import copy

    second = copy.deepcopy(tokenizer)
    second.pad_token = second.convert_ids_to_tokens(0)
    return second


def _wrong_family(pretrained: str, found: str, model_config: str, family: str) -> str:
    return (
        f"--pretrained {pretrained}: a {found} model, but --model-config {model_config} is {family}; "
        f"pass --model-config {'sdxl' if found == 'SDXL' else 'sd15'} (or a {family} model)"
    )


def _random_text_encoders(configs: Path, family: str) -> list[torch.nn.Module]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(str(configs / "text_encoder"), local_files_only=True))]
    if family == "SDXL":
        config = CLIPTextConfig.from_pretrained(str(configs / "text_encoder_2"), local_files_only=True)
        encoders.append(CLIPTextModelWithProjection(config))
    return encoders


def _pretrained_text_encoders(root: Path, family: str) -> list[torch.nn.Module]:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    encoders = [CLIPTextModel.from_pretrained(str(root), subfolder="text_encoder", local_files_only=True)]
    if family == "SDXL":
        encoders.append(
            CLIPTextModelWithProjection.from_pretrained(str(root), subfolder="text_encoder_2", local_files_only=True)
        )
    return encoders


def build_controlnet(unet: torch.nn.Module, controlnet_weights: str = ""):
    """ControlNet initialised from the UNet (paper §4.3), or from an existing ControlNet of its family.

    controlnet_weights: "" (a copy of the UNet's encoder); a single-file ``.safetensors`` such as
    ``control_v11p_sd15_openpose`` (SD1.5) or an SDXL OpenPose ControlNet from ComfyUI's
    ``models/controlnet`` (ldm names, with or without ``control_model.``, or diffusers names); or a
    diffusers ControlNet folder (safetensors weights). The weights must fit a ControlNet of
    ``unet``'s shape (SDXL's includes the size embedding); pickles (``.pth``, ``.bin``) are refused.
    """
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3)
    if not controlnet_weights:
        return controlnet
    family = base_model_family(unet.config)
    files = controlnet_files(controlnet_weights)
    from safetensors.torch import load_file

    state = {}
    for file in files:
        state.update(load_file(str(file)))
    from instantfamily_core.ldm_convert import controlnet_from_any

    try:
        state = controlnet_from_any(state, controlnet.config, f"--controlnet {controlnet_weights}")
    except ValueError as error:
        raise ValueError(
            f"--controlnet {controlnet_weights} does not fit the base model ({family}): {error}; "
            f"pass {_CONTROLNET_EXAMPLE[family]}"
        ) from None
    load_matching(controlnet, state, f"--controlnet {controlnet_weights}", family)
    logger.info("ControlNet initialised from %s (%d tensors)", controlnet_weights, len(state))
    return controlnet


_CONTROLNET_EXAMPLE = {
    "SD1.5": "an SD1.5 ControlNet (e.g. control_v11p_sd15_openpose.safetensors)",
    "SDXL": "an SDXL ControlNet (e.g. an OpenPose ControlNet for SDXL, diffusion_pytorch_model.safetensors)",
}


def controlnet_files(controlnet_weights: str) -> list[Path]:
    """The safetensors file(s) of a ControlNet file or diffusers folder; a clear error for anything else."""
    path = Path(controlnet_weights)
    if path.is_dir():
        files = sorted(path.glob("diffusion_pytorch_model*.safetensors")) or sorted(path.glob("*.safetensors"))
        if not files:
            raise ValueError(
                f"--controlnet {controlnet_weights}: no .safetensors weights in this folder (pickled .bin "
                "weights are not loaded); save the ControlNet with safe_serialization=True"
            )
        return files
    if path.is_file() and path.suffix == ".safetensors":
        return [path]
    if path.is_file():
        raise ValueError(
            f"--controlnet {controlnet_weights}: only .safetensors files are loaded (no pickles); use "
            "the .safetensors release of this ControlNet (e.g. from comfyanonymous/"
            "ControlNet-v1-1_fp16_safetensors)"
        )
    raise ValueError(f"--controlnet {controlnet_weights}: no such file or folder")


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, family: str = "SD1.5") -> None:
    """Load ``state`` into ``model`` (float32), naming the first keys or shapes that do not fit."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{what} does not fit the base model's shape (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, shapes {wrong[:3]}): the base model is {family}; pass {_CONTROLNET_EXAMPLE[family]}"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _hidden_states(text_encoder, tokenizer, captions: list[str], device, penultimate: bool):
    """(hidden (B, 77, d), pooled projection (B, p) or None) of one CLIP text encoder."""
    length = text_encoder.config.max_position_embeddings  # 77 (ComfyUI's tokenizer config says 8192)
    ids = tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    if not penultimate:
        return text_encoder(ids.to(device))[0], None
    output = text_encoder(ids.to(device), output_hidden_states=True)
    return output.hidden_states[-2], getattr(output, "text_embeds", None)


@torch.no_grad()
def encode_text(text_encoder, tokenizer, captions: list[str], device) -> torch.Tensor:
    """(B, 77, d) last hidden states of the CLIP text encoder (SD1.5 conditioning)."""
    return _hidden_states(text_encoder, tokenizer, captions, device, penultimate=False)[0]


@torch.no_grad()
def encode_prompts(text_encoders: Sequence, tokenizers: Sequence, captions: list[str], device) -> TextConditioning:
    """The UNet's text conditioning for either family (``BaseModels.text_encoders`` / ``.tokenizers``).

    SD1.5 (one encoder): the last hidden states. SDXL (two): the penultimate hidden states of both
    encoders concatenated (B, 77, d1 + d2; 768 + 1280 = 2048), and text_encoder_2's pooled
    projection (B, 1280), as SDXL and ComfyUI's SDXL CLIP condition the UNet.
    """
    if len(text_encoders) == 1:
        return TextConditioning(encode_text(text_encoders[0], tokenizers[0], captions, device))
    outputs = [_hidden_states(e, t, captions, device, penultimate=True) for e, t in zip(text_encoders, tokenizers)]
    return TextConditioning(torch.cat([hidden for hidden, _ in outputs], dim=-1), outputs[-1][1])
