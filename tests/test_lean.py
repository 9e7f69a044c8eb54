"""τ²-bench's per-simulation work done once a process (tau2_run_local/lean.py) gives what τ²-bench's own
code gives: every tool's schema, a fresh object at every call."""
from __future__ import annotations

import json
from pathlib import Path

from tau2_run_local.tau2_loader import load_tau2


def text(schema: dict) -> str:
    """As the request carries it: key order counts."""
    return json.dumps(schema)


def domain_tools(registry, domain: str) -> list:
    env = registry.get_env_constructor(domain)()
    return [*env.get_tools(), *(env.get_user_tools() if env.user_tools else [])]


def test_every_tools_schema_is_the_stock_one_and_its_own_copy(tmp_path: Path):
    registry = load_tau2(tmp_path / "tau2.log").registry
    from tau2.environment.tool import Tool

    from tau2_run_local import lean

    stock = Tool.openai_schema.fget.__wrapped__
    for domain in registry.get_domains():
        for tool in domain_tools(registry, domain):
            first = tool.openai_schema
            assert text(first) == text(stock(tool)), (domain, tool.name)
            first["function"]["parameters"]["edited"] = True  # as litellm may: the next call does not see it
            assert text(tool.openai_schema) == text(stock(tool))
        # a new simulation's tools are new objects: their schemas come from the cache
        assert all(text(tool.openai_schema) == text(stock(tool)) for tool in domain_tools(registry, domain))
    assert lean._schemas
