"""The API reference lists every public name, and the README's Quick start runs as written
(the Sphinx build itself runs in .ci/run)."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import resistclf

API_PAGE = Path(__file__).parents[1] / "docs" / "api.rst"
#: Modules that are not library API: the study's commands and the command line.
NOT_API = {"cli", "reports"}


def _public_modules():
    names = sorted(info.name for info in pkgutil.iter_modules(resistclf.__path__)
                   if not info.name.startswith("_") and info.name not in NOT_API)
    return [resistclf] + [importlib.import_module(f"resistclf.{name}") for name in names]


def _public_names(module):
    """``__all__`` where the module has one, else the classes and functions it defines."""
    if hasattr(module, "__all__"):
        return [name for name in module.__all__ if not name.startswith("__")]
    return [name for name, obj in vars(module).items()
            if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
            and obj.__module__ == module.__name__]


def _documented_objects():
    """The objects the API page's autosummary tables list, resolved by their full names."""
    documented, current = [], "resistclf"
    in_autosummary = False
    for line in API_PAGE.read_text().splitlines():
        if match := re.match(r"\.\. currentmodule:: (\S+)", line):
            current = match.group(1)
        if line.startswith(".. "):
            in_autosummary = line.startswith(".. autosummary::")
        elif in_autosummary and re.fullmatch(r"   [A-Za-z_][\w.]*", line):
            module_name, _, name = f"{current}.{line.strip()}".rpartition(".")
            documented.append(getattr(importlib.import_module(module_name), name))
    return documented


@pytest.mark.parametrize("module", _public_modules(), ids=lambda module: module.__name__)
def test_api_page_lists_every_public_name(module):
    documented = _documented_objects()
    missing = [name for name in _public_names(module)
               if not any(getattr(module, name) is obj for obj in documented)]
    assert not missing, f"docs/api.rst does not list {module.__name__}: {missing}"


def test_api_page_lists_only_existing_names():
    # Resolving every entry raises AttributeError for a name that does not exist.
    assert len(_documented_objects()) > 10


def _readme_blocks(language):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_quick_start_runs_as_written():
    # The first Python block, verbatim: a new user's first minutes.
    block = _readme_blocks("python")[0]
    assert "ResistanceClassifier(" in block
    namespace = {}
    exec(compile(block, "README.md (Quick start)", "exec"), namespace)
    assert namespace["clf"].predict_topk(namespace["X_test"][:3], k=2).shape == (3, 2)
