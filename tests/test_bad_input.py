"""Bad input: one clear line on stderr, exit code 2, no process started, nothing already written lost."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import free_port, run_launcher, standin_env, word_tokenizer_model

KEY = {"OPENAI_API_KEY": "sk-test-not-a-real-key"}


@pytest.fixture
def workdir(tmp_path: Path, model_dir: Path):
    """A working folder holding earlier results and an endpoint file that must survive any bad input."""
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "summary.json").write_text('{"earlier": "results"}')
    (tmp_path / "model_config_local.json").write_text('{"earlier": "config"}')
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path


def assert_refused(workdir: Path, args: list[str], message: str, env: dict[str, str] | None = None) -> None:
    result = run_launcher(args, env={"CKPT_DIR": "", **(env or {})}, cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run_local.py: error: "), result.stderr
    assert message in lines[0]
    assert result.stdout == ""
    assert not list(workdir.rglob("vllm_port_*")), "a server was started"
    assert (workdir / "outputs" / "summary.json").read_text() == '{"earlier": "results"}'
    assert (workdir / "model_config_local.json").read_text() == '{"earlier": "config"}'


def test_missing_agent_model(workdir: Path):
    assert_refused(workdir, [], "--agent-model is required", KEY)


@pytest.mark.parametrize("model, message", [
    ("/nonexistent/ckpt", "no such directory"),
    ("a_file", "no such directory"),
])
def test_agent_model_not_a_directory(workdir: Path, model: str, message: str):
    assert_refused(workdir, ["--agent-model", model], message, KEY)


def test_model_folder_without_config_json(workdir: Path):
    (workdir / "empty_ckpt").mkdir()
    assert_refused(workdir, ["--agent-model", "empty_ckpt"], "not a model folder (no config.json)", KEY)


@pytest.mark.parametrize("args, message", [
    (["--num-servers", "3"], "--num-servers 3 needs 3 GPU groups of 1 but only 2 are available"),
    (["--gpu-ids", "0,5"], "GPU 5 does not exist here"),
    (["--gpu-ids", "1,1"], "--gpu-ids repeats GPU 1"),
    (["--num-servers", "0"], "--num-servers must be positive"),
])
def test_gpu_placement_errors(workdir: Path, model_dir: Path, fake_gpus, args, message):
    assert_refused(workdir, ["--agent-model", str(model_dir), *args], message, {**KEY, **fake_gpus(2)})


@pytest.mark.parametrize("args, message", [
    (["--domains", "retail", "banking"], "unknown domain 'banking'"),
    (["--max-steps", "0"], "--max-steps must be positive"),
    (["--num-trials", "0"], "--num-trials must be positive"),
    (["--max-concurrency", "-2"], "--max-concurrency must be positive"),
    (["--start-port", "http"], "--start-port must be a port number or 'auto'"),
    (["--tool-call-parser", "hermess"], "--tool-call-parser hermess: vLLM 0.32.0 has no tool-call parser of that "
                                        "name (did you mean hermes?); it has "),
])
def test_bad_numbers_and_names(workdir: Path, model_dir: Path, args, message):
    assert_refused(workdir, ["--agent-model", str(model_dir), *args], message, KEY)


def test_occupied_port(workdir: Path, model_dir: Path):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert_refused(workdir, ["--agent-model", str(model_dir), "--start-port", str(port)],
                       f"port {port} on 127.0.0.1 is in use", KEY)


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('["127.0.0.1:1900"]', "expected an object of model -> endpoint list"),
    ('{"m": {"ip_addr": "127.0.0.1"}}', "must map to a non-empty list"),
    ('{"m": [{"host": "127.0.0.1", "port": "1900"}]}', 'is not {"ip_addr": "<host>", "port": "<port>"}'),
])
def test_malformed_endpoint_file(workdir: Path, content: str, message: str):
    (workdir / "endpoints.json").write_text(content)
    assert_refused(workdir, ["--skip-server-start", "--model-config-path", "endpoints.json"], message, KEY)


def test_missing_endpoint_file(workdir: Path):
    assert_refused(workdir, ["--skip-server-start", "--model-config-path", "nowhere.json"], "no such file", KEY)


def test_unreachable_endpoint(workdir: Path):
    port = free_port()  # nothing listens there
    (workdir / "endpoints.json").write_text(json.dumps({"m": [{"ip_addr": "127.0.0.1", "port": str(port)}]}))
    assert_refused(workdir, ["--skip-server-start", "--model-config-path", "endpoints.json"],
                   f"endpoint http://127.0.0.1:{port}/v1 does not serve 'm'", KEY)


@pytest.mark.parametrize("user_llm, key", [("gpt-4o", "OPENAI_API_KEY"),
                                           ("claude-3-7-sonnet-20250219", "ANTHROPIC_API_KEY")])
def test_hosted_user_model_without_its_key(workdir: Path, model_dir: Path, user_llm: str, key: str):
    assert_refused(workdir, ["--agent-model", str(model_dir), "--user-llm", user_llm],
                   f"user simulator {user_llm} needs {key}", {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""})


@pytest.mark.parametrize("flag", ["--output-dir", "--log-dir"])
def test_unwritable_folders(workdir: Path, model_dir: Path, flag: str):
    assert_refused(workdir, ["--agent-model", str(model_dir), flag, "a_file/sub"],
                   f"{flag} a_file/sub is not writable", KEY)


def test_unknown_task_id(workdir: Path, model_dir: Path):
    assert_refused(workdir, ["--agent-model", str(model_dir), "--domains", "mock", "--task-ids", "no_such_task"],
                   "mock: Not all tasks were found", KEY)


def test_report_to_an_unknown_tracker(workdir: Path, model_dir: Path):
    assert_refused(workdir, ["--agent-model", str(model_dir), "--report-to", "comet"],
                   "--report-to: unknown tracker 'comet'", KEY)


def test_a_context_too_short_for_the_first_turn(workdir: Path):
    """Counted with the checkpoint's own tokenizer before any server starts."""
    model = word_tokenizer_model(workdir / "words")
    assert_refused(workdir, ["--agent-model", str(model), "--domains", "mock", "--max-model-len", "200",
                             "--max-new-tokens", "64"],
                   "--max-model-len 200 cannot hold mock's first turn: the agent's prompt has ", KEY)


