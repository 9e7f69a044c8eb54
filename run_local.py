#!/usr/bin/env python3
"""Score a tool-using agent checkpoint on τ²-bench with locally served vLLM models, in one command.

What a run does (main() at the bottom reads the same way):
  1. Check every input before any process starts: bad input is one line on stderr and exit code 2.
  2. Start the pools of vLLM servers (the agent's, a local user simulator's, the experts'), pinned to
     GPUs on this machine or as job steps of a SLURM allocation, and wait until each one serves.
  3. Write the endpoint file (model_config_local.json) atomically.
  4. Run τ²-bench's simulations, each conversation held by the least busy live server; a fault of the
     machinery is retried, never scored.
  5. Write <domain>.json (τ²-bench's results format), report.html, summary.json, summary.md and
     manifest.json, and print the scores.
  6. Stop every process it started: on success, on error, on Ctrl-C and on SIGTERM.

Run the same command again and it resumes: finished simulations are kept, only missing ones run.
--compare reads earlier output folders instead; --watch runs all of this for each new checkpoint;
--sbatch submits it as a SLURM job.
"""
from tau2_run_local.app import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.checks import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.cli import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.compare import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.concurrency import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.defaults import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.dry_run import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.endpoint_file import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.errors import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.evaluation import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.executors import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.executors.base import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.executors.local import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.executors.slurm import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.expert_plan import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.experts import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.faults import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.fleet import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.host import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.leaderboard import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.loop import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.pacing import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.pages import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.placement import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.plan import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.planner import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.progress import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.readiness import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.report_files import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.report_page import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.results import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.routing import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.sbatch import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.scoring import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.servers import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.settings import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.slurm_discovery import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.tasks import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.tau2_loader import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.util import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.validation import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.watch import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.worker_main import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local.workers import *  # noqa: F401,F403  (re-exported for the tests while they move)
from tau2_run_local import __version__  # noqa: F401
from tau2_run_local.cli import main, run  # noqa: F401

if __name__ == "__main__":
    run()
