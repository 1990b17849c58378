"""Sphinx configuration: MyST Markdown pages, autodoc (numpydoc-style docstrings through napoleon),
and the generated reference pages of _ext/drfast_reference.py.

Build (warnings are errors): ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
Nothing here needs a GPU or the network: autodoc imports the installed drfast, and intersphinx is off.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import drfast  # noqa: E402  (the installed package: the version and the API pages come from it)

project = "drfast"
author = "the drfast authors"
copyright = "the drfast authors"  # noqa: A001  (Sphinx's name)
version = release = drfast.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "drfast_reference",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3  # links like [text](page.md#a-heading) resolve to the heading's anchor

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"undoc-members": False}
# torch and friends are real imports (drfast needs them); nothing is mocked, so a name that fails to
# import fails the build.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# An "Attributes" section becomes a field list of the class, not attribute entries of their own that
# would duplicate the dataclass fields autodoc lists (a duplicate-description warning).
napoleon_use_ivar = True

html_theme = "furo"
html_title = f"drfast {release}"
html_static_path: list = []
