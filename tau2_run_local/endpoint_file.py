"""The endpoint file (model_config_local.json) in the seed script's shape: written atomically, read back with
every malformed entry reported as bad input, and the pools it lists.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import UsageError
from .plan import Plan, endpoint_url
from .util import atomic_write


def write_model_config(path: Path, pools: Mapping[str, Sequence[str]]) -> None:
    """The seed script's shape: {model: [{"ip_addr", "port"}], "vllm_model_config_path": path}."""
    doc: dict[str, Any] = {}
    for name, urls in pools.items():
        doc[name] = [{"ip_addr": host, "port": port} for host, port in map(split_url, urls)]
    doc["vllm_model_config_path"] = str(path.resolve())
    atomic_write(path, json.dumps(doc, indent=2) + "\n")


def split_url(url: str) -> tuple[str, str]:
    hostport = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    return host, port


def read_model_config(path: Path) -> dict[str, tuple[str, ...]]:
    """Read an endpoint file into {model: (url, ...)}; anything off-shape is bad input."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--model-config-path {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected an object of model -> endpoint list")
    pools = {}
    for name, entries in doc.items():
        if name == "vllm_model_config_path":
            continue
        if not isinstance(entries, list) or not entries:
            raise UsageError(f"{path}: {name!r} must map to a non-empty list of endpoints")
        urls = []
        for entry in entries:
            if (not isinstance(entry, dict) or not isinstance(entry.get("ip_addr"), str)
                    or not str(entry.get("port", "")).isdigit()):
                raise UsageError(f"{path}: {name!r} has an endpoint that is not "
                                 '{"ip_addr": "<host>", "port": "<port>"}')
            urls.append(endpoint_url(entry["ip_addr"], entry["port"]))
        pools[name] = tuple(urls)
    if not pools:
        raise UsageError(f"{path} lists no endpoints")
    return pools


def config_pools(plan: Plan, live: set[str] | None = None) -> dict[str, list[str]]:
    """The endpoint file's pools, each under its served name: the agent's, a local user server's, and
    the experts served by this fleet; only live servers once the run is under way."""
    def listed(urls: Sequence[str]) -> list[str]:
        return [u for u in urls if live is None or u in live]

    pools = {plan.agent_name: listed(plan.agent_urls)}
    user_name = plan.user_llm.removeprefix("hosted_vllm/")
    if plan.user_urls and user_name != plan.agent_name:
        pools[user_name] = listed(plan.user_urls)
    pools |= {e.name: listed(e.urls) for e in plan.experts if e.source == "served"}
    return pools
