"""Record what a user sees of the launcher, for checking that a change of code left it as it was.

`python tests/golden/record.py OUT` writes one text file per case into OUT: --help, --version, dry-run
plans (one machine, fake GPUs, servers sharing a GPU, experts, servers already up, --sbatch), the
stderr and exit code of bad input, and report.html, compare.html and leaderboard.html rendered from
the fixed inputs beside this file. Paths, ports and clocks are replaced by placeholders, so a
recording made elsewhere compares byte for byte. tests/test_golden.py compares a fresh recording with
tests/golden/expected/, recorded before the launcher became a package (the dry runs' parser lines and --help
since re-recorded for --tool-call-parser auto and --skip-preflight, issue 19; --help and the --sbatch dry runs
for --api-key-env, --slurm-max-resubmits and the job script's resubmission lines, issue 18).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
INPUTS = HERE / "inputs"
STANDIN = ROOT / "tests" / "standin"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?")

# name -> launcher arguments (dry runs, relative to the work folder)
DRY_RUNS: dict[str, list[str]] = {
    "cpu_default": ["--agent-model", "ckpt"],
    "cpu_self_play": ["--agent-model", "ckpt", "--served-model-name", "agent", "--user-llm", "agent",
                      "--domains", "retail", "--num-tasks", "5", "--max-new-tokens", "64", "--start-port", "2100"],
    "gpus4_default": ["--agent-model", "ckpt", "@gpus4"],
    "gpus8_tp2_user_model": ["--agent-model", "ckpt", "@gpus8", "--domains", "retail", "airline",
                             "--gpu-ids", "0,1,2,3,4,5", "--tensor-parallel-size", "2", "--num-servers", "3",
                             "--user-model", "ckpt2", "--user-gpu-ids", "6,7", "--user-tensor-parallel-size", "2"],
    "gpus2_sharing": ["--agent-model", "ckpt", "@gpus2", "--num-servers", "4", "--servers-per-gpu", "2",
                      "--gpu-memory-utilization", "0.4"],
    "gpus4_experts": ["--agent-model", "ckpt", "@gpus4", "--gpu-ids", "0,1", "--expert", "e1=gpt-4o",
                      "--expert", "e2=./ckpt2", "--expert-gpu-ids", "e2=3", "--expert-description",
                      "e2=a careful model", "--price", "hosted_vllm/ckpt=0.1,0.2"],
    "gpus4_flags": ["--agent-model", "ckpt", "@gpus4", "--num-servers", "2", "--gpu-ids", "1,2",
                    "--stagger-delay", "30", "--vllm-arg=--enforce-eager", "--vllm-arg=--seed 7",
                    "--max-model-len", "16384", "--reasoning-parser", "deepseek_r1",
                    "--tool-call-parser", "llama3_json", "--chat-template", "template.jinja"],
    "eval_knobs": ["--agent-model", "ckpt", "--domains", "retail", "airline", "--num-trials", "4",
                   "--max-concurrency", "8", "--workers", "2", "--parallel-domains", "--max-steps", "30",
                   "--agent-llm-args", '{"temperature": 0.5, "top_p": 0.9}', "--user-llm-args",
                   '{"temperature": 0.0, "max_tokens": 77}', "--max-new-tokens", "128", "--seed", "5",
                   "--max-errors", "3", "--task-ids", "0", "1", "--retry-timeout", "60"],
    "telecom_small_gt": ["--agent-model", "ckpt", "--domains", "telecom", "--task-set-name", "telecom_small",
                         "--agent", "llm_agent_gt", "--num-tasks", "3"],
    "solo": ["--agent-model", "ckpt", "--agent", "llm_agent_solo", "--user", "dummy_user", "--domains", "mock"],
    "skip_server_start": ["--skip-server-start", "--model-config-path", "@config", "--user-llm", "standin",
                          "--domains", "mock"],
    "skip_server_start_api_expert": ["--skip-server-start", "--model-config-path", "@config", "--user-llm",
                                     "standin", "--expert", "big=standin", "--expert", "api=gpt-4o",
                                     "--domains", "mock"],
    "user_api_base": ["--agent-model", "ckpt", "--user-llm", "standin", "--user-api-base", "@standin_url",
                      "--domains", "mock"],
    "sbatch": ["--agent-model", "ckpt", "@sbatch", "--sbatch", "--slurm-nodes", "2", "--slurm-time", "01:00:00",
               "--num-servers", "4", "--slurm-partition", "gpu", "--sbatch-arg=--qos=high"],
    "sbatch_user_model": ["--agent-model", "ckpt", "@sbatch", "--sbatch", "--user-model", "ckpt2",
                          "--num-servers", "2", "--slurm-account", "lab", "--domains", "retail"],
}

# name -> (arguments, extra environment): bad input, each one line on stderr and exit code 2
BAD_INPUT: dict[str, list[str]] = {
    "no_agent_model": [],
    "model_missing": ["--agent-model", "/nonexistent/ckpt"],
    "model_no_config": ["--agent-model", "empty_ckpt"],
    "too_many_servers": ["--agent-model", "ckpt", "@gpus2", "--num-servers", "3"],
    "gpu_missing": ["--agent-model", "ckpt", "@gpus2", "--gpu-ids", "0,5"],
    "gpu_repeated": ["--agent-model", "ckpt", "@gpus2", "--gpu-ids", "1,1"],
    "zero_servers": ["--agent-model", "ckpt", "--num-servers", "0"],
    "unknown_domain": ["--agent-model", "ckpt", "--domains", "retail", "banking"],
    "domain_twice": ["--agent-model", "ckpt", "--domains", "retail", "retail"],
    "bad_port": ["--agent-model", "ckpt", "--start-port", "http"],
    "bad_memory": ["--agent-model", "ckpt", "--gpu-memory-utilization", "1.5"],
    "negative_stagger": ["--agent-model", "ckpt", "--stagger-delay", "-1"],
    "bad_llm_args": ["--agent-model", "ckpt", "--agent-llm-args", "{temperature"],
    "llm_args_not_object": ["--agent-model", "ckpt", "--user-llm-args", "[1]"],
    "solo_without_dummy": ["--agent-model", "ckpt", "--agent", "llm_agent_solo"],
    "expert_with_gt": ["--agent-model", "ckpt", "--agent", "llm_agent_gt", "--expert", "e=gpt-4o"],
    "expert_named_agent": ["--agent-model", "ckpt", "--expert", "agent=gpt-4o"],
    "expert_twice": ["--agent-model", "ckpt", "--expert", "e=gpt-4o", "--expert", "e=gpt-4o-mini"],
    "expert_stray_servers": ["--agent-model", "ckpt", "--expert", "e=gpt-4o", "--expert-servers", "e=2"],
    "expert_described_only": ["--agent-model", "ckpt", "--expert-description", "x=text"],
    "expert_info_missing": ["--agent-model", "ckpt", "--expert", "e=gpt-4o", "--expert-info", "nowhere.json"],
    "bad_price": ["--agent-model", "ckpt", "--price", "m=1"],
    "user_key_missing": ["--agent-model", "ckpt", "@nokey"],
    "claude_key_missing": ["--agent-model", "ckpt", "--user-llm", "claude-3-7-sonnet-20250219", "@nokey"],
    "api_expert_key_missing": ["--agent-model", "ckpt", "--user-llm", "standin", "--user-api-base",
                               "@standin_url", "--expert", "e=gpt-4o", "@nokey"],
    "config_missing": ["--skip-server-start", "--model-config-path", "nowhere.json"],
    "config_not_json": ["--skip-server-start", "--model-config-path", "bad_config.json"],
    "config_unreachable": ["--skip-server-start", "--model-config-path", "dead_config.json"],
    "config_wrong_model": ["--skip-server-start", "--model-config-path", "@config", "--served-model-name", "nope"],
    "folder_expert_skip": ["--skip-server-start", "--model-config-path", "@config", "--expert", "e=./ckpt2"],
    "output_unwritable": ["--agent-model", "ckpt", "--output-dir", "a_file/sub"],
    "chat_template_missing": ["--agent-model", "ckpt", "--chat-template", "nowhere.jinja"],
    "sbatch_in_job": ["--agent-model", "ckpt", "--sbatch", "@injob"],
    "slurm_without_job": ["--agent-model", "ckpt", "--executor", "slurm"],
    "watch_missing": ["--watch", "nowhere"],
    "watch_with_model": ["--watch", "ckpts", "--agent-model", "ckpt"],
    "compare_not_output": ["--compare", "ckpt", "ckpt"],
    "unknown_task": ["--agent-model", "ckpt", "--domains", "mock", "--task-ids", "no_such_task", "--user-llm",
                     "standin", "--user-api-base", "@standin_url"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_pair() -> int:
    """A free port whose successor is free too: the stand-in's, and one where nothing listens."""
    while True:
        port = free_port()
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port + 1))
            return port


