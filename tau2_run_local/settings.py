"""The command line, read once: every option with its default and help (Request.add_cli_args), and the
Request it becomes (Request.from_cli_args). Nothing below this module sees argparse.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from . import __version__
from .defaults import (
    AGENTS,
    DEFAULT_DOMAINS,
    DEFAULT_LLM_ARGS,
    KNOWN_DOMAINS,
    MAX_ERRORS,
    REQUEST_TIMEOUT_S,
    RETRY_TIMEOUT_S,
    SEED_SCRIPT_SERVERS,
    USERS,
)

EXAMPLES = """\
examples:
  # score a checkpoint on all three domains, 4 servers on 4 GPUs, GPT-4o as the user simulator
  python run_local.py --agent-model $CKPT_DIR

  # 8 GPUs: 3 agent servers of tensor-parallel 2, and a local user simulator on GPUs 6,7
  python run_local.py --agent-model $CKPT_DIR --domains retail airline \\
      --gpu-ids 0,1,2,3,4,5 --tensor-parallel-size 2 --num-servers 3 \\
      --user-model /models/Qwen3-32B --user-gpu-ids 6,7 --user-tensor-parallel-size 2

  # fully offline on one machine: the agent's own servers also play the user
  python run_local.py --agent-model $CKPT_DIR --served-model-name agent --user-llm agent

  # servers already up (here or on other hosts): evaluate against the endpoint file
  python run_local.py --skip-server-start --model-config-path model_config_local.json

  # inside a SLURM allocation: every server a job step over its nodes; or submit it from a login node
  python run_local.py --agent-model $CKPT_DIR --num-servers 8
  python run_local.py --agent-model $CKPT_DIR --num-servers 8 --sbatch --slurm-nodes 2 --slurm-time 04:00:00

  # an orchestrator: the agent can hand a turn to an API expert or to a local 32B expert on GPUs 6,7
  python run_local.py --agent-model $CKPT_DIR --gpu-ids 0,1,2,3,4,5 \\
      --expert expert-1=gpt-4o --expert expert-3=/models/Qwen3-32B \\
      --expert-tensor-parallel-size expert-3=2 --expert-gpu-ids expert-3=6,7

  # show GPU placement, ports and the exact commands, start nothing
  python run_local.py --agent-model $CKPT_DIR --dry-run

