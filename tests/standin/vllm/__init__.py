"""Fake ``vllm`` package: runs tests/standin/standin_server.py (tests only, never the product)."""

__version__ = "0.0.0+standin"
STANDIN = True
