"""The package's layout: no import cycle, no private name imported across modules, and the
library never imports the study code in ``resistclf.reports``."""

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "resistclf"


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _relative_imports(path):
    """``(module imported from, names)`` of every relative import in the file, at any depth
    (an import inside a function closes a cycle as surely as one at the top)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            yield ".".join(base + ([node.module] if node.module else [])), \
                [alias.name for alias in node.names]


@functools.lru_cache
def _edges():
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        for source, names in _relative_imports(path):
            # "from . import x" imports the submodule x; "from .x import y" the module x.
            targets = [f"{source}.{n}" for n in names if f"{source}.{n}" in modules] or [source]
            edges[name].update(t for t in targets if t in modules and t != name)
    return edges


def test_no_private_name_is_imported_across_modules():
    crossing = [(_module_name(path), source, name) for path in PACKAGE.rglob("*.py")
                for source, names in _relative_imports(path) for name in names
                if name.startswith("_") and not name.startswith("__")]
    assert crossing == []


def test_library_modules_import_no_cycle():
    # The package's __init__ imports the public names from everywhere; it is left out.
    edges = {name: {t for t in targets if t != "resistclf"}
             for name, targets in _edges().items() if name != "resistclf"}

    def cycle_from(start, path, seen):
        for target in sorted(edges.get(path[-1], ())):
            if target == start:
                return path + [target]
            if target not in seen:
                seen.add(target)
                found = cycle_from(start, path + [target], seen)
                if found:
                    return found
        return None

    cycles = [cycle_from(name, [name], set()) for name in sorted(edges)]
    assert [c for c in cycles if c] == []


@pytest.mark.parametrize("name", sorted(n for n in _edges() if not n.startswith(
    "resistclf.reports")))
def test_library_never_imports_the_reports(name):
    assert not {t for t in _edges()[name] if t.startswith("resistclf.reports")}
