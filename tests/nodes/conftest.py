"""Node tests run against a REAL ComfyUI: see comfy_host.py for how the host is chosen.

At import, ComfyUI's root goes first on sys.path and CPU mode is forced, so test modules may
``import comfy.…`` at module level. The host itself (nodes, executor, both packs loaded through
ComfyUI's loader) starts once per process in the ``comfy_host`` session fixture.
"""
import pytest

import comfy_host as _host

_host.put_host_on_path()


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory):
    """The started ComfyUI host (``comfy_host.ComfyHost``)."""
    return _host.start_host(tmp_path_factory.mktemp("comfyui"))


@pytest.fixture(scope="session")
def comfy_models_dir(comfy_host):
    """This session's ComfyUI ``models`` dir (instantfamily/, insightface/models/, controlnet/ …)."""
    return comfy_host.models_dir


def pytest_report_header(config):
    root, label = _host.comfyui_root()
    return f"ComfyUI host: {label or 'COMFYUI_PATH'} at {root}"
