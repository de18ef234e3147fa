"""Sphinx configuration: MyST Markdown pages, API reference generated from the docstrings.

Build: ``pip install -e ".[docs]" && python -m sphinx -W -b html docs docs/_build/html``.

Every ``docs/*.md`` page is in the index: the guide's pages in their order
(``GUIDE``), any other page (found by a glob at build time) under "More topics". The API
reference (``api/index.md``) lists every name of ``jax_bigsoftmax.__all__``
(and of the public submodules) at build time, so a function added to the
package appears without editing the docs.
"""
import glob
import importlib
import inspect
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

import jax_bigsoftmax  # noqa: E402

project = "jax_bigsoftmax"
author = "jax_bigsoftmax developers"
copyright = "jax_bigsoftmax developers"  # noqa: A001
release = jax_bigsoftmax.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
suppress_warnings = ["myst.xref_missing"]  # links to repository files outside docs/

html_theme = "furo"
html_title = "jax_bigsoftmax"

autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
autosummary_generate = False  # the stub pages are written below
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Public submodules documented next to the top-level names (documented only if importable).
PUBLIC_SUBMODULES = ("interop", "nnx")
_GENERATED = os.path.join(os.path.dirname(__file__), "api", "generated")
_HEAD_METHODS = ("__call__", "nll", "log_prob", "predict")


def _public_names():
  """[(module name, [public names])] for the package and its public submodules."""
  groups = [("jax_bigsoftmax", sorted(jax_bigsoftmax.__all__, key=str.lower))]
  for sub in PUBLIC_SUBMODULES:
    try:
      module = importlib.import_module(f"jax_bigsoftmax.{sub}")
    except ImportError:
      continue
    names = getattr(module, "__all__", None) or [
        n for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", "").startswith("jax_bigsoftmax")
        and (inspect.isfunction(v) or inspect.isclass(v))]
    groups.append((module.__name__, sorted(names, key=str.lower)))
  return groups


def _stub(module_name, name):
  obj = getattr(importlib.import_module(module_name), name)
  full = f"{module_name}.{name}"
  lines = [full, "=" * len(full), "", f".. currentmodule:: {module_name}", ""]
  if inspect.isclass(obj):
    methods = [m for m in _HEAD_METHODS if m in vars(obj) and getattr(obj, m).__doc__]
    lines.append(f".. autoclass:: {name}")
    if methods:
      lines.append(f"   :members: {', '.join(methods)}")
  elif callable(obj):
    lines.append(f".. autofunction:: {name}")
  else:  # a constant
    lines.append(f".. autodata:: {name}")
    lines.append("   :no-value:")
  return "\n".join(lines) + "\n"


def _write_stubs(groups):
  os.makedirs(_GENERATED, exist_ok=True)
  wanted = set()
  for module_name, names in groups:
    for name in names:
      filename = f"{module_name}.{name}.rst"
      wanted.add(filename)
      text = _stub(module_name, name)
      path = os.path.join(_GENERATED, filename)
      if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
          f.write(text)
  for filename in os.listdir(_GENERATED):
    if filename not in wanted:
      os.remove(os.path.join(_GENERATED, filename))


def _api_tables(groups):
  """The autosummary tables appended to api/index.md."""
  out = []
  for module_name, names in groups:
    out += ["", f"## `{module_name}`", "", "```{eval-rst}", f".. currentmodule:: {module_name}", "",
            ".. autosummary::", ""]
    out += [f"   {name}" for name in names]
    out += ["```", ""]
  out += ["```{toctree}", ":hidden:", ":glob:", "", "generated/*", "```", ""]
  return "\n".join(out)


_GROUPS = _public_names()
_write_stubs(_GROUPS)


_DOCS = os.path.dirname(os.path.abspath(__file__))
# The guide's own order; every other docs/*.md joins the "More topics" toctree of index.md.
GUIDE = ("getting_started", "exact", "hsigmoid", "adaptive", "sampled", "examples", "benchmarks")


def _more_topics() -> str:
  others = sorted(os.path.splitext(os.path.basename(p))[0]
                  for p in glob.glob(os.path.join(_DOCS, "*.md")))
  others = [d for d in others if d not in GUIDE and d != "index"]
  if not others:
    return ""
  return "\n".join(["", "```{toctree}", ":maxdepth: 2", ":caption: More topics", "", *others,
                    "```", ""])


def _append_generated(app, docname, source):
  if docname == "api/index":
    source[0] += _api_tables(_GROUPS)
  elif docname == "index":
    source[0] = source[0].replace("<!-- more topics -->", _more_topics())


def _reread_index(app, env, added, changed, removed):
  return ["index"]  # a page added since the last build joins "More topics"


def setup(app):
  app.connect("source-read", _append_generated)
  app.connect("env-get-outdated", _reread_index)
