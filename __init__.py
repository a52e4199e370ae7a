"""InstantFamily for ComfyUI: zero-shot multi-identity generation with masked cross-attention.

ComfyUI imports this file. Each node module is imported on its own so that one missing optional
dependency disables only its nodes, with one log line saying what to install. Nothing is
downloaded or installed at import time.
"""

import importlib
import logging

log = logging.getLogger("InstantFamily")

_NODE_MODULES = ("engine", "faces", "face_mask", "controlnet", "evaluation", "demo")

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}


def _load_nodes() -> None:
    try:
        from .nodes.model_folders import register_model_folders

        register_model_folders()
    except ImportError as error:  # imported outside ComfyUI (e.g. by pytest collecting the repo)
        log.debug("InstantFamily: not inside ComfyUI (%s)", error)
        return
    failed = []
    for name in _NODE_MODULES:
        try:
            module = importlib.import_module(f".nodes.{name}", __name__)
        except ModuleNotFoundError as error:  # an optional dependency of that node group is missing
            failed.append(f"{name} ({error}; pip install -r requirements.txt)")
            continue
        except Exception as error:  # keep the rest of the pack usable
            failed.append(f"{name} ({type(error).__name__}: {error})")
            continue
        NODE_CLASS_MAPPINGS.update(module.NODE_CLASS_MAPPINGS)
        NODE_DISPLAY_NAME_MAPPINGS.update(module.NODE_DISPLAY_NAME_MAPPINGS)
    if failed:
        log.warning("InstantFamily: some nodes are unavailable: %s", "; ".join(failed))


_load_nodes()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
