"""--watch: stand-in checkpoints appear one after another while the launcher watches their folder; one
is half-written (an index naming a shard that is not there yet) and waits until it is complete; a
restarted watch evaluates only what is left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from test_trackers import check_rows, read_mlflow, read_tensorboard, read_wandb

from conftest import LAUNCHER, ROOT, STANDIN, run_launcher
from tau2_run_local.watch import checkpoint_state, find_checkpoints


def make_checkpoint(root: Path, name: str, fail: str = "", shards: int = 1, written: int = 1) -> Path:
    """A stand-in checkpoint: config.json, then weights (sharded with an index when shards > 1, of which
    `written` are there); standin_fail_tasks sets what the stand-in serving it fails."""
    ckpt = root / name
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "standin_fail_tasks").write_text(fail)
    if shards == 1:
        (ckpt / "model.safetensors").write_bytes(b"\0" * 64)
        return ckpt
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    for shard in names[:written]:
        (ckpt / shard).write_bytes(b"\0" * 64)
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {f"layer{i}": shard for i, shard in enumerate(names)}}))
    return ckpt


def watch_command(root: Path, tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, str(LAUNCHER), "--watch", str(root), "--watch-interval", "1",
            "--served-model-name", "standin", "--user-llm", "standin", "--domains", "mock", "--num-tasks", "2",
            "--start-port", "auto", "--output-dir", str(tmp / "out"), "--log-dir", str(tmp / "logs"),
            "--model-config-path", str(tmp / "mc.json"), *extra]


def wait_for(check, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def reward(out: Path, name: str) -> float | None:
    try:
        return json.loads((out / name / "summary.json").read_text())["overall"]["avg_reward"]
    except (OSError, ValueError):
        return None


def test_watch_evaluates_checkpoints_as_they_settle_and_resumes(tmp_path: Path):
    root, out = tmp_path / "ckpts", tmp_path / "out"
    root.mkdir()
    make_checkpoint(root, "checkpoint-100", fail="create_task_1")  # mock's first two tasks fail: 0.0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(STANDIN), WANDB_MODE="offline", NETRC=str(tmp_path / "netrc"),
               **{v: str(tmp_path / v.lower()) for v in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")})
    trackers = ("--report-to", "tensorboard", "mlflow", "wandb")
    watch = subprocess.Popen(watch_command(root, tmp_path, *trackers), env=env, cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: reward(out, "checkpoint-100") is not None, "checkpoint-100's results")
        # a checkpoint still being saved (one of two shards), then a complete one saved after it
        half = make_checkpoint(root, "checkpoint-200", shards=2, written=1)
        time.sleep(1.1)
        make_checkpoint(root, "checkpoint-300")
        wait_for(lambda: reward(out, "checkpoint-300") is not None, "checkpoint-300's results")
        time.sleep(2.5)  # a few more looks: the half-written one must still be left alone
        assert not (out / "checkpoint-200").exists()
        board = (out / "leaderboard.md").read_text()
        assert "| checkpoint-200 | - | - | - | incomplete |" in board
    finally:
        watch.send_signal(signal.SIGINT)
        try:
            first_log = watch.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            watch.kill()  # never leave a watch running behind a failed test
            raise
    assert watch.returncode == 130, first_log
    assert "checkpoint-200: weights incomplete; skipped until it settles" in first_log

    # the trainer finishes the half-written checkpoint; a restarted watch evaluates only that one
    (half / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 64)
    again = subprocess.run(watch_command(root, tmp_path, "--watch-once", *trackers), env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "warning" not in again.stderr, again.stdout + again.stderr
    evaluated = [line.split("evaluating checkpoint ")[1].split()[0] for line in again.stdout.splitlines()
                 if "evaluating checkpoint" in line]
    assert evaluated == [str(half)]
    assert (reward(out, "checkpoint-100"), reward(out, "checkpoint-200"),
            reward(out, "checkpoint-300")) == (0.0, 1.0, 1.0)

    # the leaderboard: checkpoints in order of creation, reward per domain, as a table and a plot
    rows = [line for line in (out / "leaderboard.md").read_text().splitlines() if line.startswith("| checkpoint-")]
    assert rows == ["| checkpoint-100 | 0.0000 | 0.0000 | 2 | evaluated |",
                    "| checkpoint-200 | 1.0000 | 1.0000 | 2 | evaluated |",
                    "| checkpoint-300 | 1.0000 | 1.0000 | 2 | evaluated |"]
    page = (out / "leaderboard.html").read_text()
    assert "<svg" in page and 'data-field="checkpoint-200:mock">1.0000<' in page
    for name in ("checkpoint-100", "checkpoint-200", "checkpoint-300"):
        assert (out / name / "report.html").is_file()

    # --report-to: one tracker run for the whole watch, each checkpoint at its step, as its summary.json
    want = {step: json.loads((out / f"checkpoint-{step}" / "summary.json").read_text()) for step in (100, 200, 300)}
    found = (read_wandb(out), read_mlflow(out / "mlflow.db"), read_tensorboard(out))
    check_rows(found[0]["rows"], want)
    check_rows(found[1]["rows"], want)
    check_rows(found[2]["rows"], want, stored=np.float32)
    assert len(found[0]["ids"]) == 1 and found[1]["params"]["num_trials"] == "1"
    # a rerun with nothing new adds nothing
    rerun = subprocess.run(watch_command(root, tmp_path, "--watch-once", *trackers), env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "evaluating" not in rerun.stdout, rerun.stdout + rerun.stderr
    assert (read_wandb(out), read_mlflow(out / "mlflow.db"), read_tensorboard(out)) == found


def test_checkpoint_states(tmp_path: Path):
    """Being written (a file changed within the quiet time), incomplete, ready; oldest first."""
    old = make_checkpoint(tmp_path, "checkpoint-1000")
    half = make_checkpoint(tmp_path, "checkpoint-900", shards=3, written=2)
    nested = make_checkpoint(tmp_path / "run2", "checkpoint-5")
    past = time.time() - 100
    for i, ckpt in enumerate((old, half, nested)):
        for f in ckpt.iterdir():
            os.utime(f, (past + i, past + i))
    now = time.time()
    assert find_checkpoints(tmp_path) == [old, half, nested]
    assert checkpoint_state(old, 60, now) == "ready"
    assert checkpoint_state(half, 60, now) == "incomplete"
    (half / "model-00003-of-00003.safetensors").write_bytes(b"\0")
    assert checkpoint_state(half, 60, time.time()) == "writing"
    assert checkpoint_state(half, 60, time.time() + 61) == "ready"


def test_watch_bad_input(tmp_path: Path):
    missing = run_launcher(["--watch", str(tmp_path / "nope")])
    assert missing.returncode == 2 and "--watch" in missing.stderr and "no such directory" in missing.stderr
    both = run_launcher(["--watch", str(tmp_path), "--agent-model", str(tmp_path)])
    assert both.returncode == 2 and "drop --agent-model" in both.stderr
