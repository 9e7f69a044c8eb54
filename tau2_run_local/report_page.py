"""report.html: scores, failures, plots, the task grid and every conversation, with each number findable by
its data-field.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from .pages import esc, fmt, html_page, reward_colour, svg_plot

SCORE_FIELDS = ("tasks", "trials", "simulations", "expected_simulations", "avg_reward", "pass_hat_k", "status")


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [*summary.get("domains", {}).items(), ("overall", summary.get("overall", {}))]


def score_table(summary: dict[str, Any]) -> str:
    """Tasks, simulations, average reward and pass^k per domain and overall. Each number carries
    data-field="<domain>:<field>", so a reader (or a test) can find it."""
    rows = summary_rows(summary)
    ks = sorted({k for _, d in rows for k in d.get("pass_hat_k", {})}, key=int)
    cols = [("tasks", "tasks"), ("trials", "trials"), ("simulations", "simulations"),
            ("expected_simulations", "expected"), ("avg_reward", "avg reward"),
            *[(f"pass^{k}", f"pass^{k}") for k in ks], ("status", "status")]
    head = "".join(f"<th>{esc(label)}</th>" for _, label in cols)
    body = []
    for name, d in rows:
        values = {**d, **{f"pass^{k}": v for k, v in d.get("pass_hat_k", {}).items()}}
        cells = "".join(f'<td data-field="{esc(name)}:{esc(key)}">{esc(fmt(values.get(key)))}</td>' for key, _ in cols)
        body.append(f'<tr class="{"overall" if name == "overall" else "domain"}"><td>{esc(name)}</td>{cells}</tr>')
    return f'<table class="scores"><tr><th>domain</th>{head}</tr>{"".join(body)}</table>'


def count_fields(summary: dict[str, Any]) -> list[str]:
    """Fields holding counts per category (termination reasons, failure categories, tokens, ...):
    read generically, so a category the summary gains shows up without a change here."""
    names: list[str] = []
    for _, d in summary_rows(summary):
        for key, value in d.items():
            if (key != "pass_hat_k" and isinstance(value, dict) and key not in names
                    and all(isinstance(v, (int, float, str)) for v in value.values())):
                names.append(key)
    return names


def other_fields(summary: dict[str, Any]) -> list[str]:
    """Single figures outside the score table (wall time, retried calls, costs, ...)."""
    names: list[str] = []
    for _, d in summary_rows(summary):
        for key, value in d.items():
            if key not in SCORE_FIELDS and key not in names and isinstance(value, (int, float, str)) \
                    and not isinstance(value, bool) and key != "error":
                names.append(key)
    return names


def category_tables(summary: dict[str, Any]) -> str:
    rows = summary_rows(summary)
    parts = []
    for key in count_fields(summary):
        cats = sorted({c for _, d in rows for c in d.get(key) or {}})
        if not cats:
            continue
        head = "".join(f"<th>{esc(name)}</th>" for name, _ in rows)
        body = "".join(
            f"<tr><td>{esc(c)}</td>"
            + "".join(f'<td data-field="{esc(name)}:{esc(key)}:{esc(c)}">'
                      f'{esc(fmt((d.get(key) or {}).get(c, 0), 2))}</td>'
                      for name, d in rows) + "</tr>" for c in cats)
        parts.append(f"<h3>{esc(key.replace('_', ' '))}</h3><table><tr><th></th>{head}</tr>{body}</table>")
    extra = other_fields(summary)
    if extra:
        head = "".join(f"<th>{esc(name)}</th>" for name, _ in rows)
        body = "".join(f"<tr><td>{esc(k.replace('_', ' '))}</td>"
                       + "".join(f'<td data-field="{esc(name)}:{esc(k)}">{esc(fmt(d.get(k), 2))}</td>'
                                 for name, d in rows)
                       + "</tr>" for k in extra)
        parts.append(f"<h3>other figures</h3><table><tr><th></th>{head}</tr>{body}</table>")
    errors = [(name, d["error"]) for name, d in rows if d.get("error")]
    parts += [f'<p class="err">{esc(name)} failed: {esc(err)}</p>' for name, err in errors]
    return "".join(parts)


def pass_k_plot(summary: dict[str, Any]) -> str:
    """Average reward per domain (bars) and pass^k against k (lines)."""
    rows = [(n, d) for n, d in summary_rows(summary) if d.get("avg_reward") is not None]
    if not rows:
        return "<p>No simulation has finished yet.</p>"

    def draw(fig: Any) -> None:
        left, right = fig.subplots(1, 2)
        left.bar([n for n, _ in rows], [d["avg_reward"] for _, d in rows], color="#4c8bd6")
        left.set_ylim(0, 1.05)
        left.set_title("average reward")
        for name, d in rows:
            ks = sorted(d.get("pass_hat_k", {}), key=int)
            right.plot([int(k) for k in ks], [d["pass_hat_k"][k] for k in ks], marker="o", label=name)
        right.set_ylim(0, 1.05)
        right.set_xlabel("k")
        right.set_title("pass^k")
        right.xaxis.get_major_locator().set_params(integer=True)
        right.legend(fontsize=8)
        fig.tight_layout()
    return svg_plot(draw)


def category_plot(summary: dict[str, Any], key: str) -> str:
    """One count field (termination reasons, failure categories) as stacked bars per domain."""
    rows = [(n, d.get(key) or {}) for n, d in summary.get("domains", {}).items()]
    cats = sorted({c for _, counts in rows for c, n in counts.items() if n})  # what happened, not every category
    if not cats:
        return ""

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        base = [0.0] * len(rows)
        for cat in cats:
            values = [counts.get(cat, 0) for _, counts in rows]
            ax.barh([n for n, _ in rows], values, left=base, label=cat)
            base = [b + v for b, v in zip(base, values, strict=True)]
        ax.set_xlabel("simulations" if key == "termination_reasons" else "simulations, or calls for retries")
        ax.set_title(key.replace("_", " "))
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return svg_plot(draw, height=0.6 + 0.45 * len(rows))


def sim_anchor(domain: str, index: int) -> str:
    return f"sim-{domain}-{index}"


def task_grid(domain: str, results: dict[str, Any], trials: int) -> str:
    """Tasks x trials, each cell coloured by its reward and linked to the conversation."""
    sims = results.get("simulations", [])
    where = {(s["task_id"], s.get("trial", 0)): i for i, s in enumerate(sims)}
    task_ids = [t["id"] for t in results.get("tasks", [])] or sorted({s["task_id"] for s in sims})
    head = "".join(f"<th>{t}</th>" for t in range(trials))
    rows = []
    for task_id in task_ids:
        cells = []
        for trial in range(trials):
            i = where.get((task_id, trial))
            if i is None:
                cells.append('<td class="missing">-</td>')
                continue
            sim = sims[i]
            reward = (sim.get("reward_info") or {}).get("reward")
            tip = f"task {task_id}, trial {trial}: reward {fmt(reward, 3)}, {sim.get('termination_reason')}"
            cells.append(f'<td style="background:{reward_colour(reward if reward is not None else 0.0)}" '
                         f'title="{esc(tip)}"><a href="#{sim_anchor(domain, i)}">{esc(fmt(reward, 2))}</a></td>')
        rows.append(f'<tr><td class="task">{esc(task_id)}</td>{"".join(cells)}</tr>')
    return (f'<table class="grid" data-domain="{esc(domain)}"><tr><th>task \\ trial</th>{head}</tr>'
            f'{"".join(rows)}</table>')


def pretty(value: Any, limit: int = 4000) -> str:
    """Tool arguments and results: indented JSON when they are JSON, as they are otherwise. Long texts stay
    as they are: indenting runs json's pure-Python encoder, the bulk of a big report's build time."""
    if isinstance(value, str):
        if len(value) > limit:
            return value
        with contextlib.suppress(ValueError):
            value = json.loads(value)
        if isinstance(value, str):
            return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def message_html(msg: dict[str, Any]) -> str:
    role = str(msg.get("role", "?"))
    label = {"assistant": "agent", "user": "user", "tool": "tool result", "system": "system"}.get(role, role)
    extra = []
    if msg.get("requestor") and role == "tool":
        extra.append(f"for the {msg['requestor']}")
    if msg.get("turn_idx") is not None:
        extra.append(f"turn {msg['turn_idx']}")
    parts = [f'<div class="role">{esc(label)}{" · " if extra else ""}{esc(", ".join(extra))}</div>']
    if msg.get("content"):
        parts.append(f'<pre class="{"err" if msg.get("error") else ""}">'
                     f'{esc(pretty(msg["content"]) if role == "tool" else msg["content"])}</pre>')
    for call in msg.get("tool_calls") or []:
        parts.append(f'<div class="call">calls <b>{esc(call.get("name"))}</b>'
                     f'<pre>{esc(pretty(call.get("arguments", {})))}</pre></div>')
    return f'<div class="msg {esc(role)}">{"".join(parts)}</div>'


def simulation_html(domain: str, index: int, sim: dict[str, Any]) -> str:
    """One conversation, closed until clicked: messages, tool calls and results, the reward breakdown."""
    info = sim.get("reward_info") or {}
    reward = info.get("reward")
    head = (f'task <b>{esc(sim.get("task_id"))}</b>, trial {esc(sim.get("trial", 0))}: '
            f'<span class="pill" style="background:{reward_colour(reward)}">reward {esc(fmt(reward, 3))}</span> '
            f'{esc(sim.get("termination_reason"))}, {esc(fmt(sim.get("duration"), 1))} s, '
            f'{len(sim.get("messages") or [])} messages')
    body = "".join(message_html(m) for m in sim.get("messages") or []) or "<p>No messages were recorded.</p>"
    return (f'<details class="sim" id="{sim_anchor(domain, index)}"><summary>{head}</summary>'
            f"<h3>reward breakdown</h3>{reward_breakdown(info)}<h3>conversation</h3>{body}</details>")


def check_rows(title: str, checks: list[dict[str, Any]], what: Callable[[dict[str, Any]], Any], met: str) -> str:
    rows = "".join(f"<tr><td><pre>{esc(what(c))}</pre></td><td>{'yes' if c.get(met) else 'no'}</td></tr>"
                   for c in checks)
    return f"<table><tr><th>{esc(title)}</th><th>met</th></tr>{rows}</table>"


def reward_breakdown(info: dict[str, Any]) -> str:
    """τ²-bench's reward info as a reader wants it: the reward, its parts, and each check met or not."""
    parts = [f"<p>reward <b>{esc(fmt(info.get('reward'), 3))}</b>"
             + "".join(f" · {esc(k)} {esc(fmt(v, 2))}" for k, v in (info.get("reward_breakdown") or {}).items())
             + (f" · database matches: {'yes' if info['db_check'].get('db_match') else 'no'}"
                if info.get("db_check") else "") + "</p>"]

    def call(a: dict[str, Any]) -> str:
        return f"{a.get('name')}({json.dumps(a.get('arguments', {}), ensure_ascii=False)})"

    tables = (("gold action", "action_checks", lambda c: call(c.get("action") or {}), "action_match"),
              ("information to communicate", "communicate_checks", lambda c: c.get("info"), "met"),
              ("environment assertion", "env_assertions", lambda c: pretty(c.get("env_assertion")), "met"),
              ("assertion on the conversation", "nl_assertions",
               lambda c: f"{c.get('nl_assertion')}\n{c.get('justification') or ''}".strip(), "met"))
    parts += [check_rows(title, info[key], what, met) for title, key, what, met in tables if info.get(key)]
    shown = {"reward", "reward_breakdown", "db_check", *(key for _, key, _, _ in tables)}
    rest = {k: v for k, v in info.items() if k not in shown and v not in (None, [], {})}
    if rest:
        parts.append(f"<pre>{esc(json.dumps(rest, indent=2, ensure_ascii=False))}</pre>")
    return "".join(parts)


