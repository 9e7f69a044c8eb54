#!/usr/bin/env python3
"""Startup benchmark: seconds until ALL servers serve, the seed script's policy against run_local.py's.

Policies, measured on the same servers in one run of this script:
  seed      The seed script, replayed faithfully here (not in the product): server i is started at
            i x STAGGER seconds (a fixed clock, 60 s), then each server's /health is polled in turn,
            one after another, until it answers 200. The server commands are exactly those that
            `run_local.py --dry-run` prints, each started in its own process group.
  stagger   `run_local.py --stagger-delay 60`: the launcher's switch for the old fixed clock (its
            waiting is concurrent, not one server after another). For reference.
  launcher  `run_local.py` as shipped: servers on different GPUs start at once; servers sharing a GPU
            start one after another, each as soon as the one before it serves.
For the launcher the figure is the time from starting `python run_local.py` to its endpoint file
(model_config_local.json) appearing, so it includes its own start-up (Python, τ²-bench import); its
own line "all servers serve after Ns" is reported next to it. Every launcher run ends with a tiny
evaluation (mock domain, 1 task, 4 steps) that proves the servers answer; it is not timed.

Scenarios:
  A   8 stand-in servers on 8 fake GPUs, one per GPU. The stand-in (tests/standin) sleeps
      STANDIN_STARTUP_DELAY = 20 s before it serves: a scaled-down vLLM start.
  A2  the same 8 servers on 4 fake GPUs, 2 per GPU (--servers-per-gpu 2): lanes of two.
  B   real vLLM (CPU build) with the tiny real model models/smollm2-135m, 2 servers, no GPU: the
      launcher starts both at once (each CPU server has its own lane); the seed starts #2 60 s
      after #1. Both servers compete for this machine's cores. An untimed warm-up start comes first.

Before the first measurement and again before B the script waits until no vLLM it did not start runs
(20 s of quiet, polled every 15 s, at most 15 minutes): another engineer runs real vLLM on this
2-core machine. Every measurement records whether such a vLLM was seen while it ran.

To fit in about 10 minutes, the sleep-bound fixed-clock runs of A and A2 (four of them, about 7.5
minutes each, using next to no CPU: servers that sleep) run side by side in background threads, and
scenario B runs in the foreground meanwhile. The launcher-default runs of A and A2 run first, alone.
The CPU load of that background is sampled and reported before B starts.

--quick: a smoke test: 4 servers (A: 4 GPUs, A2: 2 GPUs), stand-in start 2 s, stagger 5 s, no B.

Usage: .venv/bin/python benchmarks/startup/run.py [--quick] [--skip-vllm]
Writes benchmarks/startup/results.json (--quick: results-quick.json) and prints a table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PY = sys.executable
LAUNCHER = ROOT / "run_local.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import launcher_version, machine  # noqa: E402  (benchmarks/, on sys.path above)

sys.path.insert(0, str(ROOT))
from tau2_run_local.host import port_is_free  # noqa: E402  (the checkout's package, on sys.path above)

STANDIN = ROOT / "tests" / "standin"
TINY_MODEL = ROOT / "models" / "smollm2-135m"
# Another engineer's real-vLLM runs on this checkout's models (the brief's pgrep pattern).
OTHER_VLLM = f"vllm.entrypoints.cli.main serve {ROOT}/models"
TINY_EVAL = ["--domains", "mock", "--num-tasks", "1", "--max-steps", "4", "--max-concurrency", "1"]
SEED_POLL_S = 1.0  # the seed replica's /health poll interval (a coarser poll only makes it slower)

# ------------------------------------------------------------------------------------------------
# Processes: every group this script starts is registered, and killed on the way out, whatever happens
# ------------------------------------------------------------------------------------------------

_groups: set[int] = set()  # process groups (leader pids) started here or by a launcher started here
_launchers: list[tuple[subprocess.Popen, Path]] = []  # (launcher, its stdout file)
_lock = threading.Lock()


def register(pgid: int) -> None:
    with _lock:
        _groups.add(pgid)


def group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] != "Z" and int(fields[2]) == pgid:
                    return True
    return False


def kill_groups(pgids: list[int], grace: float = 15.0) -> None:
    """SIGTERM each group, wait up to `grace` s, then SIGKILL what is left."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(group_alive(g) for g in pgids):
        time.sleep(0.2)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def server_pids_from(stdout: str) -> list[int]:
    """Process groups of the servers a launcher started, from its 'started ... pid N)' lines."""
    return [int(m) for m in re.findall(r"^\S+ started .*?, pid (\d+)\)", stdout, re.M)]


