"""The watch's leaderboard: each checkpoint's scores, as leaderboard.md and leaderboard.html."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .pages import esc, fmt, html_page, svg_plot
from .util import atomic_write, now_iso


def checkpoint_output(out: Path, root: Path, ckpt: Path) -> Path:
    return out / ckpt.relative_to(root)


def leaderboard_rows(out: Path, root: Path, ckpts: Sequence[Path], states: dict[Path, str]) -> list[dict[str, Any]]:
    rows = []
    for ckpt in ckpts:
        folder = checkpoint_output(out, root, ckpt)
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None
        rows.append({"checkpoint": str(ckpt.relative_to(root)), "state": states.get(ckpt, ""), "summary": summary})
    return rows


def leaderboard_markdown(rows: list[dict[str, Any]], domains: Sequence[str]) -> str:
    head = ["checkpoint", *domains, "overall", "simulations", "state"]
    lines = ["# Leaderboard: average reward per checkpoint (oldest first)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        s = row["summary"] or {"domains": {}, "overall": {}}
        cells = [row["checkpoint"], *[fmt(s["domains"].get(d, {}).get("avg_reward")) for d in domains],
                 fmt(s["overall"].get("avg_reward")), fmt(s["overall"].get("simulations")), row["state"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def leaderboard_html(rows: list[dict[str, Any]], domains: Sequence[str]) -> str:
    scopes = [*domains, "overall"]

    def reward(row: dict[str, Any], scope: str) -> float | None:
        s = row["summary"]
        return None if s is None else (s["overall"] if scope == "overall"
                                       else s["domains"].get(scope, {})).get("avg_reward")

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        for scope in scopes:
            points = [(i, reward(r, scope)) for i, r in enumerate(rows) if reward(r, scope) is not None]
            ax.plot([i for i, _ in points], [v for _, v in points], marker="o", label=scope)
        ax.set_xticks(range(len(rows)), [r["checkpoint"] for r in rows], rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("average reward")
        ax.legend(fontsize=8)
    head = "".join(f"<th>{esc(s)}</th>" for s in [*scopes, "simulations", "state"])
    body = "".join(
        f"<tr><td>{esc(r['checkpoint'])}</td>"
        + "".join(f'<td data-field="{esc(r["checkpoint"])}:{esc(s)}">{esc(fmt(reward(r, s)))}</td>' for s in scopes)
        + f"<td>{esc(fmt((r['summary'] or {}).get('overall', {}).get('simulations')))}</td>"
        + f"<td>{esc(r['state'])}</td></tr>"
        for r in rows)
    plot = svg_plot(draw) if any(r["summary"] for r in rows) else ""
    return html_page("Leaderboard", f'<h1>Leaderboard</h1><p class="meta">average reward per checkpoint, oldest first '
                     f'· written {esc(now_iso())}</p>{plot}<table><tr><th>checkpoint</th>{head}</tr>{body}</table>')


def write_leaderboard(out: Path, rows: list[dict[str, Any]], domains: Sequence[str]) -> None:
    atomic_write(out / "leaderboard.md", leaderboard_markdown(rows, domains))
    atomic_write(out / "leaderboard.html", leaderboard_html(rows, domains))
