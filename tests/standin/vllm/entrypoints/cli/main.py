"""Fake ``python -m vllm.entrypoints.cli.main serve MODEL ...`` (what `vllm serve` runs): starts the stand-in.

Like vLLM's CLI it takes the model as the positional argument after ``serve``, refuses a flag it does not
take and lists the ones it takes on ``serve --help=all`` (tests/standin/vllm/__init__.py).
"""

import os
import sys

_STANDIN_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if _STANDIN_DIR not in sys.path:
    sys.path.insert(0, _STANDIN_DIR)

import standin_server  # noqa: E402  (found through the path set just above)

from vllm import check_serve_args  # noqa: E402

if __name__ == "__main__":
    command, *rest = sys.argv[1:] or [""]
    model = rest.pop(0) if rest and not rest[0].startswith("-") else None
    if command != "serve" or (model is None and not any(a.startswith("--help") for a in rest)):
        sys.exit(f"stand-in vllm CLI: expected `serve MODEL [flags]`, got {sys.argv[1:]}")
    check_serve_args(rest, "vllm serve", model_flag=False)
    standin_server.main(["--model", str(model), *rest])
