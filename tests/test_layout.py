"""The package's shape, enforced: the two processes meet only in `salt/latents/`, and nothing
directly in `salt/` shadows a module that `deepspeed salt/train_student.py` would then hide."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SALT = Path(__file__).resolve().parents[1] / "salt"
PROCESS_1 = ("salt.cache_latents",)
PROCESS_2 = ("salt.training",)


def module_name(path: Path) -> str:
    parts = path.relative_to(SALT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names (at any depth: lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


SOURCES = {module_name(p): imported_modules(p) for p in sorted(SALT.rglob("*.py"))}


def test_the_cache_format_imports_nothing_else_from_salt():
    for module, imports in SOURCES.items():
        if within(module, ("salt.latents",)):
            others = sorted(i for i in imports if within(i, ("salt",)) and not within(i, ("salt.latents",)))
            assert not others, f"{module} imports {others}: salt/latents is the contract and must stand alone"


@pytest.mark.parametrize("side, other", [(PROCESS_1, PROCESS_2), (PROCESS_2, PROCESS_1)])
def test_the_two_processes_never_import_each_other(side, other):
    for module, imports in SOURCES.items():
        if within(module, side):
            crossing = sorted(i for i in imports if within(i, other))
            assert not crossing, f"{module} imports {crossing}"


def test_the_parser_sees_lazy_imports():
    tree = imported_modules(SALT / "cli" / "stages.py")
    assert "salt.training.student" in tree  # imported inside a function


def test_no_top_level_module_shadows_another():
    taken = set(sys.stdlib_module_names) | {
        "torch",
        "timm",
        "numpy",
        "deepspeed",
        "webdataset",
        "zarr",
        "numcodecs",
        "decord",
        "click",
        "yaml",
        "tqdm",
        "av",
        "psutil",
        "safetensors",
        "matplotlib",
        "ray",
        "transformers",
    }
    names = {p.stem if p.suffix == ".py" else p.name for p in SALT.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert not names & taken, sorted(names & taken)