def cleanup_everything() -> None:
    """Launchers first (SIGTERM: they stop their own servers), then every group still standing."""
    with _lock:
        launchers = list(_launchers)
    for proc, _ in launchers:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc, out in launchers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(OSError):
            for pid in server_pids_from(out.read_text(errors="replace")):
                register(pid)
        register(proc.pid)
    with _lock:
        groups = sorted(_groups)
    kill_groups([g for g in groups if group_alive(g)])


def on_signal(signum: int, _frame: object) -> None:
    print(f"\nbenchmark: {signal.Signals(signum).name}; stopping every process started", file=sys.stderr)
    cleanup_everything()
    os._exit(130)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def health_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


_next_port = [21000]


def port_block(size: int = 20) -> int:
    """A block of `size` free ports below the ephemeral range, one block per measurement."""
    with _lock:
        while True:
            base = _next_port[0]
            _next_port[0] += size
            if all(port_is_free("127.0.0.1", p) for p in range(base, base + size)):
                return base


def other_vllm(own_ports: set[int]) -> list[str]:
    """Real vLLM processes this script did not start: the brief's pattern (`pgrep -f OTHER_VLLM`), and
    any other vLLM API server or engine (a CI clone elsewhere serves models/... by a relative path),
    counted only when it holds 200 MB or more (so stand-ins, which are small, never count). A process
    is ours when its group leader's --port lies in own_ports."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            status = (entry / "status").read_text()
            pgid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
            leader = (Path("/proc") / str(pgid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        rss_kb = int(next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), 0))
        pattern = re.search(OTHER_VLLM, cmd)
        vllm = "vllm.entrypoints." in cmd or cmd.startswith("VLLM::")
        if not (pattern or (vllm and rss_kb >= 200_000)):
            continue
        port = re.search(r"--port (\d+)", leader)
        if port and int(port.group(1)) in own_ports:
            continue
        found.append(f"{entry.name} {cmd[:150]}")
    return found


def wait_for_quiet(own_ports: set[int], quiet_s: float = 20, poll_s: float = 15, limit_s: float = 900) -> dict:
    """Until no other vLLM of this checkout has run for quiet_s straight (polled every poll_s)."""
    began = time.monotonic()
    quiet_since = None
    while True:
        busy = other_vllm(own_ports)
        now = time.monotonic()
        if busy:
            quiet_since = None
            print(f"  waiting: another vLLM runs ({len(busy)} process(es)), e.g. {busy[0][:120]}")
        elif quiet_since is None:
            quiet_since = now
        if quiet_since is not None and now - quiet_since >= quiet_s:
            return {"waited_s": round(now - began, 1), "quiet": True}
        if now - began > limit_s:
            return {"waited_s": round(now - began, 1), "quiet": False}
        time.sleep(poll_s if quiet_since is None else min(poll_s, quiet_s - (now - quiet_since)))


def cpu_busy(seconds: float = 5.0) -> float:
    """Share of all cores busy over `seconds` (from /proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle
    t1, i1 = sample()
    time.sleep(seconds)
    t2, i2 = sample()
    return 1 - (i2 - i1) / max(t2 - t1, 1)


class ForeignWatch(threading.Thread):
    """Samples, every 5 s, whether someone else's vLLM runs; a measurement asks about its window."""

    def __init__(self, own_ports: set[int]):
        super().__init__(daemon=True)
        self.own_ports, self.seen, self.stop = own_ports, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(5):
            if other_vllm(self.own_ports):
                self.seen.append(time.monotonic())

    def during(self, start: float, end: float) -> bool:
        return any(start - 5 <= t <= end + 5 for t in self.seen)


def fake_gpu_env(work: Path, count: int) -> dict[str, str]:
    """A PATH whose nvidia-smi lists `count` GPUs, and the stand-in in place of vLLM."""
    bin_dir = work / f"fakebin{count}"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo {i}\n" for i in range(count)))
    smi.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(STANDIN), "STANDIN_QUIET": "1"}


def base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "PYTHONPATH")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env.update(extra)
    return env


def run_paths(work: Path) -> list[str]:
    return ["--output-dir", str(work / "out"), "--log-dir", str(work / "logs"),
            "--model-config-path", str(work / "model_config_local.json")]


