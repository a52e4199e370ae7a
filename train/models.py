"""Base SD1.5 parts, loaded offline: a diffusers folder, a single-file checkpoint, or random init.

Configs come from ``train/configs/<name>/`` (shipped with the pack: ``sd15`` for the real model,
``tiny`` for tests and CPU smoke runs). Nothing here ever reaches the Hugging Face Hub.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
SINGLE_FILE_UNET_PREFIX = "model.diffusion_model."
SINGLE_FILE_CLIP_PREFIXES = ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")


@dataclass
class BaseModels:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    noise_scheduler: object


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


def _text_encoder_from_single_file(path: Path, config: Path):
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config), local_files_only=True))
    # transformers 4 names the weights text_model.*, transformers 5 without that level
    inner = "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""
    state = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            for prefix in SINGLE_FILE_CLIP_PREFIXES:
                if key.startswith(prefix):
                    state[inner + key[len(prefix) :]] = f.get_tensor(key)
                    break
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: text encoder keys do not match SD1.5's CLIP (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def load_base(pretrained: str, model_config: str = "sd15", tokenizer: str = "", seed: int = 0) -> BaseModels:
    """Load UNet, VAE, CLIP text encoder, tokenizer and the DDPM noise schedule.

    pretrained: a diffusers SD1.5 folder, a single-file ``.safetensors`` (ComfyUI's checkpoints), or
    "" for a random initialisation from the configs (tests, benchmarks; never for real training).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = config_dir(model_config)
    scheduler = DDPMScheduler.from_pretrained(str(configs / "scheduler"), local_files_only=True)
    tokenizer_path = Path(tokenizer) if tokenizer else None
    if not pretrained:
        logger.warning(
            "no --pretrained weights: random initialisation from %s (only for tests and benchmarks)", configs
        )
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(configs / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(configs / "vae")))
        text_encoder = CLIPTextModel(
            CLIPTextConfig.from_pretrained(str(configs / "text_encoder"), local_files_only=True)
        )
        tokenizer_path = tokenizer_path or configs / "tokenizer"
    elif Path(pretrained).is_dir():
        root = Path(pretrained)
        unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(str(root), subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(str(root), subfolder="text_encoder", local_files_only=True)
        tokenizer_path = tokenizer_path or root / "tokenizer"
    elif Path(pretrained).is_file() and pretrained.endswith(".safetensors"):
        kwargs = {"config": str(configs), "local_files_only": True}
        unet = UNet2DConditionModel.from_single_file(pretrained, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_single_file(pretrained, subfolder="vae", **kwargs)
        text_encoder = _text_encoder_from_single_file(Path(pretrained), configs / "text_encoder")
        tokenizer_path = tokenizer_path or configs / "tokenizer"
    else:
        raise ValueError(f"--pretrained {pretrained!r}: expected a diffusers folder or a .safetensors SD1.5 checkpoint")
    return BaseModels(unet, vae, text_encoder, _tokenizer(tokenizer_path), scheduler)


def build_controlnet(unet: torch.nn.Module, controlnet_weights: str = ""):
    """ControlNet initialised from the UNet (paper §4.3), or from an existing SD1.5 ControlNet.

    controlnet_weights: "" (a copy of the UNet's encoder); a single-file ``.safetensors`` such as
    ``control_v11p_sd15_openpose`` from ComfyUI's ``models/controlnet`` (ldm names, with or without
    ``control_model.``, or diffusers names); or a diffusers ControlNet folder (safetensors weights).
    The weights must fit a ControlNet of ``unet``'s shape; pickles (``.pth``, ``.bin``) are refused.
    """
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3)
    if not controlnet_weights:
        return controlnet
    files = controlnet_files(controlnet_weights)
    from safetensors.torch import load_file

    state = {}
    for file in files:
        state.update(load_file(str(file)))
    from instantfamily_core.ldm_convert import controlnet_from_any

    try:
        state = controlnet_from_any(state, controlnet.config, f"--controlnet {controlnet_weights}")
    except ValueError as error:
        raise ValueError(f"{error}; pass an SD1.5 ControlNet (e.g. control_v11p_sd15_openpose.safetensors)") from None
    load_matching(controlnet, state, f"--controlnet {controlnet_weights}")
    logger.info("ControlNet initialised from %s (%d tensors)", controlnet_weights, len(state))
    return controlnet


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


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
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
            f"{unexpected[:3]}, shapes {wrong[:3]}): is it a ControlNet for SD1.5 (not SDXL)?"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


@torch.no_grad()
def encode_text(text_encoder, tokenizer, captions: list[str], device) -> torch.Tensor:
    """(B, 77, d) last hidden states of the CLIP text encoder (SD1.5 conditioning)."""
    length = text_encoder.config.max_position_embeddings  # 77 (ComfyUI's tokenizer config says 8192)
    ids = tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(device))[0]
