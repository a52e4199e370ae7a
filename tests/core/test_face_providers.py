"""Execution-provider choice, thread-spinning setting and the onnxruntime-gpu trap."""

import logging

import pytest

from instantfamily_core.faces.providers import (
    choose_providers,
    gpu_onnxruntime_trap,
    session_options,
    spinning_disabled,
)

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_auto_prefers_gpu_and_keeps_cpu_fallback():
    assert choose_providers("auto", ALL, cuda_visible=True) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert (
        choose_providers("auto", ["CoreMLExecutionProvider", "CPUExecutionProvider"], False)[0]
        == "CoreMLExecutionProvider"
    )
    assert choose_providers("ROCm", ["ROCMExecutionProvider", "CPUExecutionProvider"], False) == [
        "ROCMExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers("CPU", ALL, True) == ["CPUExecutionProvider"]


def test_unavailable_choice_names_what_is_available():
    with pytest.raises(RuntimeError, match=r"'CoreML' is not offered.*CPUExecutionProvider.*choose 'auto'"):
        choose_providers("CoreML", ["CPUExecutionProvider"], cuda_visible=False)
    with pytest.raises(ValueError, match="must be one of"):
        choose_providers("TPU", ["CPUExecutionProvider"], False)


def test_gpu_trap_detected_with_repair_instructions(caplog):
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    message = gpu_onnxruntime_trap(cpu_only, cuda_visible=True)
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in message and "pip install onnxruntime-gpu" in message
    assert gpu_onnxruntime_trap(cpu_only, cuda_visible=False) is None
    assert gpu_onnxruntime_trap(ALL, cuda_visible=True) is None
    with caplog.at_level(logging.WARNING):
        assert choose_providers("auto", cpu_only, cuda_visible=True) == ["CPUExecutionProvider"]
    assert "onnxruntime-gpu" in caplog.text
    with pytest.raises(RuntimeError, match="'CUDA' was chosen but torch sees a CUDA GPU"):
        choose_providers("CUDA", cpu_only, cuda_visible=True)


def test_session_options_turn_spinning_off(tiny_analyzer):
    options = session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert spinning_disabled(tiny_analyzer.recognizer.session)
    assert spinning_disabled(tiny_analyzer.detector.session)
