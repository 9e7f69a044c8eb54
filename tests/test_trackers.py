"""--report-to: summary.json files shaped as the launcher writes them go to the real W&B (offline),
MLflow (its SQLite store) and TensorBoard (event files), for one evaluation and for a watch of three
checkpoints stopped and rerun; each library's own reader then finds summary.json's numbers at the right
steps, once each, in one run per tracker."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port
from tau2_run_local import trackers as tr

# MLflow 3.17's store under SQLAlchemy 2.1 warns of a loader it uses
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
SECRET = "sk-test-secret-" + "0123456789abcdef" * 3  # W&B wants 40+ characters even offline
SETTINGS = {"agent_model": "hosted_vllm/agent", "user_model": "gpt-4o",
            "agent_llm_args": {"temperature": 0.0, "max_tokens": 256}, "user_llm_args": {"api_key": SECRET},
            "max_steps": 30, "num_trials": 2, "domains": ["retail", "airline"], "task_set": None, "seed": 300,
            "experts": {"planner": "hosted_vllm/planner"}}


def domain_summary(rewards: dict[str, list[float]], scale: int) -> dict:
    """One domain of summary.json, as run_local.py's domain_summary writes it."""
    trials = min(len(r) for r in rewards.values())
    def ok(r):
        return abs(r - 1.0) <= 1e-6
    pass_k = {str(k): sum(math.comb(sum(map(ok, r)), k) / math.comb(len(r), k) for r in rewards.values()) / len(rewards)
              for k in range(1, trials + 1)}
    sims = sum(len(r) for r in rewards.values())
    flat = [x for r in rewards.values() for x in r]
    return {
        "tasks": len(rewards), "trials": trials, "simulations": sims, "expected_simulations": sims + 1,
        "not_scored": 1, "avg_reward": sum(flat) / len(flat), "pass_hat_k": pass_k,
        "termination_reasons": {"user_stop": sims - 1, "max_steps": 1},
        "failures": {"context_overflow": 0, "malformed_tool_call": scale, "bad_reply": 0, "other_agent_error": 0,
                     "user_simulator_error": 1, "infrastructure_undone": 0, "not_started": 0,
                     "retried_calls": 2 * scale,
                     "recovered_calls": 2, "recovered_simulations": 1},
        "wall_time_s": 12.5 * scale,
        "tokens": {"agent": {"prompt": 10_000 * scale, "completion": 1_234},
                   "user": {"prompt": 5_000, "completion": 777}},
        "expert_calls": {"planner": scale},
        "cost_usd": {"agent": "unknown", "user": 0.0125 * scale}, "total_cost_usd": "unknown",
        "reward_per_dollar": None,
        "status": "incomplete",
    }


def launcher_summary(scale: int) -> dict:
    """A whole summary.json (run_local.py's summarize), its scores rising with `scale`."""
    tasks = {"retail": {"r0": [1.0, 1.0], "r1": [1.0 if scale > 1 else 0.0, 0.0],
                        "r2": [0.5, 1.0 if scale > 2 else 0.0]},
             "airline": {"a0": [1.0, 0.0], "a1": [0.0, 0.0 if scale < 3 else 1.0]}}
    domains = {name: domain_summary(rewards, scale) for name, rewards in tasks.items()}
    scores = domain_summary({f"{d}/{t}": r for d, rewards in tasks.items() for t, r in rewards.items()}, scale)
    def total(key):
        return {k: sum(d[key][k] for d in domains.values()) for k in domains["retail"][key]}
    overall = {key: sum(d[key] for d in domains.values()) for key in ("tasks", "simulations", "expected_simulations",
                                                                      "not_scored")}
    overall.update(avg_reward=scores["avg_reward"], pass_hat_k=scores["pass_hat_k"],
                   termination_reasons=total("termination_reasons"), failures=total("failures"),
                   wall_time_s=30.0 * scale,
                   tokens={"agent": {"prompt": 20_000 * scale, "completion": 2_468},
                           "user": {"prompt": 10_000, "completion": 1_554}}, expert_calls=total("expert_calls"),
                   cost_usd={"agent": "unknown", "user": 0.025 * scale}, total_cost_usd="unknown",
                   reward_per_dollar=None,
                   rate_limited_calls={"agent": 0, "user": scale})
    return {"domains": domains, "overall": overall, "agent_conversations_per_server": {"http://127.0.0.1:1900/v1": 10},
            "concurrency": {"adaptive": False, "ceiling": 16, "workers": 1}, "server_events": []}


