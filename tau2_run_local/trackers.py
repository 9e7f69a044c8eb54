"""Scores where researchers already look: W&B, MLflow and TensorBoard, one point per checkpoint step.

An evaluation (or a whole --watch) is one tracker run; a ledger (trackers.json) keeps each run's id and
steps, so a rerun resumes it and never logs a checkpoint twice. Offline unless the user's environment
says otherwise (WANDB_MODE, WANDB_API_KEY or a netrc login; MLFLOW_TRACKING_URI). A failing tracker is a
warning, never the end of an evaluation; each library is imported only when it is used.
"""
from __future__ import annotations

import importlib.util
import json
import math
import netrc
import os
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

TRACKERS, DEFAULT_PROJECT, LEDGER = ("wandb", "mlflow", "tensorboard"), "tau2-run-local", "trackers.json"
# The modules each tracker needs, as `find_spec` finds them; MLflow's own local store is SQLite.
NEEDS = {"wandb": ("wandb",), "mlflow": ("mlflow", "sqlalchemy", "alembic"), "tensorboard": ("tensorboard",)}
STEP_PATTERN = re.compile(r"(?:checkpoint|step|iteration|iter|ckpt)[-_]?(\d+)$", re.IGNORECASE)  # global_step_9 too
SECRET_KEY = re.compile(r"api[_-]?key|secret|password|passwd|credential|auth|(^|[_-])token$", re.IGNORECASE)


def expand(names: Iterable[str]) -> tuple[str, ...]:
    """--report-to values (repeated or comma-separated; 'all', 'none') as tracker names, in TRACKERS order."""
    wanted: set[str] = set()
    for word in (w.strip().lower() for name in names for w in name.split(",")):
        if word == "all":
            wanted.update(TRACKERS)
        elif word in TRACKERS:
            wanted.add(word)
        elif word not in ("none", ""):
            raise ValueError(f"--report-to: unknown tracker {word!r} (choose from {', '.join(TRACKERS)}, all, none)")
    return tuple(t for t in TRACKERS if t in wanted)


def missing_extra(names: Iterable[str]) -> str | None:
    """The one-line error for trackers whose library is not installed, naming the pip extra; None if all are."""
    missing = [n for n in names if any(importlib.util.find_spec(m) is None for m in NEEDS[n])]
    if not missing:
        return None
    return (f"--report-to {','.join(missing)}: not installed; install with "
            f"pip install 'tau2-run-local[{','.join(missing)}]'")


def checkpoint_step(name: str, order: int) -> int:
    """The training step in a checkpoint's folder name, as trainers write it (checkpoint-1000,
    global_step_1000, step_1000, iter_0001000, 1000), looking from the last part of a path up
    (verl's global_step_100/actor/huggingface); else `order`, the checkpoint's place in the watch."""
    for part in reversed(Path(name).parts):
        if part.isdigit():
            return int(part)
        found = STEP_PATTERN.search(part)
        if found:
            return int(found.group(1))
    return order


def _number(value: Any) -> float | None:
    """A finite number of summary.json; None for anything else ('unknown' costs, None, flags)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _clean(name: str) -> str:
    """A metric name every tracker accepts (MLflow allows letters, digits, _-. /: only)."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name)


def _scope_metrics(scope: str, part: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{name}/{key}", inner)
        elif (number := _number(value)) is not None:
            out[_clean(f"{scope}/{name}")] = number

    for key, value in part.items():
        if key == "pass_hat_k":
            for k, v in value.items():
                add(f"pass_hat_{k}", v)
        elif key == "termination_reasons":
            add("termination", value)
        else:
            add(key, value)
    return out


def metrics(summary: dict[str, Any]) -> dict[str, float]:
    """summary.json's numbers per domain and overall, flat: retail/avg_reward, retail/pass_hat_1,
    retail/simulations, retail/not_scored, retail/failures/<category>, retail/tokens/agent/prompt,
    retail/cost_usd/user, overall/total_cost_usd, ... ('unknown' costs and empty scores left out)."""
    out: dict[str, float] = {}
    for scope, part in [*summary.get("domains", {}).items(), ("overall", summary.get("overall", {}))]:
        out.update(_scope_metrics(scope, part))
    return out


def params(settings: dict[str, Any], secrets: Iterable[str] = ()) -> dict[str, Any]:
    """The run's settings as flat config/params (agent_llm_args.temperature: 0.0), without any value
    that looks like a credential: keys named like one are dropped, known secret values masked."""
    secrets = tuple(s for s in secrets if s)
    out: dict[str, Any] = {}

    def add(name: str, value: Any) -> None:
        if SECRET_KEY.search(name.rsplit(".", 1)[-1]):
            return
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{name}.{key}" if name else str(key), inner)
            return
        if isinstance(value, (list, tuple, set)):
            value = ",".join(str(v) for v in value)
        elif value is None or not isinstance(value, (str, int, float, bool)):
            value = str(value)
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, "***")
        out[name] = value

    add("", settings)
    return out