# ------------------------------------------------------------------------------------------------
# The two things measured
# ------------------------------------------------------------------------------------------------


def measure_launcher(flags: list[str], env: dict[str, str], work: Path, timeout: float) -> dict:
    """Start run_local.py; seconds from its start to the endpoint file appearing; then let it finish."""
    work.mkdir(parents=True)
    config = work / "model_config_local.json"
    out_path = work / "launcher.out"
    argv = [PY, str(LAUNCHER), *flags, *TINY_EVAL, *run_paths(work)]
    with open(out_path, "w") as out:
        began = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=ROOT, start_new_session=True)
    with _lock:
        _launchers.append((proc, out_path))
    ready_s = None
    while proc.poll() is None and time.monotonic() - began < timeout:
        if ready_s is None and config.exists():
            ready_s = time.monotonic() - began
        time.sleep(0.05)
    if proc.poll() is None:  # over time: stop it the way a user would (it stops its servers)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    if ready_s is None and config.exists():
        ready_s = time.monotonic() - began
    text = out_path.read_text(errors="replace")
    reported = re.search(r"all servers serve after (\d+)s", text)
    servers = server_pids_from(text)
    left = [pid for pid in servers if group_alive(pid)]
    if left:  # the launcher should have stopped every server group; report it, then clean up
        kill_groups(left)
    return {
        "command": shlex.join(["python", "run_local.py", *flags, *TINY_EVAL, "..."]),
        "all_ready_s": None if ready_s is None else round(ready_s, 1),
        "launcher_reported_s": int(reported.group(1)) if reported else None,
        "exit_code": proc.returncode, "servers_started": len(servers),
        "server_groups_left_running": left,
        "tail": text.splitlines()[-6:] if proc.returncode or ready_s is None else [],
    }