CATEGORY_PLOTS = ("termination_reasons", "failures")


def plots(summary: dict[str, Any]) -> dict[str, str]:
    """The page's plots, by name: matplotlib's drawing is most of what a page costs to build."""
    return {"pass^k": pass_k_plot(summary), **{key: category_plot(summary, key) for key in CATEGORY_PLOTS}}


def report_html(summary: dict[str, Any], results: dict[str, dict[str, Any]], meta: dict[str, str],
                drawn: dict[str, str] | None = None) -> str:
    """report.html: scores, pass^k, failure categories, the tasks x trials grid, every conversation.
    results are the domains' τ²-bench results as JSON objects (already redacted); drawn, the plots when
    they were drawn already (the live page's, from an earlier summary), else they are drawn from this one."""
    drawn = drawn or plots(summary)
    sections = ["<h1>τ²-bench report</h1>",
                '<p class="meta">' + " · ".join(f"{esc(k)}: {esc(v)}" for k, v in meta.items()) + "</p>",
                "<h2>Scores</h2>", score_table(summary), drawn["pass^k"], "<h2>Failure categories</h2>",
                *[drawn[key] for key in CATEGORY_PLOTS],
                category_tables(summary), "<h2>Tasks × trials</h2>",
                "<p>Each cell is one simulation, coloured by its reward; click it for the conversation.</p>"]
    for domain, res in results.items():
        trials = (summary.get("domains", {}).get(domain, {}).get("trials")
                  or (res.get("info") or {}).get("num_trials") or 1)
        sections += [f"<h3>{esc(domain)}</h3>", task_grid(domain, res, int(trials))]
    sections.append("<h2>Conversations</h2>")
    for domain, res in results.items():
        sims = res.get("simulations", [])
        sections.append(f"<h3>{esc(domain)} ({len(sims)} simulations)</h3>")
        sections += [simulation_html(domain, i, s) for i, s in enumerate(sims)]
    return html_page(f"τ²-bench report: {meta.get('agent', '')}", "\n".join(sections))
