"""errors"""
from __future__ import annotations


class UsageError(Exception):
    """Bad input: reported as one line with exit code 2, before any process starts."""


class ServerFailed(Exception):
    """A server this run started died or never served; the message says why and how to reproduce."""
