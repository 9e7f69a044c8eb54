"""What this machine shows: its GPUs and their memory, the weights' sizes, free ports; and survey_host, which
gathers all the planner needs (through SLURM discovery inside an allocation) into a Host, among it the
flags the installed vLLM's serve command takes, read from its own --help once per vLLM and kept.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

from .defaults import CPU_KV_CACHE_GIB, VLLM_HELP_TIMEOUT_S
from .endpoint_file import read_model_config
from .errors import UsageError
from .expert_plan import expert_pools
from .plan import Host, Node, ParserChoice, ServerSpec, this_machine
from .planner import sbatch_nodes
from .settings import Request
from .slurm_discovery import choose_executor, slurm_nodes
from .tool_parsers import choose_parsers, vllm_dir, vllm_parsers, vllm_version
from .util import atomic_write
from .validation import parse_start_port
from .vllm_flags import CLI_ENTRY, OLD_ENTRY, help_flags

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # files that hold a model's weights


def visible_gpus(env: dict[str, str]) -> tuple[str, ...]:
    """GPU ids this run may use: nvidia-smi's list, narrowed by an inherited CUDA_VISIBLE_DEVICES."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    listed = tuple(line.strip() for line in out.splitlines() if line.strip())
    inherited = env.get("CUDA_VISIBLE_DEVICES")
    if inherited is None:
        return listed
    return tuple(x.strip() for x in inherited.split(",") if x.strip() and x.strip() != "-1")


def gpu_memory_mib() -> dict[str, int]:
    """Total memory of each GPU (nvidia-smi id -> MiB); empty where nvidia-smi does not say."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    sizes = {}
    for line in out.splitlines():
        index, _, mib = line.partition(",")
        if index.strip() and mib.strip().isdigit():
            sizes[index.strip()] = int(mib.strip())
    return sizes


def model_weight_bytes(*folders: str | None) -> dict[str, int]:
    """Bytes of weight files in each model folder (what the weights take on the GPU, near enough):
    the safetensors files where there are any (a checkpoint may also hold .bin copies or optimizer
    state), else the .bin/.pt files."""
    sizes = {}
    for folder in filter(None, folders):
        with contextlib.suppress(OSError):
            files = [f for f in Path(folder).iterdir() if f.suffix in WEIGHT_SUFFIXES]
            total = sum(f.stat().st_size for f in [f for f in files if f.suffix == ".safetensors"] or files)
            if total:
                sizes[folder] = total
    return sizes


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens there. Binding without SO_REUSEPORT fails even where vLLM set it; with
    SO_REUSEADDR, as vLLM's own server binds, the connections of a server that just stopped (TIME_WAIT, for
    a minute) do not count: a rerun right after a run was refused "port in use" on a GPU machine."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(host: str) -> Iterator[int]:
    """Ports the kernel says are free now, for --start-port auto, each once. The probe socket is closed
    before a port is handed out: the plan (and the Host that holds this iterator) outlive the planning,
    and a port still bound here would be "in use" for the check and the server."""
    given: set[int] = set()
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in given:
            given.add(port)
            yield port


def check_ports(servers: Sequence[ServerSpec]) -> None:
    for spec in servers:
        if not port_is_free(spec.host, spec.port):
            raise UsageError(f"port {spec.port} on {spec.host} is in use; free it, pick --start-port, "
                             "or use --start-port auto")


def parser_choices(request: Request) -> dict[tuple[str, str | None], ParserChoice]:
    """What the files of each model this fleet serves call for, keyed (folder, --chat-template): the
    agent's template is its own, when the file is there (a missing one is bad input, said later)."""
    template = request.chat_template if request.chat_template and Path(request.chat_template).is_file() else None
    folders = [(request.agent_model, request.chat_template), (request.user_model, None),
               *((p.model, None) for p in expert_pools(request))]
    return {(m, t): choose_parsers(m, template if t else None) for m, t in folders if m}


