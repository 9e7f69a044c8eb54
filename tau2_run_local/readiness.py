"""Is a server there and serving? vLLM's readiness, read over HTTP: /health, then /v1/models."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def http_get_json(url: str, timeout: float) -> tuple[int, Any]:
    """(status, parsed JSON or None); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None
    try:
        return status, json.loads(body or b"null")
    except ValueError:
        return status, None


def serves(url: str, served_name: str | None = None, timeout: float = 2.0) -> bool:
    """True when /health answers 200 and /v1/models lists the served name (vLLM's readiness)."""
    root = url.removesuffix("/v1")
    status, _ = http_get_json(f"{root}/health", timeout)
    if status != 200:
        return False
    status, models = http_get_json(f"{url}/models", timeout)
    if status != 200 or not isinstance(models, dict):
        return False
    names = {m.get("id") for m in models.get("data", []) if isinstance(m, dict)}
    return served_name is None or served_name in names
