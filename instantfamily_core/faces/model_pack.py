"""Find an insightface model pack on disk and explain exactly what is wrong when it is not usable.

Layout (what ComfyUI users have): ``<insightface root>/models/<pack>/*.onnx``, where the root is
ComfyUI's ``models/insightface``. This module never downloads anything: insightface is only
called once the folder has been checked here, so its download path is never reached.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache

# The files a known pack needs for this node pack (detector, recognizer); others are ignored.
KNOWN_PACKS = {
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
}
DEFAULT_PACKS = tuple(KNOWN_PACKS)


@dataclass(frozen=True)
class ModelPack:
    """A pack folder that holds at least one .onnx file."""

    name: str
    directory: str  # absolute path of <root>/models/<pack>
    onnx_files: tuple[str, ...]  # absolute paths, sorted


def expected_layout(root: str, pack: str) -> str:
    """Human-readable description of the files expected for ``pack`` under ``root``."""
    folder = os.path.join(root, "models", pack)
    files = KNOWN_PACKS.get(pack, ("<an SCRFD detector>.onnx", "<an ArcFace recognizer>.onnx"))
    lines = "\n".join(f"  {os.path.join(folder, name)}" for name in files)
    return (
        f"expected layout:\n{lines}\n"
        "(any folder holding one SCRFD face detector and one ArcFace-style recognizer ONNX works; "
        "other .onnx files of the pack may stay; nothing is downloaded automatically)"
    )


def _onnx_in(folder: str) -> list[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(
        os.path.join(folder, n)
        for n in names
        if n.lower().endswith(".onnx") and os.path.isfile(os.path.join(folder, n))
    )


def _subfolders(folder: str) -> list[str]:
    try:
        return sorted(e.path for e in os.scandir(folder) if e.is_dir())
    except OSError:
        return []


def _nested_onnx(folder: str) -> list[str]:
    """.onnx files one or two folder levels below ``folder`` (an archive extracted into a subfolder)."""
    found = []
    for sub in _subfolders(folder):
        found += _onnx_in(sub)
        for subsub in _subfolders(sub):
            found += _onnx_in(subsub)
    return found


def list_model_packs(roots: list[str]) -> list[str]:
    """Pack names found under ``<root>/models/`` of each root, plus the default pack names."""
    names = set(DEFAULT_PACKS)
    for root in roots:
        models = os.path.join(root, "models")
        if os.path.isdir(models):
            names.update(n for n in os.listdir(models) if os.path.isdir(os.path.join(models, n)))
    return sorted(names)


def find_model_pack(roots: list[str] | str, pack: str) -> ModelPack:
    """The usable pack folder ``<root>/models/<pack>`` of the first root that has one.

    Raises FileNotFoundError (missing), ValueError (empty or nested folder), each naming the
    exact folder(s) and the expected layout.
    """
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    if not roots:
        raise ValueError("no insightface model root was given (ComfyUI's models/insightface)")
    if not pack or os.sep in pack or pack in (".", ".."):
        raise ValueError(f"face model pack name {pack!r} is not a folder name (e.g. 'antelopev2')")
    roots = [os.path.abspath(os.path.expanduser(str(r))) for r in roots]
    problems = []
    for root in roots:
        folder = os.path.join(root, "models", pack)
        if not os.path.isdir(folder):
            continue
        files = _onnx_in(folder)
        if files:
            return ModelPack(pack, folder, tuple(files))
        nested = _nested_onnx(folder)
        if nested:
            where = sorted({os.path.dirname(f) for f in nested})
            problems.append(
                f"the face model pack folder {folder} has its .onnx files in a nested folder "
                f"({', '.join(where)}): the archive was extracted into a subfolder. Move the .onnx files up "
                f"into {folder}"
            )
            continue
        archives = [n for n in os.listdir(folder) if n.lower().endswith(".zip")]
        hint = f" (found {archives}: extract it there)" if archives else ""
        problems.append(f"the face model pack folder {folder} holds no .onnx files{hint}")
    if problems:
        raise ValueError("; ".join(problems) + ".\n" + expected_layout(roots[0], pack))
    looked = ", ".join(os.path.join(r, "models", pack) for r in roots)
    misplaced = [os.path.join(r, pack) for r in roots if _onnx_in(os.path.join(r, pack))]
    hint = (
        f" Found .onnx files in {misplaced[0]}: insightface expects an extra 'models' level, move that "
        f"folder to {os.path.join(os.path.dirname(misplaced[0]), 'models', pack)}."
        if misplaced
        else ""
    )
    raise FileNotFoundError(
        f"face model pack {pack!r} not found; looked in: {looked}.{hint}\n{expected_layout(roots[0], pack)}"
    )


@lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """sha256 of a file, cached by (path, size, mtime)."""
    stat = os.stat(path)
    return _sha256_cached(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
