"""Sphinx configuration: ``sphinx-build docs docs/_build`` with the ``docs`` extra installed."""

project = "resistclf"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # numpydoc-style docstrings
    "sphinx_gallery.gen_gallery",
]
napoleon_numpy_docstring = True
sphinx_gallery_conf = {"examples_dirs": "../examples", "gallery_dirs": "auto_examples"}
exclude_patterns = ["_build", "results"]
