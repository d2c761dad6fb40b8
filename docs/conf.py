"""Sphinx configuration of the xrdist documentation.

The pages are the Markdown files of this folder (MyST). Their ```python blocks are also
run by tests/test_docs.py, so the examples shown are the ones that are tested. Build with
``make docs`` (warnings are errors).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer

import xrdist  # the installed package (make docs installs it editable)

project = "xrdist"
author = "the xrdist authors"
copyright = "the xrdist authors"
release = xrdist.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# -- MyST ------------------------------------------------------------------------------
# Pages may link to a section as [text](engine.md#4-what-differs-and-why).
myst_heading_anchors = 3

# -- API reference ---------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # show `max_mem=None`, not an evaluated default
# Docstrings are numpy style ("Parameters", "Notes", ... underlined with dashes). Some
# module docstrings have headings of their own; declared as custom sections, napoleon
# renders them as rubrics instead of section titles (which a docstring may not contain).
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_custom_sections = [
    "How it works",
    "Which lock covers which calls",
]

# One page per module, written to generated/ (ignored by git) before each build, listed
# by the toctree of api.md. Every module of the package has one except the command
# line's (documented by `xrdist --help`).
GENERATED = Path(__file__).parent / "generated"
# chunkloop: importing it compiles numba code (xrdist.groupread documents what it does)
NOT_DOCUMENTED = {
    "xrdist.chunkloop",
    "xrdist.cli",
    "xrdist.demo",
    "xrdist.handle_demo",
    "xrdist.info",
}


def api_modules() -> list[str]:
    names = [
        m.name
        for m in pkgutil.walk_packages(xrdist.__path__, prefix="xrdist.")
        if m.name not in NOT_DOCUMENTED
    ]
    return sorted(names)


def module_page(name: str) -> str:
    """The reStructuredText of one module's page.

    The names xrdist exports are documented once, as ``xrdist.NAME`` in api.md; the page
    of the module that defines one links to it instead of describing it again (a second
    description would make references such as ``NamedLock`` ambiguous). A module whose
    name is also a function of its package (the function ``xrdist.plan`` hides the module
    ``xrdist.plan``) is not indexed as a module, so that the name means the function.
    """
    module = importlib.import_module(name)
    package, _, last = name.rpartition(".")
    exported = {id(getattr(xrdist, n)): n for n in xrdist.__all__}
    lines = [name, "=" * len(name), "", f".. automodule:: {name}"]
    if getattr(sys.modules[package], last, module) is not module:
        lines.append("   :no-index:")
    lines += ["", f".. currentmodule:: {name}", ""]
    own = [
        (key, value)
        for key, value in vars(module).items()
        if not key.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(inspect.unwrap(value)))
        and value.__module__ == name
    ]
    public = [f":obj:`xrdist.{exported[id(v)]}`" for _, v in own if id(v) in exported]
    if public:
        lines += ["Defined here, documented with the public API: " + ", ".join(public) + ".", ""]
    for key, value in own:
        if id(value) in exported:
            continue
        if not inspect.isclass(value):
            lines += [f".. autofunction:: {key}", ""]
        elif issubclass(value, BaseException):
            lines += [f".. autoexception:: {key}", "   :show-inheritance:", ""]
        else:
            lines += [f".. autoclass:: {key}", "   :members:", ""]
    documented = ModuleAnalyzer.for_module(name).find_attr_docs()  # `#:` comments
    constants = [attr for scope, attr in documented if not scope and not attr.startswith("_")]
    lines += [f".. autodata:: {attr}\n" for attr in constants]
    return "\n".join(lines)


def write_module_pages(app: object) -> None:
    GENERATED.mkdir(exist_ok=True)
    wanted = {f"{name}.rst": module_page(name) for name in api_modules()}
    for stale in set(p.name for p in GENERATED.glob("*.rst")) - set(wanted):
        (GENERATED / stale).unlink()
    for filename, text in wanted.items():
        path = GENERATED / filename
        if not path.exists() or path.read_text() != text:  # unchanged: no rebuild
            path.write_text(text)


# Constants (`#:` comments), attributes and properties are documented in prose. Napoleon
# would read a first line such as "text (more: text)" as "type: description"; their text
# is kept as written.
_PROSE = {"data", "attribute", "property"}
_prose_docs: dict[str, list[str]] = {}


def _keep_prose_doc(app, what, name, obj, options, lines) -> None:  # before napoleon
    if what in _PROSE:
        _prose_docs[name] = list(lines)


def _restore_prose_doc(app, what, name, obj, options, lines) -> None:  # after it
    if what in _PROSE and name in _prose_docs:
        lines[:] = _prose_docs.pop(name)


def setup(app: object) -> None:
    app.connect("builder-inited", write_module_pages)
    app.connect("autodoc-process-docstring", _keep_prose_doc, priority=400)
    app.connect("autodoc-process-docstring", _restore_prose_doc, priority=600)


# -- HTML ------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"xrdist {release}"
