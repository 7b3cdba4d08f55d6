"""MkDocs hook: tables of dataclass fields (name, type, default, help) generated from the code.

A page writes ``<!-- fields: sod_trainer.config.SODConfig -->`` and gets the table of the fields that class
declares itself (not the ones it inherits), in source order, with the ``help`` metadata the CLI shows.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
import typing
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _import(module_name: str):
    # The docs describe this checkout, installed or not. (MkDocs restores sys.path after loading a hook,
    # so the path is added when a table is made, not at import.)
    if SRC.is_dir() and str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    return importlib.import_module(module_name)

MARKER = re.compile(r"<!-- fields: ([\w.]+)(?: inherited)? -->")


def _type_name(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "").replace("NoneType", "None")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(f.default_factory())  # type: ignore[misc]
    return "required"


def fields_table(dotted: str) -> str:
    module_name, _, name = dotted.rpartition(".")
    cls = getattr(_import(module_name), name)
    own = cls.__dict__.get("__annotations__", {})
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name not in own or not f.init:
            continue
        help_text = " ".join(str(f.metadata.get("help", "")).split()).replace("|", "\\|")
        choices = f.metadata.get("choices")
        if choices:
            help_text += " Choices: " + ", ".join(f"`{c}`" for c in choices) + "."
        rows.append(f"| `{f.name}` | `{_type_name(own[f.name])}` | `{_default(f)}` | {help_text} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARKER.sub(lambda match: fields_table(match.group(1)), markdown)


def _nav_pages(items) -> set[str]:
    pages: set[str] = set()
    for item in items or []:
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            if isinstance(value, str):
                pages.add(value)
            elif isinstance(value, list):
                pages |= _nav_pages(value)
    return pages


def unlisted_pages(docs_dir: Path, nav) -> list[str]:
    """Markdown pages under ``docs_dir`` (outside ``scripts/``) that the nav does not list."""
    listed = _nav_pages(nav)
    return sorted(path.relative_to(docs_dir).as_posix() for path in docs_dir.rglob("*.md")
                  if "scripts" not in path.relative_to(docs_dir).parts
                  and path.relative_to(docs_dir).as_posix() not in listed)


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("_", " ").capitalize()


def on_config(config):
    """Pages written by others but not yet in the nav go under "Guide", titled by their first heading."""
    docs_dir = Path(config["docs_dir"])
    extra = unlisted_pages(docs_dir, config["nav"])
    if extra:
        guide = next((item for item in config["nav"] if isinstance(item, dict) and "Guide" in item), None)
        target = guide["Guide"] if guide is not None else config["nav"]
        target.extend({_title(docs_dir / page): page} for page in extra)
    return config


__all__ = ["fields_table", "on_page_markdown", "on_config", "unlisted_pages"]
_ = typing  # keep the import for type names of postponed annotations


# ---------------------------------------------------------------------------------------------- math, offline
# pymdownx.arithmatex (generic) leaves \( ... \) and \[ ... \] in spans and divs of class "arithmatex"; they are
# converted to MathML here, at build time (latex2mathml), so the equations render in any current browser without
# JavaScript or a CDN: the site works offline.
_INLINE_MATH = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.DOTALL)
_DISPLAY_MATH = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.DOTALL)


def render_math(html: str) -> str:
    """``html`` with every arithmatex span/div replaced by MathML (inline, or display="block")."""
    import html as html_lib

    from latex2mathml.converter import convert

    html = _DISPLAY_MATH.sub(lambda m: convert(html_lib.unescape(m.group(1)).strip(), display="block"), html)
    return _INLINE_MATH.sub(lambda m: convert(html_lib.unescape(m.group(1)).strip()), html)


def on_page_content(html: str, page, config, files) -> str:
    return render_math(html)
