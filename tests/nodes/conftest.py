"""Node tests run against a REAL ComfyUI: see instantfamily_dev/comfy_host.py for how the host is chosen.

At import, ComfyUI's root goes first on sys.path and CPU mode is forced, so test modules may
``import comfy.…`` at module level. The host itself (nodes, executor, both packs loaded through
ComfyUI's loader) starts once per process in the ``comfy_host`` session fixture.
"""

import pytest

from instantfamily_dev import comfy_host as _host

_host.put_host_on_path()


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory):
    """The started ComfyUI host (``comfy_host.ComfyHost``)."""
    return _host.start_host(tmp_path_factory.mktemp("comfyui"))


@pytest.fixture(scope="session")
def host_tiny_pack(comfy_host):
    """Folder of the tiny insightface pack (``face_fixtures.TINY_PACK``) in this session's
    models/insightface/models/, where Load Face Analyzer lists it."""
    from instantfamily_dev.face_fixtures import TINY_PACK, build_tiny_pack

    folder = build_tiny_pack(str(comfy_host.models_dir / "insightface"), TINY_PACK)
    comfy_host.folder_paths.filename_list_cache.clear()
    return folder


@pytest.fixture(scope="session")
def comfy_models_dir(comfy_host):
    """This session's ComfyUI ``models`` dir (instantfamily/, insightface/models/, controlnet/ …)."""
    return comfy_host.models_dir


def pytest_report_header(config):
    root, label = _host.comfyui_root()
    return f"ComfyUI host: {label or 'COMFYUI_PATH'} at {root}"


class PackModules:
    """``pack.masks`` is the pack's ``instantfamily_core.masks`` as ComfyUI loaded it (so objects
    compare with what the nodes make); ``pack.engine`` is ``nodes.engine``, and so on."""

    def __init__(self, host):
        self._host = host

    def __getattr__(self, name):
        for package in ("instantfamily_core", "nodes"):
            try:
                return self._host.pack_import(f"{package}.{name}")
            except ModuleNotFoundError:
                continue
        raise AttributeError(f"the pack has no module instantfamily_core.{name} or nodes.{name}")


@pytest.fixture(scope="session")
def pack(comfy_host):
    return PackModules(comfy_host)
