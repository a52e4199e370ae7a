"""Register the pack's model folders with ComfyUI's folder_paths (keeping extra_model_paths.yaml entries)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("InstantFamily")

# folder name -> (subfolder of models/, extensions)
MODEL_FOLDERS = {
    "instantfamily": ("instantfamily", {".safetensors"}),
    "insightface": ("insightface", set()),
}


def register_model_folders() -> None:
    """Add models/instantfamily and models/insightface unless the user already configured them."""
    import folder_paths

    for name, (subfolder, extensions) in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, subfolder)
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
