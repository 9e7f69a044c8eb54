"""τ²-bench, loaded once per process: its logs to our log file, and our routed agents and user simulator
in its registry under the names results files record (defaults.ROUTED)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .defaults import ROUTED


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

    from .agents import AGENT_CLASSES, USER_CLASSES

    for stock, cls in AGENT_CLASSES.items():
        if ROUTED[stock] not in tau2.run.registry.get_agents():
            tau2.run.registry.register_agent(cls, ROUTED[stock])
    for stock, cls in USER_CLASSES.items():
        if ROUTED[stock] not in tau2.run.registry.get_users():
            tau2.run.registry.register_user(cls, ROUTED[stock])
    return tau2.run