def make_work(work: Path, dead: int) -> None:
    """The folder the cases run in: checkpoints, files that are not folders, fake nvidia-smi and sbatch."""
    for name in ("ckpt", "ckpt2", "ckpts/checkpoint-1"):
        (work / name).mkdir(parents=True)
        (work / name / "config.json").write_text("{}")
    (work / "empty_ckpt").mkdir()
    (work / "a_file").write_text("not a folder")
    (work / "template.jinja").write_text("{{ messages }}")
    (work / "bad_config.json").write_text("{not json")
    (work / "dead_config.json").write_text(json.dumps({"m": [{"ip_addr": "127.0.0.1", "port": str(dead)}]}))
    for count in (2, 4, 8):
        bin_dir = work / f"bin{count}"
        bin_dir.mkdir()
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n" + "".join(f"echo {i}\n" for i in range(count)))
        (bin_dir / "nvidia-smi").chmod(0o755)
    (work / "binsb").mkdir()
    (work / "binsb" / "sbatch").write_text("#!/bin/sh\necho 1\n")
    (work / "binsb" / "sbatch").chmod(0o755)


def start_standin(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(STANDIN / "standin_server.py"), "--model", "standin", "--host",
                             "127.0.0.1", "--port", str(port)], env={**os.environ, "STANDIN_QUIET": "1"},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            return proc
        time.sleep(0.1)
    raise RuntimeError("stand-in did not start")


