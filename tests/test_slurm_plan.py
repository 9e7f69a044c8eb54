"""Planning over the nodes of a SLURM allocation is pure: nodes in, servers and srun commands out."""
from __future__ import annotations

import json
import subprocess

import pytest

from tau2_run_local.endpoint_file import config_pools
from tau2_run_local.errors import UsageError
from tau2_run_local.plan import Host, Node, Plan
from tau2_run_local.planner import build_plan, sbatch_nodes
from tau2_run_local.sbatch import (
    SbatchJob,
    earlier_jobs,
    job_argv,
    job_script,
    this_job,
    warning_lead_s,
    why_not_resubmit,
)
from tau2_run_local.settings import parse_request
from tau2_run_local.slurm_discovery import index_list, parse_job_nodes, parse_node_addresses
from tau2_run_local.util import secret_values

DETAIL = """JobId=7 JobName=x
   NumNodes=3 NumCPUs=20 NumTasks=3 CPUs/Task=8 ReqB:S:C:T=0:0:*:*
   JOB_GRES=gpu:10
     Nodes=n[1-2] CPU_IDs=0-7 Mem=0 GRES=gpu:a100:4(IDX:0-3)
     Nodes=n3 CPU_IDs=0,2-4 Mem=0 GRES=gpu:2(IDX:1,3)
   MinCPUsNode=8
"""


def nodes(count: int = 2, gpus: int = 4, cpus: int = 8) -> tuple[Node, ...]:
    return tuple(Node(f"n{i + 1}", f"10.0.0.{i + 1}", tuple(map(str, range(gpus))), cpus) for i in range(count))


def plan(*argv: str, on=None) -> Plan:
    request = parse_request(["--agent-model", "/ckpt", *argv], {})
    return build_plan(request, Host(on or nodes(), iter(range(1900, 2000)), "/cache", executor="slurm"))


def test_scontrol_job_detail_gives_cpus_and_gpu_ids_per_node():
    assert parse_job_nodes(DETAIL) == [("n[1-2]", 8, ("0", "1", "2", "3")), ("n3", 4, ("1", "3"))]
    assert index_list("0-2,5") == ("0", "1", "2", "5")
    assert parse_node_addresses("NodeName=n1 Arch=x NodeAddr=10.1.1.1 NodeHostName=a\nNodeName=n2 NodeAddr=b") \
        == {"n1": "10.1.1.1", "n2": "b"}


def test_servers_fill_the_nodes_gpus_and_are_reached_at_their_node():
    p = plan("--num-servers", "6", "--user-model", "/user", "--user-tensor-parallel-size", "2")
    agents = [s for s in p.servers if s.role == "agent"]
    assert [(s.node, s.gpus) for s in agents] == [("n1", ("0",)), ("n1", ("1",)), ("n1", ("2",)), ("n1", ("3",)),
                                                   ("n2", ("0",)), ("n2", ("1",))]
    user = p.servers[-1]
    assert (user.node, user.gpus, user.url) == ("n2", ("2", "3"), "http://10.0.0.2:1906/v1")
    assert agents[0].url == "http://10.0.0.1:1900/v1" and agents[0].host == "0.0.0.0"
    assert user.argv[:10] == ("srun", "--nodes=1", "--ntasks=1", "--nodelist=n2", "--exact", "--cpus-per-task=2",
                              "--mem=0", "--gres=gpu:2", "--job-name=run_local_1906", "--kill-on-bad-exit=1")
    assert "CUDA_VISIBLE_DEVICES" not in dict(user.env)  # SLURM sets it for the step
    assert len(set(s.lane for s in p.servers)) == 7  # GPU 0 of n1 and GPU 0 of n2 are different GPUs
    assert config_pools(p) == {"/ckpt": list(p.agent_urls), "/user": [user.url]}


@pytest.mark.parametrize("argv, message", [
    (("--num-servers", "9"), "--num-servers 9 needs 9 GPU groups of 1 but only 8"),
    (("--gpu-ids", "n3:0"), "GPU n3:0 does not exist in this SLURM allocation"),
    (("--gpu-ids", "4"), "GPU n1:4 does not exist"),
    (("--user-model", "/u", "--user-gpu-ids", "n1:3,n2:0", "--user-tensor-parallel-size", "2"), "span nodes"),
    (("--servers-per-gpu", "2"), "not supported with the SLURM executor"),
])
def test_bad_slurm_plans(argv, message):
    with pytest.raises(UsageError, match=message):
        plan(*argv)


def test_servers_never_share_a_gpu_under_slurm():
    with pytest.raises(UsageError, match="GPU n1:0 would be shared"):
        plan("--num-servers", "1", "--user-model", "/u", on=nodes(count=1, gpus=1))


def test_a_node_needs_a_cpu_per_server():
    with pytest.raises(UsageError, match="node n1 has 2 CPU"):
        plan("--num-servers", "4", "--gpu-ids", "n1:0,n1:1,n1:2,n1:3", on=nodes(cpus=2))


