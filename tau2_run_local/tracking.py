"""--report-to for the launcher: the settings an evaluation or a watch reports as params, the Reporting of
its output folder, and one evaluated folder (summary.json, report.html) logged at its checkpoint's step.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import trackers
from .plan import Plan
from .settings import Request

FILES = ("report.html", "summary.json")


def plan_settings(plan: Plan) -> dict[str, Any]:
    """One evaluation's settings, as planned."""
    ev = plan.eval
    agent = next((s.model for s in plan.servers if s.role == "agent"), plan.agent_name)
    return {"agent_model": agent, "user_model": plan.user_llm, "agent_llm_args": ev.agent_llm_args,
            "user_llm_args": ev.user_llm_args, "max_steps": ev.max_steps, "num_trials": ev.num_trials,
            "domains": ev.domains, "task_set_name": ev.task_set_name, "task_split_name": ev.task_split_name,
            "seed": ev.seed, "experts": {e.name: e.model for e in plan.experts}}


def request_settings(request: Request) -> dict[str, Any]:
    """A watch's settings, as asked for (each checkpoint's own plan is made when it is evaluated)."""
    def args(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return text

    return {"agent_model": request.watch, "user_model": request.user_model or request.user_llm,
            "agent_llm_args": args(request.agent_llm_args), "user_llm_args": args(request.user_llm_args),
            "max_steps": request.max_steps, "num_trials": request.num_trials, "domains": request.domains,
            "task_set_name": request.task_set_name, "task_split_name": request.task_split_name,
            "seed": request.seed, "experts": dict(e.split("=", 1) for e in request.expert if "=" in e)}


def open_reporting(request: Request, folder: Path, settings: dict[str, Any],
                   secrets: Iterable[str]) -> trackers.Reporting:
    secrets = tuple(secrets)
    target = trackers.Target(Path(folder), request.report_project, request.report_run_name,
                             trackers.params(settings, secrets))
    return trackers.Reporting(trackers.expand(request.report_to), target, secrets)


def warn(warnings: Iterable[str]) -> None:
    for text in warnings:
        print(f"run_local.py: warning: {text}", file=sys.stderr)


def log_folder(reporting: trackers.Reporting, step: int, folder: Path) -> None:
    """An evaluated output folder's scores and files at `step` (a step already logged costs nothing)."""
    if not reporting.names:
        return
    summary = json.loads((folder / "summary.json").read_text())
    warn(reporting.log(step, summary, [folder / f for f in FILES if (folder / f).is_file()]))


def report_evaluation(request: Request, plan: Plan, secrets: Iterable[str]) -> None:
    """One complete evaluation, at the step its checkpoint's folder name gives (else 0)."""
    reporting = open_reporting(request, plan.eval.output_dir, plan_settings(plan), secrets)
    try:
        log_folder(reporting, trackers.checkpoint_step(Path(request.agent_model or plan.agent_name).name, 0),
                   plan.eval.output_dir)
    finally:
        warn(reporting.close())
