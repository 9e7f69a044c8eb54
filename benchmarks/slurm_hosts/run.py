"""The emulated SLURM cluster with every node on this host, against every node a host of its own (a network
namespace each, tests/slurm/cluster.py), side by side: the cluster's start and stop, and the same tests
of tests/test_slurm.py run in each layout.

  .venv/bin/python benchmarks/slurm_hosts/run.py [--quick]

Network: making the namespaces and veths of 2 and of 4 nodes, and removing them (what separate hosts add).
Cluster: start (until every node is idle) and stop (every daemon gone; on separate hosts also the
namespaces and veths), of 2 and of 4 nodes, in the order same, separate, separate, same, repeated.
Tests: the tests that start servers (tests/test_slurm.py, IN_LAYOUTS: in CI on separate hosts only), one pytest
run per layout (TEST_SLURM_HOSTS), in the order same, separate, separate, same; pytest's own call times per
test (setup and teardown apart).
Needs root (apt-get, the daemons, network namespaces). Writes benchmarks/slurm_hosts/results.json
(results-quick.json with --quick: one round of starts, one pytest run per layout).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "slurm"))
import cluster  # noqa: E402
from common import launcher_version, machine  # noqa: E402

ABBA = ("same", "separate", "separate", "same")
TESTS = ("test_two_nodes_agents_on_both_and_a_user_pool_of_tensor_parallel_2",
         "test_a_step_that_dies_is_routed_around_and_restarted",
         "test_ctrl_c_leaves_no_step_and_no_process",
         "test_sbatch_submits_a_job_that_writes_the_results_and_resumes")


def start_stop(hosts: str, nodes: int) -> dict:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        began = time.monotonic()
        cluster.start(folder, nodes=nodes, gpus=4, cpus=8, hosts=hosts)
        started = time.monotonic()
        cluster.stop(folder)
        stopped = time.monotonic()
    return {"hosts": hosts, "nodes": nodes, "start_s": round(started - began, 3), "stop_s": round(stopped - started, 3)}


def network_only(nodes: int) -> dict:
    """What the separate layout adds to a start and a stop: making the namespaces and veths, and removing them."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        began = time.monotonic()
        net = cluster.make_network(folder, cluster.node_names(nodes))
        made = time.monotonic()
        cluster.remove_network(folder, net)
        removed = time.monotonic()
    return {"nodes": nodes, "make_s": round(made - began, 3), "remove_s": round(removed - made, 3)}


def pytest_run(hosts: str) -> dict:
    """One pytest run of TESTS in one layout: per-test call, setup and teardown seconds, and the whole run's."""
    with tempfile.TemporaryDirectory() as name:
        xml = Path(name) / "junit.xml"
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_slurm.py", "-q", "-p", "no:cacheprovider",
                               "-k", f"({' or '.join(TESTS)}) and {hosts}", f"--junitxml={xml}",
                               "-o", "junit_duration_report=call", "--durations=0"],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TEST_SLURM_HOSTS": hosts})
        wall = time.monotonic() - began
        if done.returncode != 0:
            raise SystemExit(done.stdout + done.stderr)
        calls = {case.get("name").split("[")[0]: round(float(case.get("time")), 2)
                 for case in ET.parse(xml).getroot().iter("testcase")}
    phases = {}
    for line in done.stdout.splitlines():  # "1.10s setup    tests/test_slurm.py::test_x[separate]"
        parts = line.split()
        if len(parts) == 3 and parts[0].endswith("s") and parts[1] in ("setup", "teardown"):
            phases.setdefault(parts[1], {})[parts[2].split("::")[1].split("[")[0]] = float(parts[0][:-1])
    return {"hosts": hosts, "call_s": calls, "setup_s": phases.get("setup", {}),
            "teardown_s": phases.get("teardown", {}),
            "pytest_wall_s": round(wall, 2)}


def mean(values: list[float]) -> float:
    return round(statistics.mean(values), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    quick = p.parse_args().quick
    cluster.install_packages()
    rounds = 1 if quick else 3
    networks = [network_only(nodes) for nodes in (2, 4) for _ in range(5 * rounds)]
    starts = [start_stop(hosts, nodes) for nodes in (2, 4) for _ in range(rounds) for hosts in ABBA]
    runs = [pytest_run(hosts) for hosts in (("same", "separate") if quick else ABBA)]
    cluster_means = {f"{hosts}, {nodes} nodes": {
        key: mean([s[key] for s in starts if s["hosts"] == hosts and s["nodes"] == nodes])
        for key in ("start_s", "stop_s")}
        for nodes in (2, 4) for hosts in ("same", "separate")}
    network_means = {f"{nodes} nodes": {key: mean([n[key] for n in networks if n["nodes"] == nodes])
                                        for key in ("make_s", "remove_s")} for nodes in (2, 4)}
    test_means = {test: {hosts: mean([r["call_s"][test] for r in runs if r["hosts"] == hosts])
                         for hosts in ("same", "separate")}
                  for test in TESTS}
    total = {hosts: round(sum(test_means[t][hosts] for t in TESTS), 2) for hosts in ("same", "separate")}
    report = {
        "command": "python benchmarks/slurm_hosts/run.py" + (" --quick" if quick else ""),
        "setup": "emulated SLURM (tests/slurm/cluster.py), 4 fake GPUs and 8 CPUs per node; 'same': every node on this "
                 "host at 127.0.0.1, a port each; 'separate': a network namespace per node on a bridge in a namespace "
                 "of its own; cluster start/stop and pytest runs in the order same, separate, separate, same",
        "network_runs": networks,
        "network_means": network_means,
        "cluster_runs": starts,
        "cluster_means": cluster_means,
        "pytest_runs": runs,
        "test_call_means_s": test_means,
        "tests_total_call_s": total,
        "separate_vs_same_tests": round(total["separate"] / total["same"] - 1, 4),
        "machine": machine(), "launcher": launcher_version(),
    }
    print(json.dumps({k: report[k] for k in ("network_means", "cluster_means", "test_call_means_s",
                                             "tests_total_call_s",
                                             "separate_vs_same_tests")}, indent=2))
    results = Path(__file__).with_name("results-quick.json" if quick else "results.json")
    results.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
