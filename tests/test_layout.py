"""The package's layers (docs/design.md §6): imports point down, never up or round.

iaa_kernels (Triton kernels) < iaa_vllm.engine (what vLLM loads) < the rest of
iaa_vllm (what people run). Read from the source with `ast`, lazy imports inside
functions included, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("iaa_kernels", "iaa_vllm")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
}


def _imports(name: str) -> set[str]:
    """The project modules `name` imports: `from a import b` counts as a.b when a.b
    is a module, else as a."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> int:
    if name.startswith("iaa_kernels"):
        return 0
    if name.startswith("iaa_vllm.engine"):
        return 1
    return 2


def test_the_modules_are_found():
    assert {"iaa_vllm.engine.model", "iaa_vllm.cli", "iaa_kernels.routing"} <= set(MODULES)
    assert "iaa_kernels.routing" in GRAPH["iaa_vllm.engine.insertion"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_layer_above_it(name):
    # The one exception: iaa_vllm/__init__.py re-exports engine/names.py, and the
    # package root sits at the engine's level for that (it imports nothing else).
    upward = {t for t in GRAPH[name] if _layer(t) > _layer(name) and t != "iaa_vllm"}
    assert not upward, f"{name} imports {sorted(upward)}, which sit above it"


def test_the_package_root_imports_only_the_names():
    assert GRAPH["iaa_vllm"] == {"iaa_vllm.engine.names"}
    assert GRAPH["iaa_vllm.engine.names"] == set()


def test_no_import_cycles():
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for target in sorted(GRAPH[name]):
            visit(target, path + [name])
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, [])


# Modules whose tests are not `test_<name>.py`, and where they are.
TESTED_AS = {
    "iaa_vllm": None,  # re-exports engine/names.py
    "iaa_vllm.engine": "test_registration.py",  # register(), the plugin entry point
    "iaa_vllm.engine.names": None,  # three strings: test_checkpoint and test_config read them back
    "iaa_vllm.eval": None,  # an empty package docstring
    # The patches (engine/patches/__init__.py's registry), each where its effect is seen.
    "iaa_vllm.engine.patches": "test_patches.py",
    "iaa_vllm.engine.patches.input_processor": "test_admission.py",
    "iaa_vllm.engine.patches.image_media_io": "test_serve_bad_input.py",
    "iaa_vllm.engine.patches.media_connector": "test_media.py",
    "iaa_vllm.engine.patches.http_connection": "test_media.py",
    "iaa_vllm.engine.patches.launcher": "test_engine_death.py",
    "iaa_vllm.engine.patches.async_llm": "test_engine_death.py",
    "iaa_kernels": None,
}


def _mirror(name: str) -> str:
    """tests/ file of a module: iaa_vllm/x.py and iaa_vllm/engine/x.py -> test_x.py,
    iaa_vllm/eval/x.py -> test_eval_x.py, iaa_kernels/x.py -> test_kernels_x.py."""
    parts = name.split(".")
    prefix = {"eval": "eval_", "iaa_kernels": "kernels_"}.get(parts[-2], "")
    return f"test_{prefix}{parts[-1]}.py"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_has_its_test_file(name):
    expected = TESTED_AS[name] if name in TESTED_AS else _mirror(name)
    if expected is not None:
        assert (ROOT / "tests" / expected).is_file(), f"{name} has no tests/{expected}"
