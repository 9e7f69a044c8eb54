"""--compare: earlier output folders side by side, with bootstrap intervals over tasks, paired differences
and flipped tasks; compare.md, compare.html and compare.json.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .pages import esc, html_page, svg_plot
from .results import comparable_fields
from .scoring import is_success, pass_hat_k
from .settings import Request
from .util import atomic_write, now_iso

BOOTSTRAP_RESAMPLES = 2000
CHANCE = ("Runs made without --deterministic differ by chance too (vLLM's batching changes greedy decoding): "
          "judge a difference by its interval, not by flipped tasks alone.")


@dataclass(frozen=True)
class OutputFolder:
    """An earlier run's output folder, as read from disk: its summary and its domains' results."""

    path: Path
    summary: dict[str, Any]
    results: dict[str, dict[str, Any]]  # domain -> τ²-bench results as a JSON object

    def task_rewards(self, domain: str) -> dict[str, list[float]]:
        """Each task's rewards, one per finished simulation."""
        rewards: dict[str, list[float]] = {}
        for sim in self.results.get(domain, {}).get("simulations", []):
            rewards.setdefault(sim["task_id"], []).append(float((sim.get("reward_info") or {}).get("reward") or 0.0))
        return rewards

    def settings(self, domain: str) -> dict[str, Any]:
        """What must match between compared folders: everything τ²-bench's resume checks but the agent."""
        res = self.results[domain]
        fields = comparable_fields(res["info"], [t["id"] for t in res.get("tasks", [])])
        return {k: v for k, v in fields.items() if k != "agent model"}


