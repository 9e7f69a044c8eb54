"""Is a server there and serving? vLLM's readiness, read over HTTP: /health, then /v1/models; with the run's
key where the server requires one (vLLM guards only /v1, but every call of ours to a keyed server sends it).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def http_get_json(url: str, timeout: float, key: str = "") -> tuple[int, Any]:
    """(status, parsed JSON or None); status 0 when nothing answered. `key` goes as `Authorization: Bearer`."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
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


def serves(url: str, served_name: str | None = None, timeout: float = 2.0, key: str = "") -> bool:
    """True when /health answers 200 and /v1/models lists the served name (vLLM's readiness)."""
    return models_status(url, served_name, timeout, key) == 200


def models_status(url: str, served_name: str | None = None, timeout: float = 2.0, key: str = "") -> int:
    """200 when the server serves the name; else the status that says why not: /health's when it is not
    200, /v1/models' (401: a key missing or wrong), 404 when the name is not listed, 0 for no answer."""
    root = url.removesuffix("/v1")
    status, _ = http_get_json(f"{root}/health", timeout, key)
    if status != 200:
        return status
    status, models = http_get_json(f"{url}/models", timeout, key)
    if status != 200 or not isinstance(models, dict):
        return status if status != 200 else 0
    names = {m.get("id") for m in models.get("data", []) if isinstance(m, dict)}
    return 200 if served_name is None or served_name in names else 404