def test_a_flag_the_installed_vllm_does_not_take(workdir: Path, model_dir: Path, tmp_path: Path):
    """The stand-in plays a vLLM without --max-model-len (its serve --help=all does not list it): that flag of
    the launcher's and a misspelt --vllm-arg are one line, read from vLLM's own help, before any server."""
    cache = tmp_path / "xdg_cache"
    assert_refused(workdir, ["--agent-model", str(model_dir), "--max-model-len", "8192", "--vllm-arg=--enforce-eagr"],
                   "vLLM 0.0.0+standin takes no --enforce-eagr (did you mean --enforce-eager?), given with "
                   "--vllm-arg: drop it, or spell it as its `vllm serve --help=all` does; and no --max-model-len, "
                   "which the launcher passes to its servers: `make setup` installs the tested vLLM",
                   {**KEY, **standin_env(without_flags="--max-model-len"), "XDG_CACHE_HOME": str(cache)})
    kept = json.loads(next((cache / "tau2_run_local" / "vllm_serve_flags").glob("*.json")).read_text())
    assert "--enforce-eager" in kept["flags"] and "--max-model-len" not in kept["flags"]


@pytest.mark.parametrize("args, message", [
    (["--vllm-arg=--api-key abcdefgh"], "--vllm-arg=--api-key puts the key on every server's command line"),
    (["--api-key-env", "NOT_SET_ANYWHERE"], "--api-key-env NOT_SET_ANYWHERE: $NOT_SET_ANYWHERE is not set"),
    (["--slurm-time", "2 hours"], "--slurm-time takes SLURM's formats"),
    (["--slurm-max-resubmits", "-1"], "--slurm-max-resubmits must not be negative"),
])
def test_keys_and_job_options(workdir: Path, model_dir: Path, args, message):
    assert_refused(workdir, ["--agent-model", str(model_dir), *args], message, KEY)


def test_a_keyed_endpoint_without_its_key_or_with_another(workdir: Path, standins):
    port = standins.start(key="the-servers-key")
    (workdir / "endpoints.json").write_text(json.dumps({"standin": [{"ip_addr": "127.0.0.1", "port": str(port)}]}))
    args = ["--skip-server-start", "--model-config-path", "endpoints.json", "--user-llm", "standin"]
    assert_refused(workdir, args, "it requires a key (HTTP 401): name its variable with --api-key-env", KEY)
    assert_refused(workdir, [*args, "--api-key-env", "WRONG"], "it refuses the key in $WRONG (HTTP 401)",
                   {**KEY, "WRONG": "another-key"})