def evaluation_folder(folder: Path, scale: int) -> list[Path]:
    """An output folder as the launcher leaves it: summary.json and report.html."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(launcher_summary(scale), indent=2) + "\n")
    (folder / "report.html").write_text(f"<html><body>report {scale}</body></html>")
    return [folder / "report.html", folder / "summary.json"]


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials, no user configuration: what a fresh machine has."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL",
                "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))


# -- each library's own reader ------------------------------------------------------------------


def wandb_records(path: Path):
    """The records of a W&B offline run file (LevelDB log blocks of wandb_internal_pb2.Record)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0)
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def read_wandb(folder: Path) -> dict:
    """Every offline part of the run: run ids, config, history rows by checkpoint step, artifacts."""
    found = {"parts": 0, "ids": set(), "config": {}, "rows": {}, "w_steps": [], "artifacts": []}
    for part in sorted((folder / "wandb").glob("offline-run-*")):
        found["parts"] += 1
        for record in wandb_records(next(part.glob("run-*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                found["ids"].add(record.run.run_id)
                found["config"].update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif kind == "history":
                row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                step = row.pop("checkpoint/step")
                assert step not in found["rows"], f"W&B has checkpoint step {step} twice"
                found["w_steps"].append(row.pop("_step"))
                found["rows"][step] = {k: v for k, v in row.items() if not k.startswith("_")}
            elif kind == "artifact":
                found["artifacts"].append((record.artifact.name, sorted(record.artifact.aliases),
                                           sorted(c.path for c in record.artifact.manifest.contents)))
    return found


def read_mlflow(store: Path, experiment: str = tr.DEFAULT_PROJECT) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    rows: dict[int, dict] = {}
    for key in run.data.metrics:
        for point in client.get_metric_history(run.info.run_id, key):
            assert key not in rows.setdefault(point.step, {}), f"MLflow has {key} at step {point.step} twice"
            rows[point.step][key] = point.value
    artifacts = {step: sorted(f.path for f in client.list_artifacts(run.info.run_id, f"step_{step}")) for step in rows}
    return {"id": run.info.run_id, "name": run.info.run_name, "status": run.info.status, "params": run.data.params,
            "rows": rows, "artifacts": artifacts}


def read_tensorboard(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    runs = sorted(p.name for p in (folder / "tensorboard").iterdir())
    acc = EventAccumulator(str(folder / "tensorboard" / runs[0]), size_guidance={"tensors": 0})
    acc.Reload()
    rows: dict[int, dict] = {}
    texts: dict[str, dict[int, str]] = {}
    for tag in acc.Tags()["tensors"]:
        for event in acc.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto).item()
            if isinstance(value, bytes):
                texts.setdefault(tag, {})[event.step] = value.decode()
            else:
                assert tag not in rows.setdefault(event.step, {}), f"TensorBoard has {tag} at {event.step} twice"
                rows[event.step][tag] = value
    files = len(list((folder / "tensorboard" / runs[0]).glob("events.out.tfevents.*")))
    return {"runs": runs, "rows": rows, "texts": texts, "files": files}


# -- the pure parts --------------------------------------------------------------------------------


def test_names_steps_and_numbers():
    assert tr.expand(["all"]) == tr.TRACKERS
    assert tr.expand(["tensorboard,wandb", "wandb"]) == ("wandb", "tensorboard")
    assert tr.expand(["none"]) == ()
    with pytest.raises(ValueError, match="unknown tracker 'neptune'"):
        tr.expand(["neptune"])
    assert tr.missing_extra(tr.TRACKERS) is None
    tr.NEEDS["tensorboard"] = ("tensorboard", "no_such_module_here")
    try:
        assert tr.missing_extra(tr.TRACKERS) == ("--report-to tensorboard: not installed; install with "
                                                 "pip install 'tau2-run-local[tensorboard]'")
    finally:
        tr.NEEDS["tensorboard"] = ("tensorboard",)
    for name, step in [("checkpoint-1000", 1000), ("global_step_250", 250), ("global_step40", 40), ("step_7", 7),
                       ("iter_0001000", 1000), ("iteration-20", 20), ("1500", 1500), ("final", 3), ("sft-v2", 3),
                       ("global_step_100/actor/huggingface", 100)]:
        assert tr.checkpoint_step(name, 3) == step, name

    summary = launcher_summary(2)
    found = tr.metrics(summary)
    retail = summary["domains"]["retail"]
    assert found["retail/avg_reward"] == retail["avg_reward"]
    assert found["retail/pass_hat_2"] == retail["pass_hat_k"]["2"]
    assert (found["retail/simulations"], found["retail/not_scored"]) == (retail["simulations"], 1)
    assert found["retail/failures/malformed_tool_call"] == 2 and found["overall/failures/retried_calls"] == 8
    assert found["airline/tokens/agent/prompt"] == 20_000 and found["overall/cost_usd/user"] == 0.05
    assert found["retail/termination/max_steps"] == 1 and found["overall/rate_limited_calls/user"] == 2
    assert not any("cost_usd/agent" in k or "total_cost" in k or "reward_per_dollar" in k for k in found)
    assert all(type(v) is float for v in found.values())

    flat = tr.params(SETTINGS, secrets=["hosted_vllm/planner"])
    assert flat["agent_llm_args.max_tokens"] == 256 and flat["domains"] == "retail,airline"
    assert flat["experts.planner"] == "***" and flat["task_set"] == "None"
    assert not any("api_key" in k for k in flat) and SECRET not in json.dumps(flat)


# -- the real trackers ---------------------------------------------------------------------------


def check_rows(rows: dict, want: dict[int, dict], stored=float) -> None:
    """The tracker holds exactly summary.json's numbers (as the type it stores), each at its checkpoint's step."""
    assert sorted(rows) == sorted(want)
    for step, summary in want.items():
        assert rows[step] == {k: float(stored(v)) for k, v in tr.metrics(summary).items()}, step


def one_evaluation(folder: Path, name: str) -> dict:
    files = evaluation_folder(folder, 1)
    reporting = tr.Reporting([name], tr.Target(folder, params=tr.params(SETTINGS)))
    assert reporting.log(tr.checkpoint_step("agent", 0), launcher_summary(1), files) == []
    assert reporting.close() == []
    return {0: launcher_summary(1)}


def watch(out: Path, name: str) -> dict:
    """Three checkpoints: a watch stopped after two, rerun for the third, rerun once more (nothing new)."""
    names = ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
    files = {n: evaluation_folder(out / n, scale) for scale, n in enumerate(names, 1)}
    target = tr.Target(out, run_name="run7", params=tr.params(SETTINGS))
    for evaluated in (names[:2], names, names):
        reporting = tr.Reporting([name], target)
        for order, ckpt in enumerate(evaluated):
            summary = json.loads((out / ckpt / "summary.json").read_text())
            assert reporting.log(tr.checkpoint_step(ckpt, order), summary, files[ckpt]) == []
        assert reporting.close() == []
    ledger = json.loads((out / tr.LEDGER).read_text())[name]
    assert [entry["steps"] for entry in ledger.values()] == [[100, 200, 300]]
    return {100 * scale: launcher_summary(scale) for scale in (1, 2, 3)}


def test_wandb_offline(tmp_path: Path):
    want = one_evaluation(tmp_path / "single", "wandb")
    found = read_wandb(tmp_path / "single")
    check_rows(found["rows"], want)
    assert found["config"]["agent_llm_args.temperature"] == 0.0 and found["config"]["num_trials"] == 2
    (run_id,) = found["ids"]
    assert found["artifacts"] == [(f"tau2-scores-{run_id}", ["latest", "step-0"], ["report.html", "summary.json"])]

    want = watch(tmp_path / "watch", "wandb")
    found = read_wandb(tmp_path / "watch")
    check_rows(found["rows"], want)
    assert found["parts"] == 2 and len(found["ids"]) == 1  # one run, resumed once; the last rerun opened nothing
    assert found["w_steps"] == [0, 1, 2]  # the parts never overlap in W&B's own steps
    assert sorted(a[1][-1] for a in found["artifacts"]) == ["step-100", "step-200", "step-300"]


def test_mlflow_sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # where MLflow puts the artifacts of a store of the user's: ./mlruns
    want = one_evaluation(tmp_path / "single", "mlflow")
    store = tmp_path / "single" / "mlflow.db"
    found = read_mlflow(store)
    check_rows(found["rows"], want)
    assert (found["name"], found["status"]) == ("single", "FINISHED")
    assert found["params"]["agent_llm_args.max_tokens"] == "256"
    assert found["artifacts"] == {0: ["step_0/report.html", "step_0/summary.json"]}
    assert next((tmp_path / "single" / "mlartifacts").rglob("step_0/report.html")).is_file()

    # the watch in a store and experiment of the user's (also: a second new SQLite store costs 6 s)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "watches")
    want = watch(tmp_path / "watch", "mlflow")
    assert not (tmp_path / "watch" / "mlflow.db").exists()
    found = read_mlflow(store, "watches")
    check_rows(found["rows"], want)
    assert (found["name"], found["status"]) == ("run7", "FINISHED")
    assert found["artifacts"][300] == ["step_300/report.html", "step_300/summary.json"]
    assert json.loads(next((tmp_path / "mlruns").rglob("step_200/summary.json")).read_text()) == launcher_summary(2)


def test_tensorboard_event_files(tmp_path: Path):
    want = one_evaluation(tmp_path / "single", "tensorboard")
    found = read_tensorboard(tmp_path / "single")
    assert found["runs"] == ["single"]
    check_rows(found["rows"], want, stored=np.float32)
    assert "| retail | 3 | 6 | 1 | 0.4167 | 0.3333 | 0.3333 | incomplete |" in found["texts"]["scores"][0]
    assert "| num_trials | 2 |" in found["texts"]["settings"][0]

    want = watch(tmp_path / "watch", "tensorboard")
    found = read_tensorboard(tmp_path / "watch")
    assert found["runs"] == ["run7"] and found["files"] == 2
    check_rows(found["rows"], want, stored=np.float32)
    assert sorted(found["texts"]["scores"]) == [100, 200, 300] and list(found["texts"]["settings"]) == [100]


def wandb_service_pids() -> list[int]:
    """W&B's service, a child of this process (its data goes through it)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
        except OSError:
            continue
        name, fields = rest.rsplit(")", 1)
        if name.lstrip("(") == "wandb-core" and int(fields.split()[1]) == os.getpid():
            found.append(int(pid))
    return found


def test_failing_trackers_are_one_warning_each_and_no_secret_is_written(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's choice, with a key that must go nowhere
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # a tracking server that is down
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    out = tmp_path / "out"
    reporting = tr.Reporting(tr.TRACKERS, tr.Target(out, params=tr.params(SETTINGS)), secrets=[SECRET])
    def logged(scale):
        return reporting.log(100 * scale, launcher_summary(scale),
                                             evaluation_folder(out / f"checkpoint-{100 * scale}", scale))
    first = logged(1)
    assert len(first) == 1 and first[0].startswith("--report-to mlflow: ") and "the evaluation goes on" in first[0]
    deadline = time.monotonic() + 10
    while 100 not in read_wandb(out)["rows"]:  # W&B's service writes the run file on its own time
        assert time.monotonic() < deadline, "W&B never wrote step 100"
        time.sleep(0.05)
    (service,) = wandb_service_pids()
    os.kill(service, signal.SIGKILL)  # W&B fails in the middle of the watch
    os.waitpid(service, 0)
    # which error W&B's client meets first is its own race: its mailbox closed, or the socket reset (seen under load)
    warned = logged(2)
    assert len(warned) == 1 and re.fullmatch(
        r"--report-to wandb: (MailboxClosedError|ConnectionResetError: Connection lost); not reporting to wandb for "
        r"the rest of this run \(the evaluation goes on\)", warned[0]), warned
    assert logged(3) == [] and reporting.close() == []
    ledger = json.loads((out / tr.LEDGER).read_text())
    assert [[e["steps"] for e in ledger[name].values()] for name in tr.TRACKERS] == [[[100]], [[]], [[100, 200, 300]]]
    assert sorted(read_tensorboard(out)["rows"]) == [100, 200, 300] and sorted(read_wandb(out)["rows"]) == [100]
    for path in (p for p in out.rglob("*") if p.is_file()):
        assert SECRET.encode() not in path.read_bytes(), path
