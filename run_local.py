#!/usr/bin/env python3
"""Score a tool-using agent checkpoint on τ²-bench with locally served vLLM models, in one command:

    python run_local.py --agent-model $CKPT_DIR

What a run does (tau2_run_local.app.evaluate_checkpoint reads the same way):
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
--sbatch submits it as a SLURM job. `python run_local.py --help` lists every option.

The code lives in the tau2_run_local package beside this file (its docstring draws the layers); this
file works from a plain checkout with no install, as do `python -m tau2_run_local` and, once installed,
the `run-local` command.
"""
from tau2_run_local import __version__  # noqa: F401  (run_local.__version__, as before)
from tau2_run_local.cli import main, run  # noqa: F401  (run_local.main(argv) for scripts that call it)

if __name__ == "__main__":
    run()