def expand(args: list[str], work: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """Placeholders in a case's arguments: fake GPUs, sbatch, keys, the stand-in's endpoint file."""
    env = {"CKPT_DIR": "", "OPENAI_API_KEY": "sk-golden-not-a-key", "ANTHROPIC_API_KEY": "",
           "SLURM_JOB_ID": "", "VLLM_CACHE_ROOT": "/cache", "VLLM_CPU_KVCACHE_SPACE": "",
           "PATH": os.environ["PATH"]}
    out = []
    for arg in args:
        if arg.startswith("@gpus"):
            env["PATH"] = f"{work}/bin{arg[5:]}:{os.environ['PATH']}"
        elif arg == "@sbatch":
            env["PATH"] = f"{work}/binsb:{env['PATH']}"
        elif arg == "@nokey":
            env["OPENAI_API_KEY"] = ""
        elif arg == "@injob":
            env["SLURM_JOB_ID"] = "42"
        elif arg == "@config":
            out.append("standin_config.json")
        elif arg == "@standin_url":
            out.append(f"http://127.0.0.1:{port}/v1")
        else:
            out.append(arg)
    env = {k: v for k, v in env.items() if v or k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "CKPT_DIR")}
    return out, env


def normalise(text: str, work: Path, port: int) -> str:
    for real, mark in ((str(work.resolve()), "<WORK>"), (str(work), "<WORK>"), (str(ROOT), "<ROOT>"),
                       (sys.executable, "<PYTHON>"), (str(port), "<PORT>"), (str(port + 1), "<DEAD>"),
                       (str(Path.home()), "<HOME>")):
        text = text.replace(real, mark)
    # where the CPU has no native bf16, CPU servers serve in float32 (a choice of this host, tested in
    # test_plan): left out, so that a recording compares on any host
    text = text.replace(" --dtype float32", "")
    text = re.sub(r"^note: CPU servers serve in float32: .*\n", "", text, flags=re.M)
    return TIME.sub("<TIME>", text)