def read_output_folder(path: Path) -> OutputFolder:
    try:
        summary = json.loads((path / "summary.json").read_text())
        results = {d: json.loads((path / f"{d}.json").read_text()) for d in summary["domains"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a run_local.py output folder "
                         f"(summary.json and <domain>.json): {exc}") from None
    return OutputFolder(path, summary, results)


def incomparable(base: OutputFolder, other: OutputFolder) -> list[str]:
    """Why two folders' scores cannot be set side by side: other domains, user model, sampling, ..."""
    if set(base.results) != set(other.results):
        return [f"domains {' '.join(sorted(other.results))} vs {' '.join(sorted(base.results))}"]
    reasons = []
    for domain in base.results:
        try:
            mine, theirs = other.settings(domain), base.settings(domain)
        except (KeyError, TypeError):
            return [f"{domain}.json has no τ²-bench run info"]
        for key in theirs:
            if mine.get(key) != theirs[key]:
                shown = "differ" if key == "tasks" else f"{mine.get(key)} vs {theirs[key]}"
                reasons.append(f"{domain} {key} {shown}")
    return reasons


def task_scores(rewards: dict[str, list[float]], metric: str) -> dict[str, float]:
    """One number per task: its average reward, or its pass^k ('pass^2')."""
    if metric == "reward":
        return {t: sum(rs) / len(rs) for t, rs in rewards.items() if rs}
    k = int(metric.split("^")[1])
    return {t: pass_hat_k(len(rs), sum(map(is_success, rs)), k) for t, rs in rewards.items() if len(rs) >= k}


def bootstrap_ci(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval of the mean, resampling tasks with replacement (a fixed seed: the same
    folders always give the same interval)."""
    import numpy as np

    if not values:
        return None
    data = np.asarray(values, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))
    lo, hi = np.percentile(data[picks].mean(axis=1), [2.5, 97.5])
    return float(lo), float(hi)


def estimate(values: Sequence[float]) -> dict[str, Any]:
    ci = bootstrap_ci(values)
    return {"mean": sum(values) / len(values) if values else None, "ci95": list(ci) if ci else None,
            "tasks": len(values)}


def is_solved(rewards: list[float]) -> bool:
    """A task counts as solved when at least half of its trials succeed."""
    return sum(map(is_success, rewards)) * 2 >= len(rewards) > 0


def compare_folders(folders: Sequence[OutputFolder]) -> dict[str, Any]:
    """Per domain and overall: each folder's reward and pass^k with 95% intervals, the paired difference
    against the first folder on the tasks both ran, and the tasks that flipped."""
    domains = list(folders[0].results)
    rewards = [{d: f.task_rewards(d) for d in domains} for f in folders]
    pooled = [{f"{d}/{t}": rs for d in domains for t, rs in r[d].items()} for r in rewards]
    trials = min((len(rs) for r in pooled for rs in r.values()), default=1)
    metrics = ["reward", *[f"pass^{k}" for k in range(1, trials + 1)]]
    scopes = [*domains, "overall"]

    def per_scope(r: dict[str, dict[str, list[float]]], p: dict[str, list[float]],
                  scope: str) -> dict[str, list[float]]:
        return p if scope == "overall" else r[scope]

    table: dict[str, Any] = {"folders": [str(f.path) for f in folders], "metrics": metrics, "scopes": scopes,
                             "resamples": BOOTSTRAP_RESAMPLES, "scores": [], "differences": [], "flipped": []}
    base = [task_scores(per_scope(rewards[0], pooled[0], s), m) for s in scopes for m in metrics]
    for i, (r, p) in enumerate(zip(rewards, pooled, strict=True)):
        scores, diffs, cell = {}, {}, 0
        for scope in scopes:
            for metric in metrics:
                mine = task_scores(per_scope(r, p, scope), metric)
                scores[f"{scope}:{metric}"] = estimate(list(mine.values()))
                common = [t for t in mine if t in base[cell]]
                if i:
                    diffs[f"{scope}:{metric}"] = estimate([mine[t] - base[cell][t] for t in common])
                cell += 1
        table["scores"].append(scores)
        table["differences"].append(diffs)
        table["flipped"].append({} if not i else {
            "now solved": sorted(t for t in p if t in pooled[0] and is_solved(p[t]) and not is_solved(pooled[0][t])),
            "now failed": sorted(t for t in p if t in pooled[0] and not is_solved(p[t]) and is_solved(pooled[0][t]))})
    return table


def ci_text(est: dict[str, Any], signed: bool = False) -> str:
    if est["mean"] is None:
        return "-"
    sign = "+" if signed else ""
    lo, hi = est["ci95"]
    return f"{est['mean']:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"


def compare_markdown(table: dict[str, Any]) -> str:
    names = table["folders"]
    lines = ["# Checkpoints side by side", "",
             f"Baseline: `{names[0]}`. Intervals: 95%, bootstrap over tasks ({table['resamples']} resamples). "
             "Reward: the mean over tasks of each task's average reward. A task is solved when at least half "
             f"of its trials succeed. {CHANCE}", ""]
    for metric in table["metrics"]:
        head = ["folder", *table["scopes"]]
        lines += [f"## {metric}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, scores in zip(names, table["scores"], strict=True):
            lines.append("| " + " | ".join([f"`{name}`", *[ci_text(scores[f"{s}:{metric}"]) for s in table["scopes"]]])
                         + " |")
        lines.append("")
    if len(names) > 1:
        for metric in table["metrics"]:
            head = ["folder", *table["scopes"]]
            lines += [f"## {metric}: difference against `{names[0]}` (paired, tasks both ran)", "",
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for name, diffs in zip(names[1:], table["differences"][1:], strict=True):
                cells = [f"{ci_text(diffs[f'{s}:{metric}'], signed=True)} (n={diffs[f'{s}:{metric}']['tasks']})"
                         for s in table["scopes"]]
                lines.append("| " + " | ".join([f"`{name}`", *cells]) + " |")
            lines.append("")
        lines += ["## Tasks that flipped", ""]
        for name, flips in zip(names[1:], table["flipped"][1:], strict=True):
            for kind, tasks in flips.items():
                lines.append(f"- `{name}` {kind} ({len(tasks)}): " + (", ".join(tasks) or "none"))
    return "\n".join(lines) + "\n"


def compare_plot(table: dict[str, Any]) -> str:
    """Reward per domain and overall, a bar per folder, its 95% interval as an error bar."""
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        scopes, width = table["scopes"], 0.8 / len(table["folders"])
        short = [Path(name).name or name for name in table["folders"]]
        labels = short if len(set(short)) == len(short) else table["folders"]
        for i, (name, scores) in enumerate(zip(labels, table["scores"], strict=True)):
            ests = [scores[f"{s}:reward"] for s in scopes]
            means = [e["mean"] or 0.0 for e in ests]
            errs = [[m - (e["ci95"] or [m, m])[0] for m, e in zip(means, ests, strict=True)],
                    [(e["ci95"] or [m, m])[1] - m for m, e in zip(means, ests, strict=True)]]
            ax.bar([x + i * width for x in range(len(scopes))], means, width, yerr=errs, capsize=3, label=name)
        ax.set_xticks([x + width * (len(table["folders"]) - 1) / 2 for x in range(len(scopes))], scopes)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("reward (95% CI)")
        ax.legend(fontsize=8)
    return svg_plot(draw)


def compare_html(table: dict[str, Any]) -> str:
    names = table["folders"]
    parts = ["<h1>Checkpoints side by side</h1>",
             f'<p class="meta">baseline: {esc(names[0])} · intervals: 95%, bootstrap over tasks '
             f'({table["resamples"]} resamples) · written {esc(now_iso())}</p><p>{esc(CHANCE)}</p>',
             compare_plot(table)]

    def grid(title: str, rows: list[tuple[str, dict[str, Any]]], metric: str, signed: bool) -> str:
        head = "".join(f"<th>{esc(s)}</th>" for s in table["scopes"])
        body = "".join(
            f"<tr><td>{esc(name)}</td>" + "".join(
                f'<td data-field="{esc(name)}:{esc(s)}:{esc(metric)}{":diff" if signed else ""}">'
                f'{esc(ci_text(ests[f"{s}:{metric}"], signed))}'
                + (f' (n={ests[f"{s}:{metric}"]["tasks"]})' if signed else "") + "</td>" for s in table["scopes"])
            + "</tr>" for name, ests in rows)
        return f"<h2>{esc(title)}</h2><table><tr><th>folder</th>{head}</tr>{body}</table>"

    for metric in table["metrics"]:
        parts.append(grid(metric, list(zip(names, table["scores"], strict=True)), metric, False))
    for metric in table["metrics"] if len(names) > 1 else []:
        parts.append(grid(f"{metric}: difference against {names[0]} (paired, tasks both ran)",
                          list(zip(names[1:], table["differences"][1:], strict=True)), metric, True))
    if len(names) > 1:
        parts.append("<h2>Tasks that flipped</h2><ul>" + "".join(
            f"<li>{esc(name)} {esc(kind)} ({len(tasks)}): {esc(', '.join(tasks) or 'none')}</li>"
            for name, flips in zip(names[1:], table["flipped"][1:], strict=True)
            for kind, tasks in flips.items()) + "</ul>")
    return html_page("Checkpoints side by side", "\n".join(parts))


def print_comparison(console: Any, table: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="reward: 95% CI by bootstrap over tasks; paired difference against the first folder")
    for col in ("folder", "domain", "reward", "vs first", "tasks", "now solved", "now failed"):
        out.add_column(col, justify="left" if col in ("folder", "domain") else "right", no_wrap=True)
    for i, (name, scores, diffs) in enumerate(zip(table["folders"], table["scores"], table["differences"],
                                                  strict=True)):
        for scope in table["scopes"]:
            key = f"{scope}:reward"
            flips = [t for kind in ("now solved", "now failed") for t in [table["flipped"][i].get(kind)]]
            if i and scope != "overall":
                flips = [[t for t in ts if t.startswith(f"{scope}/")] for ts in flips]
            out.add_row(name if scope == table["scopes"][0] else "", scope, ci_text(scores[key]),
                        ci_text(diffs[key], signed=True) if i else "", str(scores[key]["tasks"]),
                        *[str(len(ts)) if i else "" for ts in flips], end_section=scope == "overall")
    if not console.is_terminal:  # a log file is not 80 columns wide
        console = Console(width=160, file=console.file, highlight=False)
    console.print(out)


def compare_outputs(request: Request, console: Any) -> int:
    """--compare: read earlier output folders, write compare.md and compare.html, print the table."""
    assert request.compare  # cli calls it only for --compare
    folders = [read_output_folder(Path(p)) for p in request.compare]
    for other in folders[1:]:
        reasons = incomparable(folders[0], other)
        if reasons and not request.force:
            raise UsageError(f"{other.path} is not comparable with {folders[0].path}: {'; '.join(reasons)} "
                             "(--force compares anyway)")
    table = compare_folders(folders)
    out = Path(request.output_dir)
    atomic_write(out / "compare.md", compare_markdown(table))
    atomic_write(out / "compare.html", compare_html(table))
    atomic_write(out / "compare.json", json.dumps(table, indent=2) + "\n")
    print_comparison(console, table)
    console.print(f"comparison in {out}/ (compare.md, compare.html, compare.json). {CHANCE}", markup=False)
    return 0
