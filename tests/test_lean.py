"""τ²-bench's per-simulation work done once a process (tau2_run_local/lean.py) gives what τ²-bench's own
code gives, a fresh object at every call: every tool's schema, every domain's database; a simulation never
sees another's writes."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import Standins, run_launcher
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


def test_every_database_copy_is_the_file_as_loaded_and_its_own(tmp_path: Path):
    load_tau2(tmp_path / "tau2.log")
    from tau2.domains.airline.data_model import FlightDB
    from tau2.domains.airline.utils import AIRLINE_DB_PATH
    from tau2.domains.mock.data_model import MockDB
    from tau2.domains.mock.utils import MOCK_DB_PATH
    from tau2.domains.retail.data_model import RetailDB
    from tau2.domains.retail.utils import RETAIL_DB_PATH
    from tau2.domains.telecom.data_model import TelecomDB
    from tau2.domains.telecom.user_data_model import TelecomUserDB
    from tau2.domains.telecom.utils import TELECOM_DB_PATH, TELECOM_USER_DB_PATH
    from tau2.environment.db import DB

    stock = DB.load.__func__.__wrapped__
    for cls, path in ((MockDB, MOCK_DB_PATH), (RetailDB, RETAIL_DB_PATH), (FlightDB, AIRLINE_DB_PATH),
                      (TelecomDB, TELECOM_DB_PATH), (TelecomUserDB, TELECOM_USER_DB_PATH)):
        first, fresh = cls.load(path), stock(cls, path)
        assert type(first) is cls and first == fresh and first.get_hash() == fresh.get_hash()
        assert first.model_dump_json() == fresh.model_dump_json()
        first.__dict__.clear()  # whatever one simulation does to its copy
        assert cls.load(path) == fresh


def test_a_simulation_never_sees_another_ones_writes(tmp_path: Path, standins: Standins):
    """Mock's create_task_1, three times in one process, one after another: each creates task_2 in its
    own copy of the database (with one database shared, the second would create task_3) and scores 1 (its
    evaluation's predicted and gold databases are copies of their own too)."""
    port = standins.start()
    config = tmp_path / "endpoints.json"
    config.write_text(json.dumps({"standin": [{"ip_addr": "127.0.0.1", "port": str(port)}]}))
    result = run_launcher(["--skip-server-start", "--model-config-path", str(config), "--user-llm", "standin",
                           "--domains", "mock", "--task-ids", "create_task_1", "--num-trials", "3",
                           "--max-concurrency", "1", "--workers", "1", "--output-dir", str(tmp_path / "out"),
                           "--log-dir", str(tmp_path / "logs")], env={"OPENAI_API_KEY": ""})
    assert result.returncode == 0, result.stderr
    sims = json.loads((tmp_path / "out" / "mock.json").read_text())["simulations"]
    created = [json.loads(m["content"])["task_id"] for s in sims for m in s["messages"] if m["role"] == "tool"]
    assert created == ["task_2"] * 3
    assert [s["reward_info"]["reward"] for s in sims] == [1.0] * 3
