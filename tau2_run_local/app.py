"""One evaluation from start to end: check, start the servers, write the endpoint file, simulate, report,
stop. The process-wide settings an evaluation needs (signal handlers, the open-file limit) are set here.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

from .checks import check_inputs
from .dry_run import describe_plan
from .endpoint_file import config_pools, write_model_config
from .errors import ServerFailed, UsageError
from .evaluation import Evaluation, schedule
from .executors import make_executor
from .first_turn import context_line, count_first_turns, preflight
from .fleet import Fleet
from .host import survey_host
from .loop import evaluate
from .plan import Plan
from .planner import build_plan
from .progress import ProgressView
from .report_files import LiveReport, how_to_finish, print_summary, write_report
from .results import open_domain
from .routing import Router
from .sbatch import close_job, earlier_jobs, job_script, submit_job, this_job
from .scoring import parser_hint
from .settings import Request
from .tasks import load_tasks, trial_seeds
from .tau2_loader import load_tau2
from .tracking import report_evaluation
from .util import now_iso, secret_values
from .workers import make_simulators


def raise_open_file_limit() -> tuple[int, int]:
    """Many conversations in flight need many sockets, and high concurrency has crashed servers with "Too
    many open files": the soft limit goes up to the hard one, for the launcher and the servers it starts."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP take the Ctrl-C path, so every way of stopping the launcher cleans up. A
    signal the caller chose to ignore stays ignored (nohup ignores SIGHUP, a shell's `&` SIGINT)."""
    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, interrupt)


def run_key(plan: Plan, env: dict[str, str]) -> str:
    """The key this run's keyed servers require: the one in --api-key-env's variable, else a fresh random
    one, made for this run only (the servers bind beyond loopback, where anyone on the network reaches
    them). It is never written: not in a file, a log line, a command line or os.environ."""
    if plan.api_key_env:
        return env.get(plan.api_key_env, "")
    return token_urlsafe(32) if any(s.keyed for s in plan.servers) else ""


def evaluate_checkpoint(request: Request, argv: Sequence[str], console: Any) -> int:
    """One evaluation: check, start the servers, simulate, report, stop."""
    env = dict(os.environ)
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    started = now_iso()

    def say(text: str) -> None:
        console.print(f"{now_iso()} {text}", markup=False)

    job = this_job(env)
    if job and (job.resubmits or job.restarts) and request.overwrite:  # the chain's first job started afresh
        say(f"SLURM job {job.job_id} resumes its chain's results: --overwrite was for the first job only")
        request = replace(request, overwrite=False)
    # 1. check every input before any process starts
    try:
        host = survey_host(request, env)
        plan, nodes = build_plan(request, host), host.nodes
        check_inputs(request, plan, env)
        if request.sbatch:
            script, handed = job_script(request, argv, nodes, Path.cwd(), secret_values(env, argv))
            if request.dry_run:
                console.print(script, markup=False)
                return 0
            return submit_job(script, handed, plan.log_dir / f"run_local_sbatch_{stamp}.sh", env)
        log_path = plan.log_dir / f"run_local_{stamp}.log"
        turns = count_first_turns(request, plan, lambda: load_tau2(log_path))
        context = context_line(request, turns)
        if request.dry_run:
            console.print("\n".join(filter(None, [describe_plan(plan), context])), markup=False)
            return 0
        tau2_run = load_tau2(log_path)
        tasks = {d: load_tasks(tau2_run, d, plan.eval) for d in plan.eval.domains}
        key = run_key(plan, env)
        secrets = secret_values(env, argv, (key,))
        runs = {d: open_domain(tau2_run, plan, d, tasks[d], secrets) for d in plan.eval.domains}
    except UsageError as exc:
        print(f"run_local.py: error: {exc}", file=sys.stderr)
        return 2

    install_signal_handlers()
    raise_open_file_limit()
    done_before = sum(run.done for run in runs.values())
    began = time.monotonic()
    fleet = Fleet(plan.servers, plan.log_dir, request.server_timeout, request.stagger_delay, say,
                  make_executor(plan.executor, env), key)
    keys = plan.endpoint_keys(key)
    agent_pool = Router(plan.agent_urls, keys)
    user_pool = Router(plan.user_urls, keys) if plan.user_urls else None
    ev = Evaluation(tau2_run, plan, agent_pool, user_pool, runs, say, keys=keys)
    code, stopped_by = 0, ""
    try:
        # the simulation workers (if any) load τ²-bench while the servers start
        with fleet, contextlib.closing(make_simulators(ev, log_path)) as sims:
            # 2. start the servers and wait until each one serves; probe each pool before any simulation
            for note in filter(None, [*(f"parsers: {p.line()}" for p in plan.parsers), context]):
                say(note)
            if plan.servers:
                say(f"starting {len(plan.servers)} server(s); logs in {plan.log_dir}")
                say(f"all servers serve after {fleet.start():.0f}s")
            stop = None if request.skip_preflight or all(r.done >= r.total for r in runs.values()) else \
                preflight(plan, turns, say, keys)
            if stop:
                print(f"run_local.py: preflight: {stop}; stopped before any simulation, nothing scored "
                      f"(--skip-preflight runs it anyway)", file=sys.stderr)
                return 1
            # 3. write the endpoint file
            write_model_config(plan.config_path, config_pools(plan))
            say(f"wrote {plan.config_path}")
            # 4. run the simulations
            for run in runs.values():
                if run.done:
                    say(f"{run.domain}: resuming, {run.done}/{run.total} simulations already done")
                run.save()
                if run.side_path.exists():  # an --overwrite starts this record afresh too
                    run.save_not_scored()
            batches = schedule(runs, trial_seeds(plan.eval.seed, plan.eval.num_trials), tasks,
                               plan.eval.parallel_domains)
            with ProgressView(console, ev, fleet if plan.servers else None) as view:
                evaluate(ev, batches, sims, fleet if plan.servers else None, view, request.restart_dead_servers,
                         LiveReport(ev, secrets).maybe_write)
            code = 1 if any(run.error or run.done < run.total for run in runs.values()) else 0
    except ServerFailed as exc:
        print(f"run_local.py: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt as exc:
        print("run_local.py: interrupted; servers stopped, finished simulations kept", file=sys.stderr)
        code, stopped_by = 130, str(exc) or "Ctrl-C"
    # 5. a --sbatch job stopped with work left is submitted again; write the results and print the scores
    # (also after a failure: what finished is kept)
    counts = {"simulations_finished": sum(run.done for run in runs.values()) - done_before,
              "simulations_interrupted": ev.interrupted,
              "simulations_left": sum(run.total - run.done for run in runs.values())}
    jobs = None if job is None else close_job(job, env, stopped_by, counts,
                                              earlier_jobs(plan.eval.output_dir / "summary.json", job), say)
    summary = write_report(ev, plan, argv, started, time.monotonic() - began, nodes, secrets, jobs)
    print_summary(console, summary)
    console.print(f"results in {plan.eval.output_dir}/ (report.html, summary.json, summary.md, manifest.json)",
                  markup=False)
    for run in runs.values():
        if run.error:
            print(f"run_local.py: {run.domain} stopped: {run.error}", file=sys.stderr)
    hint = parser_hint((sim for run in runs.values() for sim in run.results.simulations), plan.agent_parser())
    if hint:
        print(hint, file=sys.stderr)
    unfinished = how_to_finish(runs, argv, secrets)
    if unfinished:
        print(unfinished, file=sys.stderr)
    if code == 0 and request.report_to:
        report_evaluation(request, plan, secrets)
    return code
