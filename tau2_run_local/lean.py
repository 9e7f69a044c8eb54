"""τ²-bench's per-simulation work done once a process (issue 17): a domain tool's OpenAI schema, which
τ²-bench rebuilds with pydantic on every call.

tau2_loader installs it. What it hands out is what τ²-bench's own code gives, a fresh object every time:
the requests stay the same byte for byte (tests/test_requests.py).
"""
from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any

_schemas: dict[tuple, str] = {}


def schema_once(stock: Callable[[Any], dict]) -> property:
    """Tool.openai_schema, computed once per tool of a toolkit class: such a tool is a bound method, its
    schema made from its function's signature and docstring alone. Any other tool (a closure, say) gets
    the stock schema. Kept as JSON text, so each call gets its own dict (litellm may edit what it gets)."""

    @functools.wraps(stock)
    def openai_schema(tool: Any) -> dict:
        func = tool._func
        if not inspect.ismethod(func):
            return stock(tool)
        key = (func.__func__, tool._use_short_desc, tuple(sorted(tool._predefined)))
        text = _schemas.get(key)
        if text is None:
            schema = stock(tool)
            text = json.dumps(schema)
            if json.loads(text) != schema:  # not plain JSON (a tuple, say): its copy would differ
                return schema
            _schemas[key] = text
        return json.loads(text)

    return property(openai_schema)