def survey_host(request: Request, env: dict[str, str]) -> Host:
    """Read what the plan depends on: the executor, the nodes and their GPUs, the endpoint file, ports,
    GPU memory and weight sizes, the CPUs here, the served models' parsers and the installed vLLM's."""
    executor = choose_executor(request, env)
    if request.skip_server_start:
        nodes: tuple[Node, ...] = ()
    elif request.sbatch:
        nodes = sbatch_nodes(request)
    elif executor == "slurm":
        nodes = slurm_nodes(env)
    else:
        nodes = this_machine(visible_gpus(env), os.cpu_count() or 1)
    config = read_model_config(Path(request.model_config_path)) if request.skip_server_start else {}
    start = parse_start_port(request.start_port)
    ports = free_ports(request.host or "127.0.0.1") if start is None else iter(range(start, 65536))
    local_gpus = executor == "local" and any(n.gpus for n in nodes)
    experts = (p.model for p in expert_pools(request))
    cli = vllm_cli_works()
    return Host(
        nodes=nodes, ports=ports, config=config,
        cache_root=env.get("VLLM_CACHE_ROOT") or str(Path.home() / ".cache" / "vllm"),
        cpu_kv_gib=env.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KV_CACHE_GIB, executor=executor,
        gpu_mib=gpu_memory_mib() if local_gpus else {},
        weight_bytes=model_weight_bytes(request.agent_model, request.user_model, *experts) if local_gpus else {},
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        vllm_cli=cli, cpu_bf16=cpu_has_native_bf16(),
        gpu_compute=gpu_compute_capability() if request.deterministic and local_gpus else {},
        batch_invariant_vllm=vllm_has_batch_invariance(),
        parsers={} if request.skip_server_start else parser_choices(request),
        vllm_parsers=(frozenset(), frozenset()) if request.skip_server_start else vllm_parsers(),
        vllm_version=None if request.skip_server_start else vllm_version(),
        vllm_flags=frozenset() if request.skip_server_start else vllm_serve_flags(cli, launcher_cache(env), env))


def gpu_compute_capability() -> dict[str, float]:
    """Each GPU's compute capability (nvidia-smi id -> 9.0 for Hopper); empty where nvidia-smi does not say."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    caps = {}
    for line in out.splitlines():
        index, _, cap = (x.strip() for x in line.partition(","))
        with contextlib.suppress(ValueError):
            caps[index] = float(cap)
    return caps


def vllm_has_batch_invariance() -> bool:
    """Whether the installed vLLM reads VLLM_BATCH_INVARIANT, from its envs.py, without importing vLLM."""
    spec = importlib.util.find_spec("vllm")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        with contextlib.suppress(OSError):
            if "VLLM_BATCH_INVARIANT" in (Path(folder) / "envs.py").read_text():
                return True
    return False


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AVX-512 BF16 or AMX: the CPU computes bf16 itself (unknown counts as yes: vLLM's own default)."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def vllm_cli_works() -> bool:
    """vLLM's CLI (`vllm serve`) starts by reading the version of the "vllm" distribution; vllm-cpu installs
    the same code as "vllm-cpu", so there the CLI fails and servers start through the old module."""
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return False
    return True


def launcher_cache(env: dict[str, str]) -> Path:
    """Where the launcher keeps what it learnt of this machine: $XDG_CACHE_HOME/tau2_run_local."""
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tau2_run_local"


def vllm_serve_flags(cli: bool, cache: Path, env: dict[str, str] | None = None,
                     package_dir: Path | None = None) -> frozenset[str]:
    """The flags the installed vLLM's serve command takes, from its own `--help=all` (the old entry's where
    its CLI does not start: vllm-cpu). That imports vLLM, 10-40 s, so the list is kept under `cache`, one
    file per vLLM: its version, folder, and the mtimes of the folder, its __init__.py and the entry module (a
    reinstall or an edit is a new file); launchers that start at once wait for one reading. Empty (not
    known: no flag is checked) where vLLM is not installed or its help lists nothing."""
    package_dir = package_dir or vllm_dir()
    if package_dir is None or not package_dir.is_dir():
        return frozenset()
    entry = CLI_ENTRY if cli else OLD_ENTRY
    marks = [package_dir, package_dir / "__init__.py", package_dir.joinpath(*entry.split(".")[1:]).with_suffix(".py")]
    key = [vllm_version(package_dir), str(package_dir.resolve()), entry,
           [m.stat().st_mtime_ns if m.exists() else 0 for m in marks]]
    path = cache / "vllm_serve_flags" / (hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20] + ".json")
    with _locked(path.with_suffix(".lock")):
        kept = _read_flags(path, key)
        if kept:
            return kept
        flags: frozenset[str] = frozenset()
        for asked in ("--help=all", "--help"):  # vLLM before 0.9 has no --help=all: its --help lists them all
            flags = help_flags(_help_text([sys.executable, "-m", entry, *(["serve"] if cli else []), asked], env))
            if flags:
                break
        if flags:
            with contextlib.suppress(OSError):  # an unwritable cache: read again next time
                atomic_write(path, json.dumps({"key": key, "flags": sorted(flags)}, indent=1) + "\n")
    return flags


def _help_text(argv: list[str], env: dict[str, str] | None) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=VLLM_HELP_TIMEOUT_S, env=env,
                              stdin=subprocess.DEVNULL, start_new_session=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _read_flags(path: Path, key: list) -> frozenset[str]:
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return frozenset()
    return frozenset(kept["flags"]) if isinstance(kept, dict) and kept.get("key") == key else frozenset()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on this file, where one can be taken (else none: the reading is only repeated)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115  (held for the block, closed below)
    except OSError:
        yield
        return
    with handle:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
