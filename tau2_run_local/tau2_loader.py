"""τ²-bench, loaded once per process: its logs to our log file, our routed agents and user simulator in
its registry under the names results files record (defaults.ROUTED), its per-simulation work done once
(lean), and the garbage collector set for simulations (defaults.GC_THRESHOLDS)."""
from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

from .defaults import GC_THRESHOLDS, ROUTED


def offline_cost_map() -> None:
    """litellm, imported with τ²-bench, reads its bundled price map instead of fetching one."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def load_tau2(log_path: Path) -> Any:
    """Import τ²-bench (slow: litellm, pandas) only when a run needs it, its logs going to our log file,
    and register its LLM agent and user simulator with every call guarded (see CallGuard)."""
    offline_cost_map()
    from loguru import logger

    logger.remove()
    logger.add(log_path, level="INFO")
    import tau2.run
    from tau2.environment.db import DB
    from tau2.environment.tool import Tool

    from .agents import AGENT_CLASSES, USER_CLASSES
    from .lean import load_once, schema_once

    if not hasattr(Tool.openai_schema.fget, "__wrapped__"):  # a second load (tests) keeps the first's
        Tool.openai_schema = schema_once(Tool.openai_schema.fget)
        DB.load = load_once(DB.load.__func__)

    for stock, cls in AGENT_CLASSES.items():
        if ROUTED[stock] not in tau2.run.registry.get_agents():
            tau2.run.registry.register_agent(cls, ROUTED[stock])
    for stock, cls in USER_CLASSES.items():
        if ROUTED[stock] not in tau2.run.registry.get_users():
            tau2.run.registry.register_user(cls, ROUTED[stock])
    gc.freeze()  # what is loaded by now (τ²-bench, litellm, pydantic) lives as long as the process: never scanned
    gc.set_threshold(*GC_THRESHOLDS)
    return tau2.run
