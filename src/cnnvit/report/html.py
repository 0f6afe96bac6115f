"""The HTML page: one self-contained file, CSS inline, figures as base64 data URIs.

Rules that keep the page safe and reproducible:

* every string that comes from the data or the config goes through
  :func:`cnnvit.markup.esc`; only :class:`~cnnvit.markup.Markup` is inserted as is;
* nothing is fetched: no CDN, no web font, no external ``src``/``href``;
* no clock is read: the only dates are those in study.json, so rebuilding gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cnnvit.markup import Markup, esc, join, tag

if TYPE_CHECKING:
    from cnnvit.report.context import ReportContext
    from cnnvit.report.section import Section


# --- the page ------------------------------------------------------------------------------

CSS = """
:root { --ink: #1d232a; --muted: #5b6670; --line: #e1e5ea; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f4; color: var(--ink);
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 40px 64px; background: #fff;
  min-height: 100vh; box-shadow: 0 0 24px rgba(0, 0, 0, .06); }
header h1 { margin: 0 0 4px; font-size: 28px; }
header .subtitle { margin: 0 0 16px; color: var(--muted); }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 18px; margin: 0;
  font-size: 14px; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
code, pre { font: 13px/1.45 ui-monospace, "DejaVu Sans Mono", Menlo, monospace;
  background: #f3f5f7; border-radius: 4px; }
code { padding: 1px 5px; }
nav.toc { margin: 20px 0 8px; padding: 10px 14px; background: #f6f8fa; border-radius: 6px;
  font-size: 14px; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 16px; }
section { margin-top: 36px; }
section h2 { font-size: 21px; margin: 0 0 12px; padding-bottom: 6px;
  border-bottom: 2px solid var(--line); }
section > p { max-width: 80ch; }
ul.verdict { padding-left: 22px; max-width: 90ch; }
ul.verdict li { margin: 6px 0; }
figure { margin: 14px 0 20px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto;
  border: 1px solid var(--line); border-radius: 4px; }
figcaption { margin-top: 6px; color: var(--muted); font-size: 13px; text-align: center; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; font-variant-numeric: tabular-nums;
  margin: 8px 0 16px; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { background: #f3f5f7; font-weight: 600; border-bottom: 2px solid #cfd6de; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num, th.num { text-align: right; white-space: nowrap; }
td.name { white-space: nowrap; }
td.error { color: #8b1a1a; font-family: ui-monospace, "DejaVu Sans Mono", monospace;
  font-size: 12.5px; max-width: 44ch; overflow-wrap: anywhere; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
  margin-right: 7px; vertical-align: baseline; }
.status { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12.5px;
  font-weight: 600; }
.status-completed { background: #e3f4e8; color: #1a6b34; }
.status-diverged { background: #fff1d6; color: #8a5300; }
.status-failed { background: #fde2e1; color: #a1261f; }
.status-missing, .status-running, .status-unknown { background: #eceff3; color: #4b5560; }
.status-improving { background: #e4ecfb; color: #1c4f9c; white-space: nowrap; }
p.missing { background: #fff8e1; border-left: 4px solid #e0b000; padding: 8px 12px; }
p.note { color: var(--muted); font-size: 13.5px; max-width: 90ch; }
footer { margin-top: 48px; color: var(--muted); font-size: 12.5px; }
"""

# Lets a headless browser check that every embedded figure decoded; the page reads the same
# without it.
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.every(function (im) { return im.complete && im.naturalWidth > 0; });
  document.body.dataset.imagesOk = ok ? "true" : "false";
});
"""


def render_page(ctx: ReportContext, sections: Sequence[Section], header: Markup) -> str:
    """The whole page: header, table of contents, one ``<section id=...>`` per section."""
    sections = [s for s in sections if s.is_shown(ctx)]
    toc = join(tag("a", s.title, href=f"#{s.id}") for s in sections)
    body = join(
        Markup(f'<section id="{esc(s.id)}">{tag("h2", s.title)}{s.render(ctx)}</section>')
        for s in sections
    )
    title = esc(f"{ctx.data.info.name} — cnnvit report")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{header}\n"
        f'<nav class="toc">{toc}</nav>\n{body}\n'
        "<footer>Written by cnnvit from the run folders of this study; "
        "the same figures are under figures/ and the tables under tables/.</footer>\n"
        f"</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
