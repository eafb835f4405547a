"""Render the report page from Jinja2 templates (shipped in ``pipeline/report/templates``), autoescaped.

Figures are embedded as ``data:`` URIs (the ``src`` filter): the page is one file.

Sections hand plain values (strings, numbers, table rows, figure paths) to their template; every value
printed with ``{{ }}`` is escaped with ``html.escape(quote=True)`` (``&quot;``, ``&#x27;``), the same
escaping the page has always had, so no photo name or class name can become markup.

Examples:
    >>> from pipeline.report.render import num, render_page
    >>> num(0.000012345), num(1234567), num(3)
    ('1.234e-05', '1.235e+06', '3')
    >>> html = render_page(info, sections, timings)   # sections: ``pipeline.report.sections.Section`` list
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import jinja2
import numpy as np
from markupsafe import Markup

from pipeline.report.plots import narrow_path

#: Folder beside report.html that holds report.json and a copy of each figure (the page embeds its own).
FILES = "report_files"


def num(x, digits: int = 4) -> str:
    """A number for the page: fixed or scientific, whichever reads better."""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    if x != 0 and (abs(x) < 10 ** -(digits - 1) or abs(x) >= 1e6):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}f}"


def counted(n, word: str, plural: str | None = None) -> str:
    """``n`` and the noun in the form it takes: ``counted(1, "anchor")`` is "1 anchor", 2,100 "2,100 anchors"."""
    return f"{n:,} {word if n == 1 else plural or word + 's'}" if isinstance(n, int) else f"{n} {plural or word + 's'}"


def is_number(cell) -> bool:
    """Whether a table cell reads as a number (right-aligned on the page)."""
    try:
        float(str(cell).replace(",", "").rstrip("%"))
        return True
    except ValueError:
        return False


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def figure_src(path) -> str:
    """A figure as a ``data:`` URI, so report.html alone carries every picture (copy it anywhere, it opens)."""
    path = Path(path)
    return f"data:{_MIME.get(path.suffix.lower(), 'application/octet-stream')};base64," + base64.b64encode(
        path.read_bytes()).decode("ascii")


def narrow_src(path) -> str:
    """The stacked version of a figure of several panel columns (``plots.narrow_path``) as a ``data:`` URI, or
    "" when it has none: the page shows it on a narrow screen (``<picture>``), each panel at its own width."""
    narrow = narrow_path(path)
    return figure_src(narrow) if narrow.exists() else ""


def _escape(value):
    """Autoescaping with ``html.escape``: markupsafe would write ``&#34;``; the page has always written ``&quot;``."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def environment() -> jinja2.Environment:
    """The report's Jinja2 environment: package templates, autoescape on, strict undefined variables."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("pipeline.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
                             undefined=jinja2.StrictUndefined, finalize=_escape, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=num, src=figure_src, narrow_src=narrow_src, counted=counted)
    env.tests["number"] = is_number
    return env


_ENV: jinja2.Environment | None = None


def _env() -> jinja2.Environment:
    global _ENV
    if _ENV is None:  # templates compile once per process
        _ENV = environment()
    return _ENV


def render_page(info: dict, sections: list, timings: dict, nav: list[tuple[str, str]]) -> str:
    """The whole page: header (photo, weights, versions), navigation, the sections in order, footer."""
    env = _env()
    body = [Markup(env.get_template(f"sections/{s.id}.html").render(section=s, **s.context)) for s in sections]
    # the short path reads the map section's numbers (strides, anchors, DFL bins): no map, no path
    first = (Markup(env.get_template("first_read.html").render(**first_read(sections)))
             if any(s.id == "map" for s in sections) else Markup(""))
    return env.get_template("page.html").render(info=info, sections=body, nav=nav, timings=timings,
                                                image_name=Path(info["image"]).name, first_read=first)


def first_read(sections: list) -> dict:
    """What the page's short path and glossary print, read off the sections' own values (none is computed here).

    Returns:
        ``{"x_shape", "neuron", "anchors", "strides", "reg_max", "nc", "lt", "cam_layer"}``: the model input's
        shape, the worked neuron (``focus_info``), the anchor count and strides, DFL bins, classes, the top box's
        logit trace (``None`` without a box) and EigenCAM's layer.
    """
    ctx = {s.id: s.context for s in sections}
    m, n = ctx.get("map", {}), ctx.get("neurons", {})
    return {"x_shape": "x".join(map(str, ctx.get("input", {}).get("shape", ()))), "neuron": m.get("neuron"),
            "trace": n.get("tr"), "anchors": m.get("anchors"), "strides": m.get("strides", []),
            "reg_max": m.get("reg_max"), "nc": m.get("nc"), "lt": m.get("lt"),
            "cam_layer": ctx.get("output", {}).get("cam_layer")}
