"""Sphinx configuration: the Markdown pages of docs/ and an API reference
generated from the docstrings. `make docs` builds it with warnings as errors
(CI runs it); the HTML goes to docs/_build and is not published here."""

project = 'efficient-attention'
author = 'efficient-attention contributors'
extensions = ['myst_parser', 'sphinx.ext.autodoc', 'sphinx.ext.napoleon',
              'sphinx.ext.viewcode']
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build']
# Docstrings use `x` for code, as the Markdown pages do.
default_role = 'code'
myst_heading_anchors = 3
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_default_options = {'members': True, 'show-inheritance': False}
html_theme = 'alabaster'
html_static_path = []
