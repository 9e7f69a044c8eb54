"""tau2_run_local"""
__version__ = "0.2.0"
