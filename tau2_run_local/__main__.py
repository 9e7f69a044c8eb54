"""`python -m tau2_run_local`: the same command as run_local.py."""
from .cli import run

run()