def test_job_script_runs_the_same_command_on_the_slurm_executor(tmp_path):
    argv = ["--agent-model", "/ckpt", "--sbatch", "--slurm-nodes", "2", "--slurm-partition=gpu",
            "--sbatch-arg=--qos=high", "--executor", "auto", "--slurm-max-resubmits", "5", "--domains", "retail"]
    assert job_argv(argv) == ["--agent-model", "/ckpt", "--domains", "retail", "--executor", "slurm"]
    request = parse_request([*argv, "--log-dir", str(tmp_path)], {})
    nodes = sbatch_nodes(request)
    assert [(n.name, len(n.gpus), n.cpus) for n in nodes] == [("node1", 2, 3), ("node2", 2, 3)]
    script, handed = job_script(request, argv, nodes, tmp_path)
    assert handed == {}
    assert "export RUN_LOCAL_SBATCH_MAX_RESUBMITS=5" in script.splitlines() and "#SBATCH --signal=B:TERM@120" in script
    for line in ("#SBATCH --nodes=2", "#SBATCH --gres=gpu:2", "#SBATCH --cpus-per-task=3", "#SBATCH --partition=gpu",
                 "#SBATCH --qos=high", f"#SBATCH --output={tmp_path}/slurm-%j.out", f"cd {tmp_path}"):
        assert line in script.splitlines()
    assert script.splitlines()[-1].endswith("run_local.py --agent-model /ckpt --domains retail --executor slurm")


def test_secrets_of_the_command_line_reach_the_job_through_its_environment_not_the_script(tmp_path):
    argv = ["--agent-model", "/ckpt", "--sbatch", "--vllm-arg=--hf-token hf_s3cr3t$x", "--user-llm-args",
            '{"api_key": "sk-0123456789"}', "--domains", "retail"]
    request = parse_request([*argv, "--log-dir", str(tmp_path)], {})
    secrets = secret_values({"OPENAI_API_KEY": "sk-0123456789"}, argv)
    script, handed = job_script(request, argv, sbatch_nodes(request), tmp_path, secrets)
    assert "hf_s3cr3t" not in script and "sk-0123456789" not in script
    assert sorted(handed.values()) == ["hf_s3cr3t$x", "sk-0123456789"]
    assert all(name.endswith("_SECRET") for name in handed)  # so the job redacts them too
    exec_line = script.splitlines()[-1]
    printed = subprocess.run(["bash", "-c", exec_line.replace("exec ", "printf '%s\\n' ", 1)], env=handed,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert printed[printed.index("--agent-model"):] == job_argv(argv)  # word for word, the secrets back in place
    unset = subprocess.run(["bash", "-c", exec_line], env={}, capture_output=True, text=True)
    assert unset.returncode != 0 and "not handed on by sbatch" in unset.stderr


def test_the_time_limit_warning_scales_with_the_job():
    assert [warning_lead_s(t) for t in (None, "00:02:00", "10", "20:00", "04:00:00", "2-00", "INFINITE")] \
        == [120, 30, 60, 120, 120, 120, 120]  # a tenth of the limit, from 30 s up to 120 s


def test_a_job_stopped_by_sigterm_is_submitted_again_unless_slurm_requeues_it_or_it_was_cancelled():
    env = {"SLURM_JOB_ID": "12", "RUN_LOCAL_SBATCH_MAX_RESUBMITS": "3"}
    job = this_job(env)
    assert job == SbatchJob("12", 3, 0, "12", 0, job.started_at)
    assert this_job({"SLURM_JOB_ID": "12"}) is None  # an allocation of the user's own: never resubmitted
    # what `scontrol -o show job` said in the test cluster: the time-limit warning, `scancel --signal=TERM
    # --batch`, the time limit itself, `scancel`, `scontrol requeue`
    warned = {"JobState": "RUNNING", "Reason": "None", "Restarts": "0"}
    assert why_not_resubmit(warned, job) is None
    assert why_not_resubmit({"JobState": "COMPLETING", "Reason": "TimeLimit", "Restarts": "0"}, job) is None
    assert why_not_resubmit({"JobState": "COMPLETING", "Reason": "None", "Restarts": "0"}, job) \
        == "it was cancelled (SLURM state COMPLETING)"
    assert why_not_resubmit({"JobState": "COMPLETING", "Reason": "None", "Restarts": "1"}, job).startswith(
        "SLURM requeues it itself")
    requeued = this_job({**env, "SLURM_RESTART_COUNT": "1"})
    assert why_not_resubmit({**warned, "Restarts": "1"}, requeued) is None
    spent = this_job({**env, "RUN_LOCAL_SBATCH_RESUBMITS": "3", "RUN_LOCAL_SBATCH_CHAIN": "9"})
    assert spent.chain == "9" and why_not_resubmit(warned, spent) == \
        "its resubmits are spent (3 of --slurm-max-resubmits 3)"


def test_a_job_lists_the_earlier_jobs_of_its_own_chain_once_each(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"jobs": [{"job_id": "3", "chain": "1"}, {"job_id": "7", "chain": "7"},
                                            {"job_id": "4", "chain": "1"}, {"job_id": "5", "chain": "1"}]}))
    job = this_job({"SLURM_JOB_ID": "5", "RUN_LOCAL_SBATCH_MAX_RESUBMITS": "3", "RUN_LOCAL_SBATCH_CHAIN": "1",
                    "SLURM_RESTART_COUNT": "1"})  # requeued by SLURM: its own first run's entry is replaced
    assert [e["job_id"] for e in earlier_jobs(summary, job)] == ["3", "4"]
    assert earlier_jobs(tmp_path / "none.json", job) == []
