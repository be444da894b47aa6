"""The package's import structure, read from the source with `ast`: no import cycle between its modules, no
function-local import of a package module (such imports hide cycles and dependencies), the detection modules
importing only those before them on the data path, and `import htsat_hf` working with the core dependencies alone.

Function-local imports of third-party modules stay allowed: optional dependencies (the metric libraries, matplotlib,
datasets, torchaudio) are imported when used, with a clear error when missing.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "htsat_hf"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# The command-line module imports a command's module when that command runs, so that `htsat-hf --help` stays fast.
LAZY_IMPORTERS = {"htsat_hf.cli"}

# Modules that may import package modules inside functions (none: a function-local import hides a cycle).
FUNCTION_LOCAL_ALLOWED: set[str] = set()

# The detection modules in data-path order: each may import only modules before it.
SED_LAYERS = ["io", "windows", "postprocessing", "targets", "metrics", "plot", "pipeline", "detection"]


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def imports(module: str) -> list[tuple[str, int, bool]]:
    """`(imported package module, line, inside a function)` for every import of a package module in `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, inside) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module
                for alias in child.names:
                    # `from package import module` depends on that module; `from module import name` on the module.
                    submodule = f"{source}.{alias.name}"
                    found.append((submodule if submodule in MODULES else source, child.lineno, inside))
            visit(child, inside)

    visit(tree, False)
    return [(target, line, inside) for target, line, inside in found if target.split(".")[0] == PACKAGE]


IMPORTS = {module: imports(module) for module in MODULES}


def test_every_module_is_seen():
    assert {"htsat_hf", "htsat_hf.inputs", "htsat_hf.sed.detection", "htsat_hf.sed.io"} <= set(MODULES)
    assert "htsat_hf.sed.run" not in MODULES  # run_sed.py's recipe lives in the script


def test_no_function_local_imports_of_package_modules():
    found = [
        f"{MODULES[module].relative_to(SOURCE.parent)}:{line} imports {target} inside a function"
        for module, entries in IMPORTS.items()
        if module not in LAZY_IMPORTERS | FUNCTION_LOCAL_ALLOWED
        for target, line, inside in entries
        if inside
    ]
    assert not found, "\n".join(found)


def test_the_allow_list_holds_only_modules_that_need_it():
    stale = [module for module in FUNCTION_LOCAL_ALLOWED if not any(inside for _, _, inside in IMPORTS.get(module, []))]
    assert not stale, f"remove from FUNCTION_LOCAL_ALLOWED: {stale}"


def test_no_import_cycles():
    graph = {module: {target for target, _, inside in entries if not inside and target != module}
             for module, entries in IMPORTS.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle + cycle[:1]) for cycle in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("layer", SED_LAYERS)
def test_detection_modules_follow_the_data_path(layer):
    module = f"{PACKAGE}.sed.{layer}"
    later = {f"{PACKAGE}.sed.{name}" for name in SED_LAYERS[SED_LAYERS.index(layer) + 1 :]} | {f"{PACKAGE}.sed"}
    upward = sorted({target for target, _, _ in IMPORTS[module] if target in later})
    assert not upward, f"{module} imports {upward}, which come after it on the data path"


def test_the_detection_package_lists_its_modules():
    assert {name for name in MODULES if name.startswith(f"{PACKAGE}.sed.")} == {
        f"{PACKAGE}.sed.{name}" for name in SED_LAYERS
    }


def test_import_needs_only_the_core_dependencies(tmp_path):
    """With pandas, the metric libraries, matplotlib and datasets unimportable, `import htsat_hf` (which registers
    the pipeline) and the pipeline's thresholds files still work."""
    (tmp_path / "t.tsv").write_text("a\t0.3\nb\t0.6\n")
    code = f"""
import sys

for name in ("pandas", "sed_scores_eval", "sed_eval", "psds_eval", "matplotlib", "datasets"):
    sys.modules[name] = None  # what Python does for a module that is not there: `import` raises ImportError
import htsat_hf
from htsat_hf.sed import resolve_thresholds
assert list(resolve_thresholds(["a", "b"], {str(tmp_path / "t.tsv")!r})) == [0.3, 0.6]
"""
    subprocess.run([sys.executable, "-c", code], check=True)
