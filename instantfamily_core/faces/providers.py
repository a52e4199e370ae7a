"""onnxruntime execution-provider choice and session options for face analysis.

Only providers that ``onnxruntime.get_available_providers()`` reports are ever requested. CPU
sessions get intra-op thread spinning turned off: on small machines a spinning pool made one
photo's detection+recognition several times slower (DESIGN §2).
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

# User-facing choice -> onnxruntime provider names, best first.
PROVIDER_CHOICES = {
    "CPU": ("CPUExecutionProvider",),
    "CUDA": ("CUDAExecutionProvider",),
    "ROCm": ("ROCMExecutionProvider", "MIGraphXExecutionProvider"),
    "CoreML": ("CoreMLExecutionProvider",),
}
AUTO_ORDER = ("CUDA", "ROCm", "CoreML", "CPU")
CHOICES = ("auto",) + tuple(PROVIDER_CHOICES)

REPAIR_GPU_ONNXRUNTIME = (
    "both 'onnxruntime' (CPU build) and 'onnxruntime-gpu' share one package folder and the CPU "
    "build won. Repair, in ComfyUI's Python environment: "
    "'pip uninstall -y onnxruntime onnxruntime-gpu' then 'pip install onnxruntime-gpu' "
    "(install insightface first, onnxruntime-gpu last)"
)


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def torch_sees_cuda() -> bool:
    """True when an already imported torch can use an NVIDIA GPU (torch is not imported for this)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_available()) and getattr(torch.version, "hip", None) is None
    except Exception:  # torch missing or broken: no evidence of a GPU
        return False


def gpu_onnxruntime_trap(available: list[str] | None = None, cuda_visible: bool | None = None) -> str | None:
    """The repair message when torch sees CUDA but onnxruntime offers no CUDA provider, else None."""
    available = available_providers() if available is None else available
    cuda_visible = torch_sees_cuda() if cuda_visible is None else cuda_visible
    if cuda_visible and "CUDAExecutionProvider" not in available:
        return (
            f"torch sees a CUDA GPU but onnxruntime only offers {available}, so face analysis would run "
            f"on the CPU: {REPAIR_GPU_ONNXRUNTIME}"
        )
    return None


def choose_providers(
    choice: str = "auto", available: list[str] | None = None, cuda_visible: bool | None = None
) -> list[str]:
    """Provider list for onnxruntime (always ending with the CPU provider when it exists).

    ``choice`` is one of CHOICES. An explicit choice the platform does not offer raises
    RuntimeError naming what is available; ``auto`` takes the best available one.
    """
    available = available_providers() if available is None else list(available)
    if choice not in CHOICES:
        raise ValueError(f"face analyzer provider must be one of {list(CHOICES)}, got {choice!r}")
    trap = gpu_onnxruntime_trap(available, cuda_visible)
    if trap and choice in ("auto", "CUDA"):
        if choice == "CUDA":
            raise RuntimeError(f"provider 'CUDA' was chosen but {trap}")
        logger.warning("InstantFamily face analyzer: %s", trap)
    order = AUTO_ORDER if choice == "auto" else (choice,)
    for name in order:
        for provider in PROVIDER_CHOICES[name]:
            if provider in available:
                chosen = [provider]
                if provider != "CPUExecutionProvider" and "CPUExecutionProvider" in available:
                    chosen.append("CPUExecutionProvider")
                return chosen
    if choice == "auto" and available:
        return [available[0]]
    raise RuntimeError(
        f"face analyzer provider {choice!r} is not offered by this onnxruntime (available: {available}); "
        "choose 'auto' or install the onnxruntime build for that device"
    )


def session_options():
    """onnxruntime SessionOptions with thread spinning off (harmless for GPU providers)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def spinning_disabled(session) -> bool:
    """Whether an existing InferenceSession was built with our spinning setting."""
    try:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    except (RuntimeError, AttributeError):
        return False
