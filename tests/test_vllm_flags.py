"""The flags of the servers' commands against the installed vLLM's own `serve --help=all`: the pure check
(tau2_run_local.vllm_flags), the plan refused for a flag vLLM lacks, and the kept list (host.vllm_serve_flags),
read from the stand-in's help once and then from the cache."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import STANDIN
from tau2_run_local import host
from tau2_run_local.errors import UsageError
from tau2_run_local.plan import Host, this_machine
from tau2_run_local.planner import build_plan
from tau2_run_local.settings import parse_request
from tau2_run_local.vllm_flags import CLI_ENTRY, OLD_ENTRY, check_serve_flags, help_flags, unknown_flags

# the stand-in's `vllm` package, read from its file (the venv's vllm may be imported already)
_spec = importlib.util.spec_from_file_location("standin_vllm", STANDIN / "vllm" / "__init__.py")
assert _spec and _spec.loader
standin_vllm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(standin_vllm)

KNOWN = frozenset({"-h", "--help", "--served-model-name", "--host", "--port", "--enable-auto-tool-choice",
                   "--no-enable-auto-tool-choice", "--tool-call-parser", "--max-model-len", "--enforce-eager",
                   "--tensor-parallel-size", "-tp", "--compilation-config", "-cc", "--model", "--seed",
                   "--max-num-seqs", "--quantization", "-q"})


def serve(*flags: str) -> tuple[str, ...]:
    return (sys.executable, "-m", CLI_ENTRY, "serve", "/ckpt", *flags)


def test_help_flags_reads_argparse_option_lines_not_the_descriptions():
    parser = argparse.ArgumentParser(prog="vllm serve")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, help="see also --pipeline-parallel-size")
    parser.add_argument("--enable-auto-tool-choice", action=argparse.BooleanOptionalAction)
    parser.add_argument("--tool-call-parser", choices=["hermes", "llama3_json"], help="with --tool-parser-plugin")
    group = parser.add_argument_group("CacheConfig", "sizes; --kv-cache-memory-bytes overrides them")
    group.add_argument("--kv-cache-dtype", default="auto")
    assert help_flags(parser.format_help()) == {"-h", "--help", "--tensor-parallel-size", "-tp",
                                                "--enable-auto-tool-choice", "--no-enable-auto-tool-choice",
                                                "--tool-call-parser", "--kv-cache-dtype"}


def test_unknown_flags_reads_the_command_as_vllm_does():
    taken = serve("--served-model-name", "m", "--max_model_len=8192", "--compilation-config.mode", "3", "-tp", "2",
                  "-qfp8", "-O3", "--max-model", "4096", "--seed", "-1", "--enforce-eager")
    assert unknown_flags([taken], KNOWN) == []  # underscores, dotted keys, short and attached, -O, abbreviated
    refused = serve("--kv-cache-memory-bytes", "9", "--bogus=1", "-zz", "--bogus", "--", "--after-the-end")
    assert unknown_flags([refused], KNOWN) == ["--kv-cache-memory-bytes", "--bogus", "-zz"]
    assert unknown_flags([serve("--bogus")], frozenset()) == []  # vLLM's flags not known: nothing checked
    srun = ("srun", "--nodes=1", "--exact", sys.executable, "-m", OLD_ENTRY, "--model", "/ckpt", "--port", "1")
    assert unknown_flags([srun], KNOWN) == []  # srun's own flags are not vLLM's
    assert unknown_flags([serve("--max", "1")], KNOWN) == ["--max"]  # the start of two flags: ambiguous


def test_check_serve_flags_names_each_flag_and_what_to_do():
    commands = [serve("--kv-cache-memory-bytes", "9", "--enforce-eagr"), serve("--enforce-eagr")]
    line = check_serve_flags(commands, ["--enforce-eagr"], KNOWN, "0.9.2")
    assert line == ("vLLM 0.9.2 takes no --enforce-eagr (did you mean --enforce-eager?), given with --vllm-arg: "
                    "drop it, or spell it as its `vllm serve --help=all` does; and no --kv-cache-memory-bytes, "
                    "which the launcher passes to its servers: `make setup` installs the tested vLLM, "
                    "`make setup VLLM_VERSION=...` another release")
    assert "\n" not in line
    assert check_serve_flags([serve("--enforce-eager")], ["--enforce-eager"], KNOWN, "0.9.2") is None


def test_the_plan_is_refused_for_a_flag_the_installed_vllm_lacks():
    """GPU servers that share a GPU get a fixed KV cache (--kv-cache-memory-bytes): a vLLM without it is
    refused by the planner, with no process started; with it, the same plan passes."""
    request = parse_request(["--agent-model", "/ckpt", "--num-servers", "2", "--servers-per-gpu", "2",
                             "--vllm-arg=--enforce-eager"], {})

    def plan(flags: frozenset[str]):
        return build_plan(request, Host(this_machine(("0",), 16), iter(range(1900, 2000)), "/cache",
                                        gpu_mib={"0": 143771}, weight_bytes={"/ckpt": 10**9}, vllm_flags=flags,
                                        vllm_version="0.9.2"))

    flags = {a for s in plan(frozenset()).servers for a in s.argv if a.startswith("--")}
    assert "--kv-cache-memory-bytes" in flags and "--api-server-count" in flags
    assert plan(frozenset(flags | {"-h"})).servers
    with pytest.raises(UsageError, match=r"^vLLM 0\.9\.2 takes no --kv-cache-memory-bytes, which the launcher"):
        plan(frozenset(flags - {"--kv-cache-memory-bytes"}))


@pytest.fixture
def standin_copy(tmp_path: Path) -> Path:
    """A copy of the stand-in (its own folder, so its mtimes are this test's to change)."""
    shutil.copytree(STANDIN, tmp_path / "standin", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "standin"


def test_the_flag_list_is_read_once_per_vllm_and_kept(tmp_path: Path, standin_copy: Path, monkeypatch):
    env = {**os.environ, "PYTHONPATH": str(standin_copy)}
    cache = tmp_path / "cache"
    honest = {*standin_vllm.VALUE_FLAGS, *standin_vllm.SWITCHES, "-h", "--help"}
    first = host.vllm_serve_flags(True, cache, env, standin_copy / "vllm")
    assert first == honest  # the flags the stand-in's serve command takes, as its --help=all lists them
    kept = list((cache / "vllm_serve_flags").glob("*.json"))
    assert len(kept) == 1 and set(json.loads(kept[0].read_text())["flags"]) == honest

    def no_process(*args, **kwargs):
        raise AssertionError("vLLM's help was run again")

    monkeypatch.setattr(host.subprocess, "run", no_process)
    assert host.vllm_serve_flags(True, cache, env, standin_copy / "vllm") == honest  # from the cache
    monkeypatch.undo()
    init = standin_copy / "vllm" / "__init__.py"  # another install in the same place: read again
    os.utime(init, ns=(init.stat().st_atime_ns, init.stat().st_mtime_ns + 10**9))
    env["STANDIN_WITHOUT_FLAGS"] = "--kv-cache-memory-bytes"
    assert host.vllm_serve_flags(True, cache, env, standin_copy / "vllm") == honest - {"--kv-cache-memory-bytes"}
    assert len(list((cache / "vllm_serve_flags").glob("*.json"))) == 2
    assert host.vllm_serve_flags(False, cache, env, standin_copy / "vllm") == honest - {"--kv-cache-memory-bytes"} | {
        "--model"}  # the old entry's, kept apart
    assert host.vllm_serve_flags(True, cache, env, tmp_path / "no_vllm_here") == frozenset()


def test_the_standin_refuses_what_it_does_not_list(standin_copy: Path):
    env = {**os.environ, "PYTHONPATH": str(standin_copy), "STANDIN_QUIET": "1"}
    done = subprocess.run([sys.executable, "-m", CLI_ENTRY, "serve", "/ckpt", "--port", "1", "--bogus"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "unrecognized arguments: --bogus" in done.stderr
