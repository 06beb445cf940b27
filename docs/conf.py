"""Sphinx configuration, after scikit-learn's ``doc/conf.py``.

Build with the ``docs`` extra installed, from the repository's root::

    sphinx-build -W -b html docs docs/_build/html

The gallery's examples run during the build (sphinx-gallery), and the committed
study reports under ``docs/results`` are rendered from their Markdown (myst-parser).
"""

import os
import tempfile
import zlib
from pathlib import Path

import torch

import resistclf

project = "resistclf"
copyright = "resistclf developers (BSD-3-Clause)"
version = release = resistclf.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "**/sg_execution_times.rst", "results/bench",
                    "results/mutation"]
# `text` is code, as in scikit-learn's documentation.
default_role = "literal"
add_function_parentheses = False

# -- API pages: autosummary + numpydoc, as scikit-learn uses them --------------
autosummary_generate = True
autodoc_default_options = {
    "members": True,
    # Inherited scikit-learn methods (get_params, score...) are part of the API;
    # torch's nn.Module and skorch's Callback machinery are not ours to document.
    "inherited-members": "Module,Callback",
    "special-members": "__call__",
}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False

# -- Links to the projects resistclf builds on -----------------------------------
_INVENTORIES = {
    "python": "https://docs.python.org/3/",
    "numpy": "https://numpy.org/doc/stable/",
    "sklearn": "https://scikit-learn.org/stable/",
    "skorch": "https://skorch.readthedocs.io/en/stable/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "matplotlib": "https://matplotlib.org/stable/",
}
# Where an inventory cannot be fetched (CI machines have no internet access), Sphinx
# falls back to this empty one: the build logs the failure and leaves those links
# out, instead of stopping on a warning under -W.
_OFFLINE_INVENTORY = Path(tempfile.gettempdir()) / "resistclf-docs-empty-objects.inv"
_OFFLINE_INVENTORY.write_bytes(
    b"# Sphinx inventory version 2\n# Project: none\n# Version: \n"
    b"# The remainder of this file is compressed using zlib.\n" + zlib.compress(b"")
)
intersphinx_mapping = {
    name: (url, (None, str(_OFFLINE_INVENTORY))) for name, url in _INVENTORIES.items()
}
intersphinx_timeout = 10

# -- Gallery ----------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "doc_module": "resistclf",
    "backreferences_dir": os.path.join("generated", "backreferences"),
    "reference_url": {"resistclf": None},
    "inspect_global_variables": False,
    "remove_config_comments": True,
    "show_memory": False,
    "plot_gallery": "True",
    "reset_modules": ("matplotlib",),
    "within_subsection_order": "FileNameSortKey",
    # An example that raises fails the build.
    "abort_on_example_error": True,
}
# The examples' nets are tiny (8x8 digits): a second torch thread buys little, and on a
# busy machine torch's threads wait for each other. On the shared 2-core development
# machine (load about 10), plot_quickstart.py took 52 s with one thread, 794 s with two.
torch.set_num_threads(1)

# -- Markdown (the study's reports) ----------------------------------------------
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
# The bench's Markdown, included inside a section of fast_modes.rst, starts at "##".
suppress_warnings = ["myst.header"]

# -- HTML -------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"resistclf {release}"
html_short_title = "resistclf"
html_theme_options = {
    "navbar_align": "left",
    "navigation_depth": 2,
    "show_nav_level": 1,
    "show_toc_level": 1,
    "header_links_before_dropdown": 6,
    "show_prev_next": False,
    "collapse_navigation": False,
    "secondary_sidebar_items": {"**": ["page-toc", "sourcelink"],
                                "auto_examples/index": []},
    "pygments_light_style": "tango",
    "pygments_dark_style": "monokai",
}
html_sidebars = {"index": []}
html_domain_indices = False
html_use_index = False
html_copy_source = True


def _sklearn_refs_as_text(app, env, node, contnode):
    """Render scikit-learn's references to its own documentation as text when unresolved.

    Inherited methods (``score``, ``set_output``, metadata routing) keep scikit-learn's
    docstrings, which refer to its user guide and glossary by label. intersphinx
    resolves these where scikit-learn's inventory can be fetched; offline they stay text.
    """
    if (node.get("refdomain") == "std" and node.get("reftype") in ("ref", "term")
            and ":docstring of sklearn." in (node.source or "")):
        return contnode
    return None


def setup(app):
    # After intersphinx (priority 500), which resolves these when it can.
    app.connect("missing-reference", _sklearn_refs_as_text, priority=900)
