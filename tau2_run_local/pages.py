"""What the HTML pages share: one self-contained page (styles inline, nothing fetched), matplotlib plots as
inline SVG, reward colours and number formats.
"""
from __future__ import annotations

import functools
import html
from collections.abc import Callable
from typing import Any

REPORT_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:24px auto;max-width:1200px;
 padding:0 16px;color:#1d2329}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d6dbe0;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#56606b;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0 12px}th,td{border:1px solid #d6dbe0;padding:3px 8px;text-align:right}
th{background:#f1f3f5}td:first-child,th:first-child{text-align:left}tr.overall td{font-weight:600;background:#f8f9fa}
.grid td{width:38px;text-align:center;padding:0}.grid td a{display:block;padding:3px 0;color:#111;text-decoration:none}
.grid td.task{width:auto;text-align:left;padding:3px 8px;font-family:ui-monospace,monospace;font-size:12px}
.grid td.missing{background:#eceff1;color:#9aa3ab}.plot svg{max-width:100%;height:auto}
details.sim{border:1px solid #d6dbe0;border-radius:4px;margin:4px 0;padding:2px 8px}
details.sim[open]{background:#fcfcfd}details.sim>summary{cursor:pointer;padding:2px 0}
.msg{border-left:4px solid #adb5bd;margin:6px 0;padding:2px 8px;background:#fff}
.msg.assistant{border-color:#1c7ed6}.msg.user{border-color:#37b24d}.msg.tool{border-color:#f59f00}
.msg.system{border-color:#868e96}.role{font-weight:600;font-size:12px;color:#56606b}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
.call{background:#f1f3f5;border-radius:3px;padding:2px 6px;margin:3px 0}.err{color:#c92a2a}
.pill{display:inline-block;border-radius:9px;padding:0 7px;font-size:12px;color:#111}
"""


REPORT_JS = """
function openHash(){var id=decodeURIComponent(location.hash.slice(1));var el=id&&document.getElementById(id);
 if(el&&el.tagName==='DETAILS'){el.open=true;el.scrollIntoView();}}
window.addEventListener('hashchange',openHash);window.addEventListener('DOMContentLoaded',openHash);
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def html_page(title: str, body: str) -> str:
    """A page that opens from disk: styles and script inline, nothing fetched."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{REPORT_CSS}</style><script>{REPORT_JS}</script></head>\n<body>\n{body}\n</body></html>\n")


def svg_plot(draw: Callable[[Any], None], width: float = 7.5, height: float = 3.2) -> str:
    """A matplotlib figure as inline SVG: text stays text, no file and no network. matplotlib's Figure is
    used without pyplot, so no global backend state and safe from any thread."""
    import io

    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "run_local", "font.size": 9}):
        fig = Figure(figsize=(width, height))
        draw(fig)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return f'<div class="plot">{text[text.index("<svg"):]}</div>'


def reward_colour(reward: float | None) -> str:
    """Red (0) through yellow to green (1), from matplotlib's RdYlGn map; grey when not run."""
    return "#eceff1" if reward is None else _colour_of(round(min(max(reward, 0.0), 1.0), 2))


@functools.lru_cache(maxsize=128)
def _colour_of(reward: float) -> str:
    """Cached: a colour-map lookup costs milliseconds, and a big report has thousands of cells."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["RdYlGn"](0.1 + 0.8 * reward))


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