def dry_run_commands(flags: list[str], env: dict[str, str], work: Path) -> list[tuple[dict[str, str], list[str]]]:
    """The server commands `run_local.py --dry-run` prints, as (environment, argv) pairs."""
    out = subprocess.run([PY, str(LAUNCHER), *flags, *run_paths(work), "--dry-run"], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    block = out.split("server commands:\n", 1)[1].split("\nendpoint file", 1)[0]
    commands = []
    for line in block.splitlines():
        words = shlex.split(line)
        assigned = {}
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            key, value = words.pop(0).split("=", 1)
            assigned[key] = value
        commands.append((assigned, words))
    return commands


def measure_seed(flags: list[str], env: dict[str, str], work: Path, stagger: float, timeout: float) -> dict:
    """The seed script's policy: start server i at i x stagger, then poll each /health in turn."""
    work.mkdir(parents=True)
    commands = dry_run_commands(flags, env, work)
    ports = [int(argv[argv.index("--port") + 1]) for _, argv in commands]
    procs: list[subprocess.Popen] = []
    ready_at: list[float] = []
    try:
        began = time.monotonic()
        for i, (assigned, argv) in enumerate(commands):
            time.sleep(max(0.0, began + i * stagger - time.monotonic()))
            with open(work / f"server_{ports[i]}.log", "w") as log:
                proc = subprocess.Popen(argv, env={**env, **assigned}, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
            register(proc.pid)
            procs.append(proc)
        for proc, port in zip(procs, ports, strict=True):  # one waited on after another
            while not health_ok(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"seed replica: server on port {port} exited with {proc.returncode}; "
                                       f"see {work / f'server_{port}.log'}")
                if time.monotonic() - began > timeout:
                    raise RuntimeError(f"seed replica: server on port {port} did not serve in {timeout:.0f}s")
                time.sleep(SEED_POLL_S)
            ready_at.append(round(time.monotonic() - began, 1))
        all_ready = time.monotonic() - began
    finally:
        kill_groups([p.pid for p in procs])
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    return {
        "command": f"seed replica: {len(commands)} x (dry-run command), started {stagger:g} s apart, "
                   f"/health polled in turn every {SEED_POLL_S:g} s",
        "all_ready_s": round(all_ready, 1), "seen_ready_at_s": ready_at,
        "first_server_command": " ".join([*(f"{k}={v}" for k, v in commands[0][0].items()),
                                          shlex.join(commands[0][1])]),
    }


# ------------------------------------------------------------------------------------------------
# Scenarios
# ------------------------------------------------------------------------------------------------


def standin_scenarios(work: Path, quick: bool) -> list[dict]:
    delay, stagger, count = (2, 5, 4) if quick else (20, 60, 8)
    ckpt = work / "ckpt"  # a model folder the launcher accepts; the stand-in ignores it
    ckpt.mkdir(exist_ok=True)
    (ckpt / "config.json").write_text("{}")
    common = ["--agent-model", str(ckpt), "--served-model-name", "standin", "--user-llm", "standin",
              "--num-servers", str(count)]
    one_per_gpu = {"key": "A", "gpus": count, "flags": common,
                   "what": f"{count} stand-in servers on {count} fake GPUs, one per GPU; "
                           f"a server's own start = STANDIN_STARTUP_DELAY {delay} s"}
    shared = {"key": "A2", "gpus": count // 2, "flags": [*common, "--servers-per-gpu", "2"],
              "what": f"{count} stand-in servers on {count // 2} fake GPUs, 2 per GPU (--servers-per-gpu 2); "
                      f"a server's own start = STANDIN_STARTUP_DELAY {delay} s"}
    for sc in (one_per_gpu, shared):
        sc["env"] = base_env({**fake_gpu_env(work, sc["gpus"]), "STANDIN_STARTUP_DELAY": str(delay)})
        sc["stagger"] = stagger
        sc["timeout"] = (count - 1) * stagger + 20 * delay + 300
    return [one_per_gpu, shared]


def vllm_scenario() -> dict:
    return {"key": "B", "gpus": 0, "stagger": 60, "timeout": 900,
            "flags": ["--agent-model", str(TINY_MODEL), "--served-model-name", "smollm2", "--user-llm", "smollm2",
                      "--max-model-len", "8192", "--vllm-arg=--enforce-eager", "--num-servers", "2",
                      "--max-new-tokens", "16"],
            "env": base_env({}),
            "what": "2 real vLLM (CPU build) servers of models/smollm2-135m, no GPU; "
                    "both compete for the machine's 2 cores"}


def with_port(sc: dict) -> list[str]:
    return [*sc["flags"], "--start-port", str(port_block())]


def run_measure(kind: str, sc: dict, work: Path, watch: ForeignWatch) -> dict:
    """One measurement: 'launcher', 'stagger' or 'seed', of scenario sc, in its own folder."""
    flags = with_port(sc)
    began = time.monotonic()
    folder = work / f"{sc['key']}_{kind}"
    try:
        if kind == "seed":
            result = measure_seed(flags, sc["env"], folder, sc["stagger"], sc["timeout"])
        else:
            extra = ["--stagger-delay", str(sc["stagger"])] if kind == "stagger" else []
            result = measure_launcher([*flags, *extra], sc["env"], folder, sc["timeout"])
    except Exception as exc:  # reported in the table and results.json, the other measurements go on
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["other_vllm_seen"] = watch.during(began, time.monotonic())
    print(f"  {sc['key']:3} {kind:9} all ready after {result.get('all_ready_s')} s"
          + (f"  ERROR {result['error']}" if "error" in result else ""), flush=True)
    return result


def warm_up(sc: dict, work: Path) -> dict:
    """Start one real server and stop it (untimed): imports and weights in the page cache for all."""
    began = time.monotonic()
    try:
        one = measure_seed([*with_port(sc), "--num-servers", "1"], sc["env"], work / "B_warmup", 0, sc["timeout"])
    except Exception as exc:
        return {"error": str(exc)}
    return {"one_server_ready_s": one["all_ready_s"], "took_s": round(time.monotonic() - began, 1)}


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

LABELS = {"seed": "seed policy (replica: fixed {s:g} s stagger, /health polled in turn)",
          "stagger": "run_local.py --stagger-delay {s:g}",
          "launcher": "run_local.py (default: start on readiness)"}


def print_table(scenarios: list[dict]) -> None:
    print()
    print(f"{'scenario':4} {'policy':66} {'all ready':>10} {'launcher says':>14} {'vs default':>11}")
    for sc in scenarios:
        base = sc["results"].get("launcher", {}).get("all_ready_s")
        for kind in ("seed", "stagger", "launcher"):
            r = sc["results"].get(kind)
            if r is None:
                continue
            t = r.get("all_ready_s")
            says = r.get("launcher_reported_s")
            ratio = f"{t / base:.2f}x" if t and base else "-"
            flag = " (other vLLM seen!)" if r.get("other_vllm_seen") else ""
            print(f"{sc['key']:4} {LABELS[kind].format(s=sc['stagger']):66} "
                  f"{'ERROR' if t is None else f'{t:.1f} s':>10} {'-' if says is None else f'{says} s':>14} "
                  f"{ratio:>11}{flag}")
    print()
    for sc in scenarios:
        print(f"{sc['key']}: {sc['what']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 servers, 2 s starts, 5 s stagger, no B")
    parser.add_argument("--skip-vllm", action="store_true", help="leave out scenario B (real vLLM)")
    opts = parser.parse_args()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    work = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    own_ports: set[int] = set(range(21000, 22000))  # every block this script hands out lies here
    watch = ForeignWatch(own_ports)
    watch.start()
    started = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    version_at_start = launcher_version()
    began = time.monotonic()
    scenarios = standin_scenarios(work, opts.quick)
    for sc in scenarios:
        sc["results"] = {}
    quiet: dict = {}
    try:
        # 0. nobody else's vLLM on the machine (on 2 cores it would spoil every figure)
        print("waiting until no other vLLM runs on this machine ...", flush=True)
        quiet.update(wait_for_quiet(own_ports), cpu_busy_after=round(cpu_busy(), 3))
        print(f"  quiet after {quiet['waited_s']} s; CPU load {quiet['cpu_busy_after']:.1%}", flush=True)
        # 1. the launcher's default on the stand-ins, alone on the machine
        print("launcher default, stand-in scenarios (alone):", flush=True)
        for sc in scenarios:
            sc["results"]["launcher"] = run_measure("launcher", sc, work, watch)
        # 2. the sleep-bound fixed-clock runs, side by side in the background
        print("fixed-clock runs (seed replica, --stagger-delay), side by side in the background:", flush=True)
        background = []
        for sc in scenarios:
            for kind in ("seed", "stagger"):
                def job(sc: dict = sc, kind: str = kind) -> None:
                    sc["results"][kind] = run_measure(kind, sc, work, watch)
                background.append(threading.Thread(target=job))
                background[-1].start()
        # 3. real vLLM in the foreground meanwhile
        if not (opts.quick or opts.skip_vllm):
            b = vllm_scenario()
            b["results"] = {}
            scenarios.append(b)
            print("scenario B (real vLLM): waiting until no other vLLM of this checkout runs ...", flush=True)
            b["quiet_wait"] = wait_for_quiet(own_ports)
            b["background_cpu_busy"] = round(cpu_busy(), 3)
            print(f"  quiet after {b['quiet_wait']['waited_s']} s; background CPU load "
                  f"{b['background_cpu_busy']:.1%} of {os.cpu_count()} cores", flush=True)
            if b["quiet_wait"]["quiet"]:
                b["warm_up"] = warm_up(b, work)
                for kind in ("launcher", "seed", "stagger"):
                    b["results"][kind] = run_measure(kind, b, work, watch)
        for thread in background:
            thread.join()
    finally:
        watch.stop.set()
        cleanup_everything()
    for sc in scenarios:
        base = sc["results"].get("launcher", {}).get("all_ready_s")
        sc["ratios_vs_launcher_default"] = {
            kind: round(r["all_ready_s"] / base, 2) for kind, r in sc["results"].items()
            if base and r.get("all_ready_s")}
    print_table(scenarios)
    doc = {
        "benchmark": "startup", "mode": "quick" if opts.quick else "full", "started_at": started,
        "launcher": version_at_start | {"run_local_py_unchanged_during_run":
                                         launcher_version()["run_local_py_sha256"]
                                         == version_at_start["run_local_py_sha256"]},
        "took_s": round(time.monotonic() - began, 1), "machine": machine(),
        "command": shlex.join([".venv/bin/python", "benchmarks/startup/run.py", *sys.argv[1:]]),
        "seed_poll_interval_s": SEED_POLL_S, "quiet_wait_at_start": quiet,
        "scenarios": {sc["key"]: {k: v for k, v in sc.items() if k not in ("env", "flags", "key", "gpus", "timeout")}
                      | {"fake_gpus": sc["gpus"], "server_flags": sc["flags"]} for sc in scenarios},
    }
    (HERE / ("results-quick.json" if opts.quick else "results.json")).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {HERE / ('results-quick.json' if opts.quick else 'results.json')} (took {doc['took_s']:.0f} s)")
    shutil.rmtree(work, ignore_errors=True)
    failed = any("error" in r or r.get("exit_code") for sc in scenarios for r in sc["results"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