Pass vLLM flags through with --vllm-arg=--enforce-eager (the '=' keeps argparse from eating them).
Rerunning the same command resumes; --overwrite starts the results afresh.
"""


@dataclass(frozen=True)
class Request:
    """What the user asked for, typed: the command line read once, at the edge. Everything below the
    command line takes a Request, never argparse's Namespace; the parser (add_cli_args) holds the
    defaults, so build one with parse_request(argv, env) and vary it with dataclasses.replace."""

    # models
    agent_model: str | None
    served_model_name: str | None
    user_llm: str
    user_api_base: str | None
    user_model: str | None
    user_gpu_ids: str | None
    user_tensor_parallel_size: int
    # servers
    num_servers: int | None
    gpu_ids: str | None
    tensor_parallel_size: int
    servers_per_gpu: int
    gpu_memory_utilization: float | None
    max_model_len: int | None
    tool_call_parser: str
    reasoning_parser: str
    chat_template: str | None
    skip_preflight: bool
    vllm_arg: tuple[str, ...]
    host: str | None
    start_port: str
    stagger_delay: float | None
    server_timeout: float
    restart_dead_servers: bool
    skip_server_start: bool
    model_config_path: str
    log_dir: str
    api_key_env: str | None
    # SLURM
    executor: str
    sbatch: bool
    slurm_partition: str | None
    slurm_account: str | None
    slurm_time: str | None
    slurm_nodes: int | None
    sbatch_arg: tuple[str, ...]
    slurm_max_resubmits: int
    # evaluation
    domains: tuple[str, ...]
    num_tasks: int | None
    task_ids: tuple[str, ...] | None
    num_trials: int
    max_steps: int
    max_concurrency: int | None
    workers: int | None
    seed: int
    agent_llm_args: str
    user_llm_args: str
    max_new_tokens: int | None
    max_errors: int
    task_set_name: str | None
    task_split_name: str
    agent: str
    user: str
    parallel_domains: bool
    deterministic: bool
    overwrite: bool
    output_dir: str
    # experts: models the agent can hand a turn to (the orchestration setting)
    expert: tuple[str, ...]
    expert_description: tuple[str, ...]
    expert_info: str | None
    expert_servers: tuple[str, ...]
    expert_tensor_parallel_size: tuple[str, ...]
    expert_gpu_ids: tuple[str, ...]
    agent_policy_addendum: str | None
    price: tuple[str, ...]
    # faults and pacing (a fault of the machinery is retried, never scored)
    retry_timeout: float
    request_timeout: float
    user_max_concurrency: int | None
    user_max_rpm: float | None
    # comparing checkpoints (no server, no evaluation)
    compare: tuple[str, ...] | None
    force: bool
    # watching a training run
    watch: str | None
    watch_once: bool
    watch_interval: float
    # reporting to experiment trackers
    report_to: tuple[str, ...]
    report_project: str | None
    report_run_name: str | None
    # what to do
    dry_run: bool

    @staticmethod
    def add_cli_args(p: argparse.ArgumentParser) -> None:
        """Every option, with its default and help: the seed script's, plus placement and evaluation."""
        m = p.add_argument_group("models")
        m.add_argument("--agent-model",
                       help="agent checkpoint folder (default: $CKPT_DIR)")
        m.add_argument("--served-model-name",
                       help="model name the agent servers answer to; the key of the endpoint file "
                            "(default: the --agent-model path, as vLLM does)")
        m.add_argument("--user-llm", default="gpt-4o",
                       help="user-simulator model: a litellm name (gpt-4o, claude-...), a name served at "
                            "--user-api-base, or the agent's served name to let the agent servers play the user "
                            "(default: gpt-4o)")
        m.add_argument("--user-api-base", help="OpenAI-compatible URL serving --user-llm, e.g. http://host:8000/v1")
        m.add_argument("--user-model", help="user-simulator checkpoint: start a vLLM server for it in the same fleet")
        m.add_argument("--user-gpu-ids", help="GPUs for the --user-model server (default: the last free ones)")
        m.add_argument("--user-tensor-parallel-size", type=int, default=1, help="GPUs per user server (default: 1)")

        s = p.add_argument_group("servers")
        s.add_argument("--num-servers", type=int,
                       help=f"agent servers to start (default: {SEED_SCRIPT_SERVERS}, capped to the GPU groups "
                            "available; 1 on a machine without GPU)")
        s.add_argument("--gpu-ids", help="comma-separated GPU ids to use (default: every visible GPU, "
                                          "honouring CUDA_VISIBLE_DEVICES)")
        s.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per agent server (default: 1)")
        s.add_argument("--servers-per-gpu", type=int, default=1,
                       help="agent servers sharing one GPU group, for small models (default: 1)")
        s.add_argument("--gpu-memory-utilization", type=float,
                       help="vLLM memory share per server (default: vLLM's 0.9, split when servers share a GPU)")
        s.add_argument("--max-model-len", type=int, help="context length (telecom needs ~16k tokens)")
        s.add_argument("--tool-call-parser", default="auto",
                       help="vLLM tool-call parser of every server; auto: the one each model's chat template shows "
                            "(hermes where it shows no format known here); --dry-run says which and why "
                            "(default: auto)")
        s.add_argument("--reasoning-parser", default="auto",
                       help="vLLM reasoning parser of the agent's servers, or none; auto: the one the chat "
                            "template's thinking tags call for, none without them (the user simulator's and "
                            "experts' servers follow their own templates) (default: auto)")
        s.add_argument("--chat-template", help="chat template file for the agent model")
        s.add_argument("--skip-preflight", action="store_true",
                       help="start simulating without the preflight: a few calls to each pool, shaped like the "
                            "run's first turn, that stop the run at once when the replies show a wrong parser, "
                            "too short a context or thinking text")
        s.add_argument("--vllm-arg", action="append", default=[], metavar="ARG",
                       help="extra vLLM flag, repeatable: --vllm-arg=--enforce-eager")
        s.add_argument("--host", help="address the servers bind (default: 127.0.0.1; 0.0.0.0 under SLURM, so that "
                                       "other nodes reach them)")
        s.add_argument("--start-port", default="1900",
                       help="first server port, or 'auto' for free ones (default: 1900)")
        s.add_argument("--stagger-delay", type=float,
                       help="old behaviour: start servers this many seconds apart regardless of health "
                            "(default: a server's successor on its GPU starts as soon as it serves)")
        s.add_argument("--server-timeout", type=float, default=600,
                       help="seconds a server may take to serve (default: 600)")
        s.add_argument("--restart-dead-servers", action="store_true",
                       help="restart a server that dies during the evaluation, in place")
        s.add_argument("--skip-server-start", action="store_true",
                       help="use the servers listed in --model-config-path (they may be on other hosts)")
        s.add_argument("--model-config-path", default="model_config_local.json",
                       help="endpoint file written (or, with --skip-server-start, read) "
                            "(default: model_config_local.json)")
        s.add_argument("--log-dir", default="logs", help="server and run logs (default: logs)")
        s.add_argument("--api-key-env", metavar="NAME",
                       help="environment variable holding the servers' key: the one servers already up expect "
                            "(--skip-server-start, --user-api-base), and the one this run's servers require instead "
                            "of a fresh key (servers bound beyond loopback, as under SLURM, always get one) "
                            "(default: none)")

        c = p.add_argument_group("SLURM")
        c.add_argument("--executor", choices=("auto", "local", "slurm"), default="auto",
                       help="where servers run: 'local' processes on this machine, or 'slurm' job steps over the "
                            "nodes of the allocation this runs in (default: auto, slurm inside an allocation)")
        c.add_argument("--sbatch", action="store_true",
                       help="from a login node: write a job script with the resources the plan needs, submit it "
                            "and print how to follow it; the job runs this same command")
        c.add_argument("--slurm-partition", help="--sbatch: partition")
        c.add_argument("--slurm-account", help="--sbatch: account")
        c.add_argument("--slurm-time", help="--sbatch: time limit, e.g. 04:00:00")
        c.add_argument("--slurm-nodes", type=int, help="--sbatch: nodes to allocate (default: 1)")
        c.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                       help="--sbatch: another #SBATCH line, repeatable: --sbatch-arg=--qos=high")
        c.add_argument("--slurm-max-resubmits", type=int, default=3, metavar="N",
                       help="--sbatch: times a job stopped by its time limit or preemption (SIGTERM) with "
                            "simulations left submits itself again, to resume in the same folders (default: 3)")

        e = p.add_argument_group("evaluation")
        e.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS), metavar="DOMAIN",
                       help=f"domains to run, of {', '.join(KNOWN_DOMAINS)} (default: {' '.join(DEFAULT_DOMAINS)})")
        e.add_argument("--num-tasks", type=int, help="first N tasks of each domain (default: all)")
        e.add_argument("--task-ids", nargs="+", metavar="ID", help="only these task ids")
        e.add_argument("--num-trials", type=int, default=1, help="trials per task, for pass^k (default: 1)")
        e.add_argument("--max-steps", type=int, default=200, help="steps per simulation (default: 200)")
        e.add_argument("--max-concurrency", type=int,
                       help="simulations in flight at once, fixed (default: adaptive: 16 per agent server at "
                            "first, growing to at most 256 per server while vLLM's /metrics show no request "
                            "waiting and room in the KV cache)")
        e.add_argument("--workers", type=int,
                       help="processes that run the simulations; one is GIL-bound at about 1.3 simulations a "
                            "second (default: one per 8 simulations of the ceiling, at most half the CPUs; "
                            "1 runs them in the launcher's own process)")
        e.add_argument("--seed", type=int, default=300, help="τ²-bench seed (default: 300)")
        e.add_argument("--agent-llm-args", default=DEFAULT_LLM_ARGS, metavar="JSON",
                       help=f"the agent's sampling arguments, as `tau2 run` takes them (default: {DEFAULT_LLM_ARGS})")
        e.add_argument("--user-llm-args", default=DEFAULT_LLM_ARGS, metavar="JSON",
                       help=f"the user simulator's sampling arguments (default: {DEFAULT_LLM_ARGS})")
        e.add_argument("--max-new-tokens", type=int,
                       help="shortcut for max_tokens in both --agent-llm-args and --user-llm-args, where they do "
                            "not set it (default: none, as τ²-bench; small models that ramble until the context "
                            "is full need one)")
        e.add_argument("--max-errors", type=int, default=MAX_ERRORS,
                       help=f"tool errors in a row that end a simulation, as `tau2 run` (default: {MAX_ERRORS})")
        e.add_argument("--task-set-name", help="τ²-bench task set, e.g. telecom_full or telecom_small "
                                               "(default: the domain's own)")
        e.add_argument("--task-split-name", default="base",
                       help="task split, as `tau2 run` (default: base, where the task set has splits)")
        e.add_argument("--agent", choices=AGENTS, default="llm_agent",
                       help="τ²-bench's agent implementation "
                            "(default: llm_agent; llm_agent_solo needs --user dummy_user)")
        e.add_argument("--user", choices=USERS, default="user_simulator",
                       help="τ²-bench's user implementation (default: user_simulator)")
        e.add_argument("--deterministic", action="store_true",
                       help="batch-invariant servers (VLLM_BATCH_INVARIANT=1: outputs independent of batch size and "
                            "order) and sampling seeded per simulation, so two runs give the same trajectories task "
                            "for task; needs GPUs of compute capability 9.0 or newer (refused elsewhere). Without it, "
                            "compare runs statistically (--compare)")
        e.add_argument("--parallel-domains", action="store_true",
                       help="run all domains at once over the shared servers")
        e.add_argument("--overwrite", action="store_true",
                       help="discard earlier results in --output-dir instead of resuming")
        e.add_argument("--output-dir", default="outputs", help="results folder (default: outputs)")

        x = p.add_argument_group("experts: models the agent can hand a turn to (the orchestration setting)")
        x.add_argument("--expert", action="append", default=[], metavar="NAME=MODEL",
                       help="an expert the agent calls through its call_expert tool, repeatable. MODEL is a "
                            "checkpoint folder (served in this fleet as a pool of its own), a model listed in the "
                            "endpoint file (servers already up), or a litellm model name (called through its API)")
        x.add_argument("--expert-description", action="append", default=[], metavar="NAME=TEXT",
                       help="what the agent is told about an expert, repeatable (default: its model's name)")
        x.add_argument("--expert-info", metavar="FILE",
                       help='JSON file: {"NAME": {"description": "...", "price": [in, out]}}, prices in $ per '
                            "million tokens")
        x.add_argument("--expert-servers", action="append", default=[], metavar="NAME=N",
                       help="servers of a served expert's pool (default: 1)")
        x.add_argument("--expert-tensor-parallel-size", action="append", default=[], metavar="NAME=K",
                       help="GPUs per server of a served expert (default: 1)")
        x.add_argument("--expert-gpu-ids", action="append", default=[], metavar="NAME=IDS",
                       help="GPUs of a served expert's pool, e.g. gpt=6,7 (default: the last free ones)")
        x.add_argument("--agent-policy-addendum", metavar="FILE",
                       help="text added to the agent's policy when it has experts, e.g. the wording a checkpoint "
                            "was trained with (default: this launcher's own, shown by --dry-run)")
        x.add_argument("--price", action="append", default=[], metavar="MODEL=IN,OUT",
                       help="$ per million prompt and completion tokens of a model litellm does not price "
                            "(a local one), for the cost in the summary, repeatable")

        f = p.add_argument_group("faults and pacing (a fault of the machinery is retried, never scored)")
        f.add_argument("--retry-timeout", type=float, default=RETRY_TIMEOUT_S,
                       help="seconds one simulation may spend retrying calls that failed for the machinery's sake "
                            "(rate limits, HTTP 5xx, timeouts, lost connections); past it the simulation is left "
                            "undone, not scored, and a rerun finishes it; an endpoint that answers nothing but "
                            f"errors this long stops its domain (default: {RETRY_TIMEOUT_S:.0f})")
        f.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S,
                       help="seconds one model call may take before it is retried as a timeout "
                            f"(default: {REQUEST_TIMEOUT_S:.0f})")
        f.add_argument("--user-max-concurrency", type=int,
                       help="user-simulator calls in flight at once, to stay under a hosted API's limits "
                            "(default: --max-concurrency)")
        f.add_argument("--user-max-rpm", type=float,
                       help="user-simulator calls started per minute, at most (default: no cap)")
        r = p.add_argument_group("comparing checkpoints (no server, no evaluation)")
        r.add_argument("--compare", nargs="+", metavar="DIR",
                       help="compare earlier output folders (the first is the baseline): reward and pass^k with 95%% "
                            "intervals, paired differences, flipped tasks; writes compare.md and compare.html "
                            "to --output-dir")
        r.add_argument("--force", action="store_true",
                       help="with --compare: compare folders whose settings differ (user model, sampling, ...)")
        w = p.add_argument_group("watching a training run")
        w.add_argument("--watch", metavar="DIR",
                       help="evaluate every checkpoint folder under DIR (a folder with config.json) in order of "
                            "creation, each into <output-dir>/<checkpoint>/, and keep watching for new ones "
                            "until Ctrl-C")
        w.add_argument("--watch-once", action="store_true",
                       help="with --watch: stop when no checkpoint is left to evaluate")
        w.add_argument("--watch-interval", type=float, default=60,
                       help="with --watch: seconds between looks; a checkpoint whose files changed within this time "
                            "is still being written (default: 60)")
        t = p.add_argument_group("reporting to experiment trackers")
        t.add_argument("--report-to", action="extend", nargs="+", default=[], metavar="NAME",
                       help="send the scores, settings, report.html and summary.json to wandb, mlflow, tensorboard, "
                            "all or none, at the checkpoint's training step (from its folder name); offline unless "
                            "WANDB_* or MLFLOW_TRACKING_URI say otherwise (default: none)")
        t.add_argument("--report-project",
                       help="W&B project, MLflow experiment (default: $WANDB_PROJECT / $MLFLOW_EXPERIMENT_NAME, "
                            "else tau2-run-local)")
        t.add_argument("--report-run-name", help="the tracker run's name (default: the --output-dir folder's name)")
        p.add_argument("--dry-run", action="store_true",
                       help="print the plan (placement, ports, exact commands) and start nothing")
        p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace, env: Mapping[str, str]) -> Request:
        """The parsed command line as a Request: lists become tuples, and --agent-model falls back to
        $CKPT_DIR, as the seed script's does."""
        values = {f.name: getattr(ns, f.name) for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if values["agent_model"] is None:
            values["agent_model"] = env.get("CKPT_DIR")
        return cls(**values)


def build_parser() -> argparse.ArgumentParser:
    """The command line: the seed script's options with its defaults, plus placement and evaluation."""
    p = argparse.ArgumentParser(
        prog="run_local.py",
        description="Start vLLM servers for an agent checkpoint, run τ²-bench against them, report the scores.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    Request.add_cli_args(p)
    return p


def parse_request(argv: Sequence[str], env: Mapping[str, str]) -> Request:
    """argv as a Request (argparse exits with code 2 on what it cannot parse, as before)."""
    return Request.from_cli_args(build_parser().parse_args(list(argv)), env)
