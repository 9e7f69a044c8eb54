"""Where servers go, pure: GPU slots and groups, round-robin placement of the agent's pool, the other pools
on the GPUs they were given (or the last free ones), lanes of servers sharing a GPU, KV-cache sizes.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from .defaults import SEED_SCRIPT_SERVERS
from .errors import UsageError
from .plan import Node, PoolSettings, Slot

SHARED_GPU_MEMORY = 0.85  # share of a GPU that the servers sharing it split between them


KV_HEADROOM_BYTES = 4 * 2**30  # beside weights and KV cache: activations, CUDA graphs, CUDA context


MIN_KV_CACHE_BYTES = 2**30  # less than this left for the KV cache: let vLLM profile instead


def slot_text(slot: Slot) -> str:
    return f"{slot[0]}:{slot[1]}" if slot[0] else slot[1]


def pool_slots(pool: PoolSettings, nodes: Sequence[Node]) -> tuple[Slot, ...] | None:
    """The GPUs a pool was given, as slots: '3' is GPU 3 of every node, 'n1:3' GPU 3 of node n1.
    A GPU that is not there is bad input."""
    if pool.gpu_ids is None:
        return None
    have = [(n.name, g) for n in nodes for g in n.gpus]
    slots = []
    for text in pool.gpu_ids:
        node, _, gpu = text.rpartition(":")
        wanted = [(node, gpu)] if node else [(n.name, gpu) for n in nodes]
        missing = [s for s in wanted if s not in have]
        if missing:
            where = "in this SLURM allocation" if nodes[0].name else "here"
            raise UsageError(f"--{pool.flag}gpu-ids: GPU {slot_text(missing[0])} does not exist {where} "
                             f"(visible: {','.join(map(slot_text, have))})")
        slots += wanted
    return tuple(slots)


def gpu_groups(slots: Sequence[Slot], size: int) -> list[tuple[Slot, ...]]:
    """Consecutive groups of `size` GPUs of one node; a remainder too small for a server is left out."""
    groups = []
    for node in dict.fromkeys(name for name, _ in slots):
        on_node = [s for s in slots if s[0] == node]
        groups += [tuple(on_node[i:i + size]) for i in range(0, len(on_node) - size + 1, size)]
    return groups


def memory_share(servers_on_group: int, asked: float | None) -> float | None:
    """vLLM's memory share per server: the user's, vLLM's default when alone, a safe split when shared."""
    if asked is not None:
        return asked
    return None if servers_on_group == 1 else round(SHARED_GPU_MEMORY / servers_on_group, 3)


def kv_cache_bytes(gpu_mib: int | None, sharers: int, share: float | None, weight_bytes: int | None) -> int | None:
    """A fixed KV-cache size for a server that shares its GPU: its memory share (the user's
    --gpu-memory-utilization, else an even split) less its weights and headroom for activations.

    With it vLLM skips memory profiling, which reads free memory while a neighbour allocates (the race
    that kills one of two servers started together), so sharers can start at the same moment. None,
    and vLLM profiles as before, where the GPU is not shared, a size is unknown or too little is left.
    """
    if sharers < 2 or share is None or not gpu_mib or not weight_bytes:
        return None
    kv = int(gpu_mib * 2**20 * share - weight_bytes * 1.1 - KV_HEADROOM_BYTES)
    return kv if kv >= MIN_KV_CACHE_BYTES else None


Placed = tuple[PoolSettings, str, tuple[str, ...]]  # a server's pool, node and GPU ids there