def score_table(summary: dict[str, Any]) -> str:
    """The score table as Markdown (TensorBoard's text tab renders it)."""
    rows = [*summary.get("domains", {}).items(), ("overall", summary.get("overall", {}))]
    ks = sorted({k for _, d in rows for k in d.get("pass_hat_k", {})}, key=int)
    head = ["domain", "tasks", "simulations", "not scored", "avg reward", *[f"pass^{k}" for k in ks], "status"]
    def cell(v):
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, d in rows:
        cells = [name, d.get("tasks"), d.get("simulations"), d.get("not_scored"), d.get("avg_reward"),
                 *[d.get("pass_hat_k", {}).get(k) for k in ks], d.get("status", "")]
        lines.append("| " + " | ".join(map(cell, cells)) + " |")
    return "\n".join(lines) + "\n"


def _without_credentials(uri: str) -> str:
    """A tracking URI as it may be written down: no user:password@."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])) if "@" in parts.netloc else uri


@dataclass(frozen=True)
class Target:
    """Where one evaluation or one watch reports, and under which names."""

    folder: Path  # the output folder: local stores, the ledger
    project: str | None = None  # --report-project; else WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME; else DEFAULT_PROJECT
    run_name: str | None = None  # --report-run-name; else the output folder's name
    params: dict[str, Any] = field(default_factory=dict)  # from params()

    @property
    def name(self) -> str:
        return self.run_name or self.folder.resolve().name

    def project_for(self, env_var: str) -> str:
        return self.project or os.getenv(env_var) or DEFAULT_PROJECT


class Reporter(Protocol):
    def __init__(self, target: Target, entry: dict[str, Any]) -> None: ...
    @staticmethod
    def where(target: Target) -> str: ...
    def log(self, step: int, summary: dict[str, Any], files: Sequence[Path]) -> None: ...
    def close(self) -> None: ...


def wandb_logged_in() -> bool:
    """An API key in the environment or a netrc login for the W&B host (whose password is not read)."""
    if os.getenv("WANDB_API_KEY"):
        return True
    host = urlsplit(os.getenv("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    try:
        return netrc.netrc(os.getenv("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    """The user's WANDB_MODE; else online when they are logged in, offline otherwise (never a prompt)."""
    return os.getenv("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


class WandbReporter:
    """One W&B run, resumed by id. Its x axis is checkpoint/step; W&B's own _step counts the points
    logged (so points of separate processes never overlap, as `wandb sync` of offline parts wants)."""

    @staticmethod
    def where(target: Target) -> str:
        return f"{wandb_mode()}:{target.project_for('WANDB_PROJECT')}"

    def __init__(self, target: Target, entry: dict[str, Any]):
        import wandb

        self.entry = entry
        entry.setdefault("run_id", uuid.uuid4().hex[:12])
        # nothing of this machine or command line is recorded, only what is logged; the run file is
        # written a second after each log (default: 15 s), so little is lost if the process dies
        quiet = wandb.Settings(console="off", silent=True, save_code=False, disable_git=True, x_disable_meta=True,
                               x_disable_stats=True, x_save_requirements=False, disable_job_creation=True,
                               x_transaction_log_flush_interval=1.0)
        self.run = wandb.init(
            project=target.project_for("WANDB_PROJECT"), name=target.name, id=entry["run_id"], resume="allow",
            mode=None if os.getenv("WANDB_MODE") or wandb_logged_in() else "offline", config=target.params,
            dir=os.getenv("WANDB_DIR") or str(target.folder), settings=quiet)
        self.run.define_metric("checkpoint/step")
        self.run.define_metric("*", step_metric="checkpoint/step")

    def log(self, step: int, summary: dict[str, Any], files: Sequence[Path]) -> None:
        import wandb

        self.run.log({"checkpoint/step": step, **metrics(summary)},
                     step=max(len(self.entry["steps"]), self.run.step), commit=True)
        if files:
            artifact = wandb.Artifact(f"tau2-scores-{self.entry['run_id']}", type="evaluation", metadata={"step": step})
            for path in files:
                artifact.add_file(str(path), name=Path(path).name)
            self.run.log_artifact(artifact, aliases=[f"step-{step}"])

    def close(self) -> None:
        import wandb

        try:
            self.run.finish()
        finally:
            wandb.teardown()  # finish() returns before W&B's service has written the run file out


class MlflowReporter:
    """One MLflow run, resumed by id; SQLite under the output folder unless MLFLOW_TRACKING_URI is set."""

    @staticmethod
    def tracking_uri(target: Target) -> str:
        return os.getenv("MLFLOW_TRACKING_URI") or f"sqlite:///{(target.folder / 'mlflow.db').resolve()}"

    @staticmethod
    def where(target: Target) -> str:
        uri = _without_credentials(MlflowReporter.tracking_uri(target))
        return f"{uri}#{target.project_for('MLFLOW_EXPERIMENT_NAME')}"

    def __init__(self, target: Target, entry: dict[str, Any]):
        import logging

        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its table-creation chatter
        logging.getLogger("alembic").setLevel(logging.WARNING)
        uri = self.tracking_uri(target)
        own_store = not os.getenv("MLFLOW_TRACKING_URI")
        self.client = MlflowClient(tracking_uri=uri)
        name = target.project_for("MLFLOW_EXPERIMENT_NAME")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            name, artifact_location=(target.folder / "mlartifacts").resolve().as_uri() if own_store else None)
        self.entry = entry
        if "run_id" in entry:
            try:
                self.client.update_run(entry["run_id"], status="RUNNING")
                return
            except MlflowException:  # gone from the store: start again
                entry["steps"] = []
        run = self.client.create_run(experiment_id, run_name=target.name, tags={"tool": "tau2-run-local"})
        entry["run_id"] = run.info.run_id
        given = [Param(k, str(v)[:6000]) for k, v in target.params.items()]
        for start in range(0, len(given), 100):  # log_batch takes at most 100 params
            self.client.log_batch(run.info.run_id, params=given[start:start + 100])

    def log(self, step: int, summary: dict[str, Any], files: Sequence[Path]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        found = [Metric(k, v, now, step) for k, v in metrics(summary).items()]
        for start in range(0, len(found), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.entry["run_id"], metrics=found[start:start + 1000])
        for path in files:
            self.client.log_artifact(self.entry["run_id"], str(path), artifact_path=f"step_{step}")

    def close(self) -> None:
        self.client.set_terminated(self.entry["run_id"])


class TensorboardReporter:
    """Event files in <output folder>/tensorboard/<run name>/ (a rerun adds one file there), written
    with TensorBoard's own writer (no TensorFlow, no torch): the numbers as scalars (float32, the only
    kind TensorBoard's loader shows; token counts past 2^24 round), the score table and the settings as text."""

    @staticmethod
    def where(target: Target) -> str:
        return str((target.folder / "tensorboard" / target.name).resolve())

    def __init__(self, target: Target, entry: dict[str, Any]):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writer = EventFileWriter(self.where(target))
        rows = [f"| {k} | {str(v).replace('|', '&#124;')} |" for k, v in target.params.items()]
        self.settings = "" if entry["steps"] else "\n".join(["| setting | value |", "|---|---|", *rows])

    def log(self, step: int, summary: dict[str, Any], files: Sequence[Path]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb
        from tensorboard.plugins.text.summary_v2 import text_pb

        values = summary_pb2.Summary()
        for tag, value in metrics(summary).items():
            values.value.extend(scalar_pb(tag, value).value)
        values.value.extend(text_pb("scores", score_table(summary)).value)
        if self.settings:
            values.value.extend(text_pb("settings", self.settings).value)
            self.settings = ""
        self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=values))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


