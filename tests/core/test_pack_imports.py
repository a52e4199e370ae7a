"""The node pack never reaches the trainer, the tests or the development harness: every import in
nodes/ and instantfamily_core/ (module level or inside a function) is followed through the repo's own
modules, and none of them is train/, tests/ or instantfamily_dev/."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("train", "tests", "instantfamily_dev")


def _module_file(dotted: str) -> Path | None:
    path = ROOT.joinpath(*dotted.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _dotted(file: Path) -> str:
    parts = file.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(file: Path) -> set[str]:
    """Every module ``file`` imports, as repo-root dotted names (relative imports resolved)."""
    package = _dotted(file).split(".") if file.name == "__init__.py" else _dotted(file).split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def _reachable(starts: list[Path]) -> dict[str, str]:
    """module -> the module that imported it, for every repo module reachable from ``starts``."""
    seen = {_dotted(f): "" for f in starts}
    todo = list(starts)
    while todo:
        file = todo.pop()
        for name in _imports(file):
            target = _module_file(name)
            if target is not None and name not in seen:
                seen[name] = _dotted(file)
                todo.append(target)
    return seen


def test_the_node_pack_imports_neither_the_trainer_nor_the_tests():
    starts = sorted((ROOT / "nodes").glob("*.py")) + sorted((ROOT / "instantfamily_core").rglob("*.py"))
    reached = _reachable(starts)
    assert "toyworld.base_model" in reached  # the demo nodes' toy model: the walk does follow the pack's imports
    bad = {m: by for m, by in reached.items() if m.split(".")[0] in FORBIDDEN}
    assert not bad, f"the node pack reaches {bad} (module: imported by)"


def test_the_walk_sees_an_import_inside_a_function():
    sample = ROOT / "toyworld" / "build.py"  # imports train.export inside a function
    assert "train.export" in _imports(sample)
