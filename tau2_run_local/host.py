"""What this machine shows: its GPUs and their memory, the weights' sizes, free ports; and survey_host, which
gathers all the planner needs (through SLURM discovery inside an allocation) into a Host.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

from .defaults import CPU_KV_CACHE_GIB
from .endpoint_file import read_model_config
from .errors import UsageError
from .expert_plan import expert_pools
from .plan import Host, Node, ParserChoice, ServerSpec, this_machine
from .planner import sbatch_nodes
from .settings import Request
from .slurm_discovery import choose_executor, slurm_nodes
from .tool_parsers import choose_parsers, vllm_parsers, vllm_version
from .validation import parse_start_port

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
    return Host(
        nodes=nodes, ports=ports, config=config,
        cache_root=env.get("VLLM_CACHE_ROOT") or str(Path.home() / ".cache" / "vllm"),
        cpu_kv_gib=env.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KV_CACHE_GIB, executor=executor,
        gpu_mib=gpu_memory_mib() if local_gpus else {},
        weight_bytes=model_weight_bytes(request.agent_model, request.user_model, *experts) if local_gpus else {},
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        vllm_cli=vllm_cli_works(), cpu_bf16=cpu_has_native_bf16(),
        gpu_compute=gpu_compute_capability() if request.deterministic and local_gpus else {},
        batch_invariant_vllm=vllm_has_batch_invariance(),
        parsers={} if request.skip_server_start else parser_choices(request),
        vllm_parsers=(frozenset(), frozenset()) if request.skip_server_start else vllm_parsers(),
        vllm_version=None if request.skip_server_start else vllm_version())


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
