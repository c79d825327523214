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


def test_no_module_imports_back_into_a_circle():
    """The house has no import circles (lazy imports included; typing-only imports too)."""
    graph = {m: {i for i in imports if i in SOURCES and i != m} for m, imports in SOURCES.items()}
    # An import of a package's name is an import of its __init__; `from a.b import c` names a.b.c too.
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                cycle = path[path.index(other) :] + [other] if other in path else [module, other]
                raise AssertionError(f"import circle: {' -> '.join(cycle)}")
            if other not in state:
                visit(other, path + [other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_errors_import_nothing_from_salt():
    assert not [i for i in SOURCES["salt.errors"] if within(i, ("salt",))]


def test_every_click_command_lives_under_salt_cli():
    for path in sorted(SALT.rglob("*.py")):
        text = path.read_text()
        if "@click.command" in text or "@click.group" in text or ".command(" in text and "import click" in text:
            assert within(module_name(path), ("salt.cli",)), f"{path}: click commands belong in salt/cli/"


def test_modules_and_functions_fit_in_a_readers_head():
    """Modules at most 400 lines; functions at most 60, from `def` to their last line (a click
    command's option decorators are not counted: they are its documentation)."""
    too_long = []
    for path in sorted(SALT.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{path}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "split these:\n" + "\n".join(too_long)
