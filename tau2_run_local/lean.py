"""τ²-bench's per-simulation work done once a process (issue 17): a domain tool's OpenAI schema, which
τ²-bench rebuilds with pydantic on every call, and a domain's database, which it loads from its file three
times a simulation (the run, then the predicted and the gold environments of the evaluation).

tau2_loader installs both. What they hand out is what τ²-bench's own code gives, a fresh object every
time: the requests stay the same byte for byte (tests/test_requests.py) and a simulation never sees
another's writes (tests/test_lean.py).
"""
from __future__ import annotations

import functools
import inspect
import json
import pickle
import threading
from collections.abc import Callable
from typing import Any

_schemas: dict[tuple, str] = {}
_databases: dict[tuple, bytes] = {}
_loading = threading.Lock()


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


def load_once(stock: Callable[[type, Any], Any]) -> classmethod:
    """DB.load, the file read and validated once per database class and path, pickled; each call gets an
    unpickled copy of its own: a deep copy that skips pydantic's validation (airline's: 130 ms against 164
    for a load, 174 to validate cached JSON text again, 264 for model_copy(deep=True); BENCHMARKS.md 12)."""

    @functools.wraps(stock)
    def load(cls: type, path: Any) -> Any:
        key = (cls, str(path))
        data = _databases.get(key)
        if data is None:
            with _loading:
                data = _databases.get(key)
                if data is None:
                    data = _databases[key] = pickle.dumps(stock(cls, path), protocol=pickle.HIGHEST_PROTOCOL)
        return pickle.loads(data)

    return classmethod(load)