def launch(args: list[str], work: Path, port: int) -> str:
    argv, env = expand(args, work, port)
    base = {k: v for k, v in os.environ.items() if k not in ("CKPT_DIR", "SLURM_JOB_ID", "OPENAI_API_KEY",
                                                             "ANTHROPIC_API_KEY", "VLLM_CACHE_ROOT")}
    done = subprocess.run([sys.executable, str(ROOT / "run_local.py"), *argv], capture_output=True, text=True,
                          cwd=work, env={**base, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **env,
                                         "COLUMNS": "100"}, timeout=300)
    return normalise(f"exit {done.returncode}\n--- stdout\n{done.stdout}--- stderr\n{done.stderr}", work, port)


def rendered_pages(out: Path) -> None:
    """report.html, compare.html and leaderboard.html from the fixed inputs, in this process."""
    sys.path.insert(0, str(ROOT))
    from tau2_run_local.compare import compare_folders, compare_html, read_output_folder
    from tau2_run_local.leaderboard import leaderboard_html
    from tau2_run_local.report_page import report_html

    folder = INPUTS / "output_folder"
    summary = json.loads((folder / "summary.json").read_text())
    results = {d: json.loads((folder / f"{d}.json").read_text()) for d in summary["domains"]}
    meta = {"agent": "standin", "user simulator": "hosted_vllm/standin", "state": "finished", "written": "<TIME>"}
    (out / "report.html").write_text(report_html(summary, results, meta))
    table = compare_folders([read_output_folder(INPUTS / "compare_a"), read_output_folder(INPUTS / "compare_b")])
    table = json.loads(json.dumps(table).replace(str(INPUTS), "<INPUTS>"))
    (out / "compare.html").write_text(TIME.sub("<TIME>", compare_html(table)))
    rows = [{"checkpoint": name, "state": state, "summary": summary if state == "evaluated" else None}
            for name, state in (("checkpoint-100", "evaluated"), ("checkpoint-200", "writing"))]
    (out / "leaderboard.html").write_text(TIME.sub("<TIME>", leaderboard_html(rows, ["mock"])))


def record(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        port = free_pair()
        make_work(work, port + 1)
        (work / "standin_config.json").write_text(json.dumps(
            {"standin": [{"ip_addr": "127.0.0.1", "port": str(port)}]}))
        standin = start_standin(port)
        try:
            cases = {"help": ["--help"], "version": ["--version"],
                     **{f"dry_{k}": [*v, "--dry-run"] for k, v in DRY_RUNS.items()},
                     **{f"bad_{k}": v for k, v in BAD_INPUT.items()}}
            with ThreadPoolExecutor(4) as pool:
                texts = dict(zip(cases, pool.map(lambda a: launch(a, work, port), cases.values()), strict=True))
        finally:
            os.killpg(standin.pid, signal.SIGKILL)
            standin.wait()
        for name, text in texts.items():
            (out / f"{name}.txt").write_text(text)
    rendered_pages(out)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    shutil.rmtree(target, ignore_errors=True)
    record(target)
    print(f"recorded {len(list(target.iterdir()))} files in {target}")