def place_servers(pools: Sequence[PoolSettings], nodes: Sequence[Node]) -> list[Placed]:
    """Decide (pool, node, GPUs) for every server: agent servers round-robin over GPU groups, node by
    node; every other pool (the user simulator's, the experts') on the GPUs it was given, by default the
    last free ones, or sharing the first ones when too few are left. Nodes without GPU run servers on
    the CPU, unpinned."""
    agent, others = pools[0], pools[1:]
    everything = [(n.name, g) for n in nodes for g in n.gpus]
    if not everything:
        if any(pool.gpu_ids for pool in pools):
            raise UsageError("--gpu-ids/--user-gpu-ids given but this machine shows no GPU")
        names = [n.name for n in nodes]
        placed: list[Placed] = [(agent, names[i % len(names)], ()) for i in range(agent.count or 1)]
        return placed + [(pool, names[-1], ()) for pool in others for _ in range(pool.count or 1)]
    agent_ids = pool_slots(agent, nodes)
    tp = agent.tensor_parallel
    free = list(agent_ids or everything)  # the agent's GPUs
    spare = list(free)  # GPUs no other pool has taken yet
    placed = []
    for pool in others:
        ids, need = pool_slots(pool, nodes), (pool.count or 1) * pool.tensor_parallel
        if ids is None:
            if len(spare) - need >= tp:  # the pool takes the last free GPUs, the agent keeps a group
                ids, spare = tuple(spare[-need:]), spare[:-need]
                if agent_ids is None:
                    free = [s for s in free if s not in ids]
            else:  # too few GPUs: the pool shares the first ones
                ids = tuple(free[:need])
        placed += place_pool(pool, ids)
    groups = gpu_groups(free, tp)
    if not groups:
        raise UsageError(f"--tensor-parallel-size {tp} needs {tp} GPUs; only {len(free)} given")
    capacity = len(groups) * agent.servers_per_gpu
    count = agent.count if agent.count is not None else min(SEED_SCRIPT_SERVERS, capacity)
    if count > capacity:
        raise UsageError(
            f"--num-servers {count} needs {count} GPU groups of {tp} but only {len(groups)} are available "
            f"({','.join(map(slot_text, free))}); use fewer servers or --servers-per-gpu "
            f"{math.ceil(count / len(groups))}")
    agents = [(agent, groups[i % len(groups)][0][0], tuple(g for _, g in groups[i % len(groups)]))
              for i in range(count)]
    return agents + placed


def place_pool(pool: PoolSettings, ids: tuple[Slot, ...]) -> list[Placed]:
    """A non-agent pool's servers on its GPUs: groups of its tensor-parallel size, each on one node."""
    count, tp, what = pool.count or 1, pool.tensor_parallel, pool.served_name if pool.role == "expert" else pool.role
    if len(ids) != count * tp:
        size = (f"--{pool.flag}tensor-parallel-size is {tp}" if count == 1
                else f"{what} needs {count} servers x {tp} GPUs")
        raise UsageError(f"--{pool.flag}gpu-ids names {len(ids)} GPUs but {size}")
    groups = gpu_groups(ids, tp)
    if len(groups) < count:
        raise UsageError(f"the {what} server's GPUs {','.join(map(slot_text, ids))} span nodes; "
                         "a server's GPUs must be on one node")
    return [(pool, group[0][0], tuple(g for _, g in group)) for group in groups[:count]]


def assign_lanes(gpu_sets: Sequence[tuple[str, ...]]) -> list[int]:
    """Servers whose GPUs overlap share a lane (they must not start at the same moment)."""
    lanes: list[set[str]] = []
    result = []
    for gpus in gpu_sets:
        if not gpus:  # CPU servers have a lane each: no GPU memory to race for
            lanes.append(set())
            result.append(len(lanes) - 1)
            continue
        hit = next((i for i, lane in enumerate(lanes) if lane & set(gpus)), None)
        if hit is None:
            lanes.append(set(gpus))
            hit = len(lanes) - 1
        lanes[hit] |= set(gpus)
        result.append(hit)
    return result


def step_cpus(placed: Sequence[Placed], nodes: Sequence[Node]) -> dict[str, int]:
    """CPUs per SLURM step on each node: the node's share split evenly; at least one each."""
    per_node = Counter(node for _, node, _ in placed)
    cpus = {}
    for node in nodes:
        if per_node[node.name] > node.cpus:
            raise UsageError(f"node {node.name} has {node.cpus} CPU(s) in this allocation but "
                             f"{per_node[node.name]} servers there need one each; allocate more "
                             "(e.g. sbatch --cpus-per-task)")
        cpus[node.name] = max(node.cpus // max(per_node[node.name], 1), 1)
    return cpus
