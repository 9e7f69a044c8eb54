"""Fake ``python -m vllm.entrypoints.openai.api_server``: starts the deterministic stand-in.

All vLLM flags other than --model/--served-model-name/--host/--port are accepted and ignored.
"""

import os
import sys

_STANDIN_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if _STANDIN_DIR not in sys.path:
    sys.path.insert(0, _STANDIN_DIR)

import standin_server  # noqa: E402  (tests/standin/, on sys.path above)

if __name__ == "__main__":
    standin_server.main(sys.argv[1:])
