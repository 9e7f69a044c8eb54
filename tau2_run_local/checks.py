"""Everything that can be known wrong before a process starts: model folders, ports, writable folders, API
keys a hosted model needs, endpoints that must already serve.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from . import trackers
from .errors import UsageError
from .host import check_ports
from .plan import Plan
from .readiness import models_status
from .settings import Request
from .util import command_words


def check_model_dir(path: str, flag: str) -> None:
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: no such directory")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{flag} {path}: not a model folder (no config.json)")


def check_writable_dir(path: Path, flag: str) -> None:
    """Create the folder if needed and prove a file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path} is not writable: {exc.strerror or exc}") from None


def needed_api_key(model: str) -> str | None:
    """The environment variable a hosted user-simulator model needs, if any."""
    name = model.lower()
    if name.startswith(("anthropic/", "claude")):
        return "ANTHROPIC_API_KEY"
    if name.startswith(("openai/", "gpt-", "o1", "o3", "o4", "chatgpt")):
        return "OPENAI_API_KEY"
    return None


def check_endpoints(plan: Plan, keys: dict[str, str]) -> None:
    """Servers that must already be up (--skip-server-start, --user-api-base) do serve, to the key they get."""
    started = {s.url for s in plan.servers}

    def refused(url: str, status: int) -> str:
        if status != 401:
            return ""
        return (f"; it refuses the key in ${plan.api_key_env} (HTTP 401)" if url in keys else
                "; it requires a key (HTTP 401): name its variable with --api-key-env")

    for url in plan.agent_urls:
        if url not in started and (status := models_status(url, plan.agent_name, key=keys.get(url, ""))) != 200:
            raise UsageError(f"endpoint {url} does not serve {plan.agent_name!r} (no 200 from /health "
                             f"and /v1/models){refused(url, status)}; start it or fix the endpoint file")
    for url in plan.user_urls:
        if url not in started and (status := models_status(url, key=keys.get(url, ""))) != 200:
            raise UsageError(f"user-simulator endpoint {url} does not answer /health{refused(url, status)}")


def api_key(plan: Plan, env: dict[str, str]) -> str:
    """The key of --api-key-env, which must be set; '' without the option."""
    if plan.api_key_env and not env.get(plan.api_key_env):
        raise UsageError(f"--api-key-env {plan.api_key_env}: ${plan.api_key_env} is not set (or empty)")
    return env.get(plan.api_key_env, "") if plan.api_key_env else ""


def check_report_to(names: tuple[str, ...]) -> None:
    """--report-to names known trackers whose libraries are installed."""
    try:
        missing = trackers.missing_extra(trackers.expand(names))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if missing:
        raise UsageError(missing)


def check_inputs(request: Request, plan: Plan, env: dict[str, str]) -> None:
    """Everything that can be known wrong before a process starts."""
    given_key = api_key(plan, env)
    if "--api-key" in (word.split("=", 1)[0] for word in command_words(request.vllm_arg)):
        raise UsageError("--vllm-arg=--api-key puts the key on every server's command line, which any user of the "
                         "node reads with ps, and this run would not send it; export it and pass its name with "
                         "--api-key-env NAME")
    check_report_to(request.report_to)
    if plan.servers:
        assert request.agent_model  # build_plan plans servers only with one
        check_model_dir(request.agent_model, "--agent-model")
        if request.user_model:
            check_model_dir(request.user_model, "--user-model")
        if request.chat_template and not Path(request.chat_template).is_file():
            raise UsageError(f"--chat-template {request.chat_template}: no such file")
        if plan.executor == "local":  # a SLURM node's ports can only be seen there
            check_ports(plan.servers)
    key = needed_api_key(plan.user_llm) if not plan.user_urls else None
    if key and not env.get(key):
        raise UsageError(f"user simulator {plan.user_llm} needs {key}; set it (see setup_envs.sh) "
                         "or serve the user locally (--user-model, --user-api-base)")
    for expert in plan.experts:
        if expert.source == "served":
            check_model_dir(next(s.model for s in plan.servers if s.served_name == expert.name),
                            f"--expert {expert.name}=")
        key = needed_api_key(expert.model) if expert.source == "API" else None
        if key and not env.get(key):
            raise UsageError(f"expert {expert.name} ({expert.model}) needs {key}; set it, or serve it "
                             f"locally (--expert {expert.name}=/path/to/checkpoint)")
    check_writable_dir(plan.eval.output_dir, "--output-dir")
    check_writable_dir(plan.log_dir, "--log-dir")
    check_writable_dir(plan.config_path.parent, "--model-config-path")
    check_endpoints(plan, plan.endpoint_keys(given_key))
