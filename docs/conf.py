"""Sphinx configuration for the docs site: the Markdown guides (MyST) and an
API reference drawn from the docstrings (autodoc).

Build: ``sphinx-build -W --keep-going -n -b html docs build/docs``. ``-W``
makes every warning an error and ``-n`` every unresolved cross-reference a
warning, so a broken link or reference fails the README's test command.
"""

from __future__ import annotations

import tidings

project = "tidings"
author = "The tidings developers"
copyright = "the tidings developers"
release = version = tidings.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Guides link to each other's sections as page.md#heading-slug.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = f"tidings {release}"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_default_options = {"show-inheritance": True}

# The machine that builds the site is offline, so there is no intersphinx:
# references into the standard library and other packages cannot resolve.
# References to tidings' own names must.
nitpick_ignore_regex = [(r"py:.*", r"(?!tidings\b).*")]
# Private names (``_Unset``) and type variables are not documented either.
nitpick_ignore_regex += [(r"py:.*", r".*\._\w+"), (r"py:.*", r".*\.[A-Z]")]


def _public_names() -> dict[str, str]:
    """Where each public object is documented, by where it is defined:
    ``tidings.engine.connection.WebSocket`` is ``tidings.WebSocket``."""
    import importlib

    names = {}
    for package in ("tidings", "tidings.sync", "tidings.asgi", "tidings.hub"):
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            defined = f"{obj.__module__}.{getattr(obj, '__qualname__', name)}"
            names.setdefault(defined, f"{package}.{name}")
    return names


def _resolve_alias(app, env, node, contnode):  # type: ignore[no-untyped-def]
    """Point a reference to where an object is defined at where it is
    documented, with its members (``...connection.WebSocket.send``)."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    for defined, public in app.config.public_names.items():
        if target == defined or target.startswith(defined + "."):
            node["reftarget"] = public + target[len(defined) :]
            py = env.get_domain("py")
            return py.resolve_xref(
                env,
                node["refdoc"],
                app.builder,
                node["reftype"],
                node["reftarget"],
                node,
                contnode,
            )
    return None


def setup(app):  # type: ignore[no-untyped-def]
    app.add_config_value("public_names", _public_names(), "env")
    app.connect("missing-reference", _resolve_alias)
