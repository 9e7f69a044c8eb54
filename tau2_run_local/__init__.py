"""tau2_run_local: score a tool-using agent checkpoint on τ²-bench with locally served vLLM models.

run_local.py (beside this package), `python -m tau2_run_local` and the `run-local` command all end in
cli.run(). A run's data flows down this page and back up: the command line becomes a Request, the host
a Host, the two a Plan; the plan starts a fleet of servers; simulations run over them; their results
become scores, files and pages.

Layers, top to bottom. A module imports only from its own layer (never in a cycle) or a layer below;
the plan and the layers under it import no third-party package at module level; only cli, app,
tau2_loader and worker_main touch process-wide state (signal handlers, rlimits, os.environ, the
loguru sink, the τ²-bench registry, os._exit). tests/test_layers.py holds all of this true.

  command line    cli              the request read at the edge; the one exit path
  app             app              one evaluation: check, start, simulate, report, stop
                  watch            --watch: each new checkpoint, a leaderboard across them
                  compare          --compare: output folders side by side, with intervals
                  sbatch           --sbatch: a job script for a SLURM allocation; resubmitted if stopped
                  dry_run          --dry-run: the plan as a person reads it
                  first_turn       the first turn: its tokens before the start, the preflight once servers serve
  reports         report_files     summary.json/.md, manifest.json, report.html (live), the table
                  report_page      report.html's content
                  leaderboard      leaderboard.md/.html
                  pages            what the HTML pages share: page, plots, colours
                  scoring          average reward, pass^k, failures, tokens, cost
                  tracking         --report-to: an evaluation's or a watch's settings and scores, sent
  evaluation      loop             the evaluation loop: in flight, recorded, servers watched
                  progress         the live view and log lines
                  workers          simulations on threads or in worker processes
                  worker_main      a worker process's entry
                  evaluation       one simulation with stock τ²-bench, every failure judged
                  concurrency      simulations in flight, steered by vLLM's /metrics
                  results          jobs, outcomes, a domain's results on disk, resume
                  tasks            a domain's tasks and trial seeds, as `tau2 run` picks them
  τ²-bench hooks  tau2_loader      τ²-bench loaded once a process, our classes registered
                  agents           τ²-bench's agents and user simulator, routed and guarded
                  experts          the call_expert tool and the hand-over of a turn
                  preflight        probes shaped like a domain's first turn; the verdict on their replies
                  lean             τ²-bench's per-simulation work done once a process
  calls           faults           what a failed call means; retries within a budget
                  pacing           calls in flight and per minute; backoff
                  routing          the least busy live server holds a conversation
  fleet           fleet            servers started in lanes, waited for, watched, stopped
                  executors        local process groups or SLURM job steps, one interface
  host            checks           what can be known wrong before anything starts
                  host             GPUs, memory, weights, ports, vLLM's flags (kept); survey_host -> Host
                  slurm_discovery  the allocation's nodes, CPUs, GPUs, addresses; the executor
                  endpoint_file    model_config_local.json, written and read
  planner         planner          Request + Host -> Plan, pure
                  expert_plan      experts: served pools, endpoint-file models, APIs
                  servers          each server's exact command and environment
                  tool_parsers     the vLLM parsers a checkpoint's files call for; the installed vLLM's names
                  vllm_flags       the flags of the servers' commands that the installed vLLM does not take
                  placement        servers on GPUs, lanes, KV-cache sizes
  plan            plan             the plan's frozen dataclasses, and Host
                  validation       checks and parsers of the request's values
                  settings         the command line and the Request it becomes
                  defaults         the launcher's fixed choices
  utilities       util             atomic writes, time, redaction, the rerun command
                  readiness        is a server serving (/health, /v1/models), with its key
                  errors           bad input (exit 2) and a failed server (exit 1)
                  trackers         W&B, MLflow, TensorBoard: one point per checkpoint step, a ledger
"""
__version__ = "0.2.0"
