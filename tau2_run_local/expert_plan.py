"""Experts as the request names them: which are checkpoint folders (served pools of this fleet), which are
in the endpoint file, which are APIs; their descriptions, prices and the policy addendum.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .defaults import DEFAULT_POLICY_ADDENDUM
from .errors import UsageError
from .plan import Expert, PoolSettings, ServerSpec, hosted
from .settings import Request
from .validation import named_values, parse_gpu_ids


def is_folder(model: str) -> bool:
    """An expert given as a checkpoint folder (a path), not as a model name."""
    return model.startswith(("/", "./", "../", "~")) or Path(model).is_dir()


def read_expert_info(path: str | None) -> dict[str, dict[str, Any]]:
    """--expert-info: {"NAME": {"description": "...", "price": [in, out]}}."""
    if path is None:
        return {}
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"--expert-info {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--expert-info {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise UsageError(f'--expert-info {path}: expected {{"NAME": {{"description": "...", "price": [in, out]}}}}')
    return doc


def read_prices(request: Request, info: dict[str, dict[str, Any]],
                experts: dict[str, str]) -> tuple[tuple[str, float, float], ...]:
    """$ per million tokens the user gave: --price MODEL=IN,OUT, and --expert-info's prices."""
    given = {name: value.split(",") for name, value in named_values(request.price, "--price").items()}
    given |= {experts[name]: entry["price"] for name, entry in info.items() if "price" in entry and name in experts}
    prices = []
    for model, pair in given.items():
        try:
            prompt, completion = (float(x) for x in pair)
        except (TypeError, ValueError):
            raise UsageError(f"the price of {model} must be two numbers, $ per million prompt and completion "
                             f"tokens (IN,OUT), not {pair!r}") from None
        prices.append((model, prompt, completion))
    return tuple(prices)


def expert_pools(request: Request) -> tuple[PoolSettings, ...]:
    """The experts given as checkpoint folders: each one a pool of this fleet, served under its name."""
    experts = named_values(request.expert, "--expert")
    counts = named_values(request.expert_servers, "--expert-servers")
    tps = named_values(request.expert_tensor_parallel_size, "--expert-tensor-parallel-size")
    gpus = named_values(request.expert_gpu_ids, "--expert-gpu-ids")
    for flag, given in (("--expert-servers", counts), ("--expert-tensor-parallel-size", tps),
                        ("--expert-gpu-ids", gpus)):
        stray = [n for n in given if n not in experts or not is_folder(experts[n])]
        if stray:
            raise UsageError(f"{flag} names {stray[0]!r}, which is no expert served by this fleet "
                             "(--expert NAME=FOLDER)")

    def positive(text: str, flag: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise UsageError(f"{flag} wants a positive count, not {text!r}")
        return int(text)

    return tuple(PoolSettings("expert", model, name, positive(counts.get(name, "1"), "--expert-servers"),
                              positive(tps.get(name, "1"), "--expert-tensor-parallel-size"),
                              parse_gpu_ids(gpus[name], f"--expert-gpu-ids {name}") if name in gpus else None,
                              1, "expert-")
                 for name, model in experts.items() if is_folder(model))


def resolve_experts(request: Request, servers: Sequence[ServerSpec],
                    config: dict[str, tuple[str, ...]]) -> tuple[Expert, ...]:
    """Where each expert is reached: its pool in this fleet, the endpoint file's servers, or its API."""
    experts = named_values(request.expert, "--expert")
    described = named_values(request.expert_description, "--expert-description")
    info = read_expert_info(request.expert_info)
    for name in [*described, *info]:
        if name not in experts:
            raise UsageError(f"{name!r} is described but no --expert {name}=MODEL is given")
    resolved = []
    for name, model in experts.items():
        if name in ("agent", "user"):
            raise UsageError(f"--expert {name}: the names agent and user are taken; call it something else")
        if is_folder(model):
            if request.skip_server_start:
                raise UsageError(f"--expert {name}={model} is a checkpoint folder, but --skip-server-start starts "
                                 f"no server: list its servers in {request.model_config_path} under a name instead")
            where = (tuple(s.url for s in servers if s.role == "expert" and s.served_name == name), hosted(name),
                     "served")
        elif model in config:
            where = (config[model], hosted(model), "endpoint file")
        else:
            where = ((), model, "API")
        text = described.get(name) or info.get(name, {}).get("description") or f"the model {model}"
        resolved.append(Expert(name, where[1], where[0], text, where[2]))
    return tuple(resolved)


def read_addendum(path: str | None) -> tuple[str, str]:
    """The agent's policy addendum for experts, and where it came from."""
    if path is None:
        return DEFAULT_POLICY_ADDENDUM, "built in (run_local.py DEFAULT_POLICY_ADDENDUM)"
    try:
        return Path(path).read_text().strip(), path
    except OSError as exc:
        raise UsageError(f"--agent-policy-addendum {path}: {exc.strerror or exc}") from None
