"""Speed settings of a training process: TF32, channels-last memory format, torch.compile.

Gradient checkpointing (``TrainOptions.gradient_checkpointing``) is the opposite trade and stays off
by default: at batch 8 and 512 px SD1.5 + ControlNet fit an 80 GB GPU without it.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def configure_tf32(enabled: bool, cuda: bool) -> None:
    """TF32 matmuls and cuDNN convolutions (CUDA only; the CPU has no TF32)."""
    if not cuda:
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once


def to_channels_last(*modules: torch.nn.Module) -> None:
    """Store every 4-D weight of ``modules`` as NHWC, in place."""
    for module in modules:
        module.to(memory_format=torch.channels_last)


def compile_modules(*modules: torch.nn.Module) -> None:
    """``torch.compile`` each module in place (parameter names and state dicts stay as they are)."""
    for module in modules:
        module.compile()
    logger.info("torch.compile: %d modules compile on their first forward", len(modules))
