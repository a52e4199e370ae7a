"""Project metadata: requirements.txt and pyproject.toml agree; the Comfy Registry fields exist."""

from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _normalised(lines):
    out = []
    for line in lines:
        req = Requirement(line)
        out.append((req.name.lower().replace("_", "-"), str(req.specifier), str(req.marker or "")))
    return sorted(out)


def _requirements_txt(path):
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def test_pyproject_dependencies_equal_requirements_txt():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    from_toml = _normalised(pyproject["project"]["dependencies"])
    from_txt = _normalised(_requirements_txt(ROOT / "requirements.txt"))
    assert from_toml == from_txt


def test_onnxruntime_markers_pick_exactly_one_build():
    reqs = [Requirement(r) for r in _requirements_txt(ROOT / "requirements.txt")]
    ort = [r for r in reqs if r.name.startswith("onnxruntime")]
    assert {r.name for r in ort} == {"onnxruntime", "onnxruntime-gpu"}
    platforms = [
        ("linux", "x86_64", "onnxruntime-gpu"),
        ("win32", "AMD64", "onnxruntime-gpu"),
        ("linux", "aarch64", "onnxruntime"),
        ("darwin", "arm64", "onnxruntime"),
    ]
    for sys_platform, machine, expected in platforms:
        env = {"sys_platform": sys_platform, "platform_machine": machine}
        chosen = [r.name for r in ort if r.marker.evaluate(env)]
        assert chosen == [expected], (sys_platform, machine, chosen)


def test_registry_metadata():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = pyproject["project"], pyproject["tool"]["comfy"]
    assert project["name"] == "comfyui-instantfamily"
    assert (ROOT / project["license"]["file"]).is_file()
    assert comfy["PublisherId"] == "instantfamily" and comfy["DisplayName"] == "InstantFamily"
    markers = pyproject["tool"]["pytest"]["ini_options"]["markers"]
    assert {m.split(":", 1)[0] for m in markers} == {"gpu", "slow"}
