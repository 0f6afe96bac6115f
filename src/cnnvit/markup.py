"""HTML pieces for the report and the analyses' report sections, safe by construction.

Every string that comes from the data or the config goes through :func:`esc` (class names,
model labels, paths, error messages, the command); only :class:`Markup` (HTML built here from
escaped parts) is inserted as is. Nothing is fetched: figures are embedded as data URIs.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["Markup", "esc", "folder_figure", "img", "join", "note", "swatch", "table", "tag"]


class Markup(str):
    """A string that is already HTML; :func:`esc` leaves it alone."""


def esc(value: object) -> Markup:
    """HTML-escape anything (quotes too, so it is safe in attributes); Markup passes through."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def tag(name: str, body: object = "", **attrs: object) -> Markup:
    """``<name attrs>body</name>``, attribute values and a non-Markup body escaped.

    ``class_="x"`` gives ``class="x"``, ``data_id="x"`` gives ``data-id="x"``; attributes whose
    value is None or empty are left out.
    """
    attr = "".join(
        f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"'
        for k, v in attrs.items()
        if v is not None and v != ""
    )
    return Markup(f"<{name}{attr}>{esc(body)}</{name}>")


def join(parts: Iterable[object]) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def img(png: bytes, alt: str, caption: object = "") -> Markup:
    """A figure with the PNG embedded as a data URI (no external file needed)."""
    data = base64.b64encode(png).decode("ascii")
    image = Markup(f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">')
    cap = tag("figcaption", caption) if caption else Markup("")
    return Markup(f"<figure>{image}{cap}</figure>")


def folder_figure(folder: Path, name: object, alt: str, caption: object = "") -> Markup:
    """The PNG ``name`` of an analysis folder as a figure (only files directly in ``folder``:
    a name from a JSON file cannot reach elsewhere); a note when it is missing; nothing when
    no name is given."""
    if not isinstance(name, str) or not name:
        return Markup("")
    path = Path(folder) / Path(name).name
    if not path.is_file():
        return note(f"Figure {path.name} is missing from {folder}.")
    return img(path.read_bytes(), alt, caption)


def note(text: object, kind: str = "missing") -> Markup:
    """A highlighted paragraph: what is missing, or a remark on method."""
    return tag("p", text, class_=kind)


def table(
    headers: Sequence[object],
    rows: Iterable[Sequence[object]],
    *,
    classes: Sequence[str] | None = None,
) -> Markup:
    """A plain table; cells are escaped unless Markup.

    ``classes`` gives each column's CSS class: ``num`` aligns right (numbers), ``error`` wraps
    long messages; ``""`` for none.
    """
    classes = list(classes or [""] * len(headers))
    head = join(tag("th", h, class_=c) for h, c in zip(headers, classes, strict=True))
    body = []
    for row in rows:
        cells = (tag("td", v, class_=c) for v, c in zip(row, classes, strict=True))
        body.append(tag("tr", join(cells)))
    return Markup(
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{join(body)}</tbody></table></div>"
    )


def swatch(color: str) -> Markup:
    """A small square of ``color`` (a model's colour from cnnvit's palette, never from data)."""
    return Markup(f'<span class="swatch" style="background:{color}"></span>')