REPORTERS: dict[str, type[Reporter]] = {"wandb": WandbReporter, "mlflow": MlflowReporter,
                                         "tensorboard": TensorboardReporter}


class Reporting:
    """The trackers of one evaluation or one watch. Each is opened at its first new step; a step the
    ledger has for it is skipped; one that fails is reported once and left alone for the rest of the run."""

    def __init__(self, names: Sequence[str], target: Target, secrets: Iterable[str] = ()):
        self.names, self.target = tuple(names), target
        self.secrets = tuple(s for s in secrets if s)
        self.path = target.folder / LEDGER
        try:
            self.ledger: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.ledger = {}
        self.open: dict[str, Reporter] = {}
        self.failed: set[str] = set()

    def entry(self, name: str) -> dict[str, Any]:
        """This tracker's record at its destination now (a new destination starts a run of its own)."""
        where = REPORTERS[name].where(self.target)
        return self.ledger.setdefault(name, {}).setdefault(where, {"steps": []})

    def log(self, step: int, summary: dict[str, Any], files: Sequence[Path] = ()) -> list[str]:
        """Log one checkpoint's scores at `step` to every tracker that lacks it; the warnings of this call."""
        warnings = []
        for name in self.names:
            if name in self.failed:
                continue
            try:
                entry = self.entry(name)
                if step in entry["steps"]:
                    continue
                if name not in self.open:
                    self.target.folder.mkdir(parents=True, exist_ok=True)
                    self.open[name] = REPORTERS[name](self.target, entry)
                self.open[name].log(step, summary, files)
                entry["steps"].append(step)
            except Exception as exc:  # a tracker's failure must not lose the evaluation
                warnings.append(self._failed(name, exc))
            self._save()  # the step, or the run id of a run opened before its first log failed
        return warnings

    def close(self) -> list[str]:
        """Finish every run opened (W&B writes or uploads the rest of its data here); the warnings."""
        warnings = []
        for name, reporter in self.open.items():
            try:
                reporter.close()
            except Exception as exc:
                if name not in self.failed:
                    warnings.append(self._failed(name, exc))
        self.open = {}
        return warnings

    def _failed(self, name: str, exc: Exception) -> str:
        self.failed.add(name)
        text = f"--report-to {name}: {type(exc).__name__}{f': {exc}' if str(exc) else ''}".splitlines()[0]
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return f"{text}; not reporting to {name} for the rest of this run (the evaluation goes on)"

    def _save(self) -> None:
        self.target.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{LEDGER}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.ledger, indent=2) + "\n")
        os.replace(tmp, self.path)
