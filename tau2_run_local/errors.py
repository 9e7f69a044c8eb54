"""The two errors that decide how the launcher ends: bad input (exit code 2, before any process starts) and a
server that failed (exit code 1, with its log tail and the command to reproduce it).
"""
from __future__ import annotations


class UsageError(Exception):
    """Bad input: reported as one line with exit code 2, before any process starts."""


class ServerFailed(Exception):
    """A server this run started died or never served; the message says why and how to reproduce."""
