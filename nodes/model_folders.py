"""Register the pack's model folders with ComfyUI's folder_paths (keeping extra_model_paths.yaml entries).

The real folders (models/instantfamily, models/insightface) and the built-in demo's toy files
(``toyworld/assets``) are registered by the one function below, under different folder names: the
toy checkpoint and the toy recognizer pack are listed by the demo's nodes only, never by the real
loaders.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("InstantFamily")

DEMO_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toyworld", "assets")
DEMO_INSTANTFAMILY = "instantfamily_toy_demo"  # the toy InstantFamily checkpoint (Load InstantFamily Model (toy demo))
DEMO_INSIGHTFACE = "insightface_toy_demo"  # the toy recognizer pack (Toy Faces (toy demo))

# folder name -> (default folder: a subfolder of models/ or an absolute path, extensions; empty = any file)
MODEL_FOLDERS = {
    "instantfamily": ("instantfamily", {".safetensors"}),
    "insightface": ("insightface", set()),
    DEMO_INSTANTFAMILY: (os.path.join(DEMO_ASSETS, "instantfamily"), {".safetensors"}),
    DEMO_INSIGHTFACE: (os.path.join(DEMO_ASSETS, "insightface"), set()),
}


def register_model_folders() -> None:
    """Add each folder of ``MODEL_FOLDERS`` unless the user already configured it."""
    import folder_paths

    for name, (subfolder, extensions) in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, subfolder)  # an absolute subfolder stays as it is
        existing = folder_paths.folder_names_and_paths.get(name)
        if existing is None:
            folder_paths.folder_names_and_paths[name] = ([default], set(extensions))
            continue
        paths, known_extensions = existing
        if default not in paths:
            paths.append(default)
        if extensions:
            folder_paths.folder_names_and_paths[name] = (paths, set(known_extensions) | set(extensions))
    log.debug("InstantFamily model folders: %s", {n: folder_paths.folder_names_and_paths[n][0] for n in MODEL_FOLDERS})
