"""Fake ``python -m vllm.entrypoints.openai.api_server``: starts the deterministic stand-in.

It takes --model and the flags tests/standin/vllm/__init__.py lists, as the old entry of vLLM takes its
own: another flag is argparse's error; ``--help=all`` lists them.
"""

import os
import sys

_STANDIN_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if _STANDIN_DIR not in sys.path:
    sys.path.insert(0, _STANDIN_DIR)

import standin_server  # noqa: E402  (tests/standin/, on sys.path above)

from vllm import check_serve_args  # noqa: E402

if __name__ == "__main__":
    check_serve_args(sys.argv[1:], "api_server.py", model_flag=True)
    standin_server.main(sys.argv[1:])
