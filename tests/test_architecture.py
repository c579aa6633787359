"""The layering rules of ARCHITECTURE.md, read from the source: imports, private names and sizes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {"engine", "methods", "targets", "layers", "metrics", "render", "labels", "colorbar", "detections", "imaging",
        "boxes", "perturbation", "runs", "validation", "fusion", "drise", "integrated", "regions"}
#: what the core may not reach: model families' adapters, the zoo, workflows and front ends
OUTER = ("adapters", "zoo", "auditing", "audit", "bench", "cli", "commands", "explanation", "pipeline", "demo")
FAMILIES = ("ultralytics", "segmentation_models_pytorch", "onnx2torch", "torchvision.models")
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 500


def _sources() -> list[Path]:
    return sorted(list((ROOT / "dsxai").rglob("*.py")) + list((ROOT / "adapters").rglob("*.py")))


def _package(path: Path) -> list[str]:
    if path.is_relative_to(ROOT / "dsxai"):
        return ["dsxai", *path.relative_to(ROOT / "dsxai").parts[:-1]]
    return ["dsxai", "adapters", *path.relative_to(ROOT / "adapters").parts[:-1]]


def _imports(path: Path, package: list[str] | None = None) -> list[tuple[int, str, list[str]]]:
    """``(line, absolute module, imported names)`` of every import in the file, nested ones included."""
    tree = ast.parse(path.read_text())
    package = package if package is not None else _package(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_core_imports_no_adapter_zoo_workflow_or_front_end():
    bad = []
    for path in (ROOT / "dsxai").glob("*.py"):
        if path.stem not in CORE:
            continue
        for line, module, names in _imports(path):
            parts = module.split(".")
            targets = [parts[1]] if len(parts) > 1 and parts[0] == "dsxai" else []
            if parts == ["dsxai"]:
                targets = names
            bad += [f"{_rel(path)}:{line} imports dsxai.{t}" for t in targets if t in OUTER]
    assert not bad, "\n".join(bad)


def test_only_adapters_import_model_families():
    bad = []
    for path in (ROOT / "dsxai").rglob("*.py"):
        for line, module, _ in _imports(path):
            if any(module == f or module.startswith(f + ".") for f in FAMILIES):
                bad.append(f"{_rel(path)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for path in _sources():
        for line, module, names in _imports(path):
            if module.startswith("dsxai"):
                bad += [f"{_rel(path)}:{line} imports {module}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("limit", [MAX_FUNCTION_LINES])
def test_functions_are_short(limit):
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= limit:
                long.append(f"{_rel(path)}:{node.lineno} {node.name} is {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)


def test_files_are_small():
    big = [f"{_rel(p)} has {n} lines" for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not big, "\n".join(big)


def test_the_import_reader_resolves_relative_and_nested_imports(tmp_path):
    """The rules above read what a module really imports (else they would pass on anything)."""
    sample = tmp_path / "sample.py"
    sample.write_text("from .engine import _hidden\nfrom ..adapters import resolve\n"
                      "def f():\n    import ultralytics.nn\n    from . import bench\n")
    found = {(module, tuple(names)) for _, module, names in _imports(sample, ["dsxai", "zoo"])}
    assert found == {("dsxai.zoo.engine", ("_hidden",)), ("dsxai.adapters", ("resolve",)),
                     ("ultralytics.nn", ()), ("dsxai.zoo", ("bench",))}
