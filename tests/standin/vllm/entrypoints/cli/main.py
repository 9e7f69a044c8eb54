"""Fake ``python -m vllm.entrypoints.cli.main serve MODEL ...`` (what `vllm serve` runs): starts the stand-in.

Like vLLM's CLI it takes the model as the positional argument after ``serve``; every other vLLM flag
(--api-server-count among them) is accepted and ignored, as the stand-in's own parser does.
"""

import os
import sys

_STANDIN_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if _STANDIN_DIR not in sys.path:
    sys.path.insert(0, _STANDIN_DIR)

import standin_server  # noqa: E402  (found through the path set just above)

if __name__ == "__main__":
    command, model, *rest = sys.argv[1:]
    if command != "serve" or model.startswith("-"):
        sys.exit(f"stand-in vllm CLI: expected `serve MODEL [flags]`, got {sys.argv[1:]}")
    standin_server.main(["--model", model, *rest])
