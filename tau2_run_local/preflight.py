"""Preflight: a few calls to each server pool, shaped like the run's own first turn, judged before any
simulation starts.

Three ways of serving a checkpoint wrongly each turn a whole run into a table of zeros without a single
error: a --tool-call-parser that does not read the model's calls (every call stays text), a
--max-model-len shorter than the domain's first prompt (every turn is an HTTP 400), thinking text left in
the replies (the user simulator reads the agent's thoughts). A handful of probes, with τ²-bench's own
system prompt and tool schemas and a user turn that needs a tool, finds each in seconds; judge() turns
the replies into one verdict whose message names the flag to change and shows the evidence.
"""
from __future__ import annotations

import concurrent.futures as futures
import functools
import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tau2_loader import offline_cost_map

# First user turns that need a tool, with ids from each domain's own tasks and database.
AGENT_TURNS = {
    "retail": ("Hi, I'm Yusuf Rossi, zip code 19122. I'd like to exchange two items from my order #W2378156.",
               "Hello. What is the status of my order #W2378156? I'm Yusuf Rossi, zip code 19122."),
    "airline": ("Hi, I'm Emma Kim, user id emma_kim_9957. I want to cancel my reservation EHGLP3.",
                "Hello, my user id is emma_kim_9957. What are the flights of my reservation EHGLP3?"),
    "telecom": ("Hi, my mobile data is not working. My phone number is 555-123-2002.",
                "Hello. How much data have I used this month? My phone number is 555-123-2002."),
    "mock": ("Please create a task called 'Important Meeting' for user_1.",
             "Hi, I'm user_1. Please create a task titled 'Quarterly review' for me."),
}
AGENT_TURNS["telecom-workflow"] = AGENT_TURNS["telecom"]
# The user simulator calls tools of its own in telecom: its opening, then what the agent asks of it.
USER_OPENING = "My mobile data is not working, it is very slow."
USER_TURNS = ("I'm sorry to hear that. Could you check your status bar and tell me what it shows?",
              "Thanks. Could you run a speed test on your phone and tell me the result?")
# Arguments litellm takes for itself; everything else of --agent-llm-args goes into the request body.
LITELLM_ONLY = frozenset({"num_retries", "caching", "timeout", "api_base", "base_url", "api_key",
                          "custom_llm_provider", "metadata", "drop_params", "extra_headers", "mock_response"})
CONTEXT_MARKERS = ("maximum context length", "maximum model length", "context length",
                   "context_length_exceeded", "prompt is too long")
THINK_MARKERS = ("<think>", "</think>")
BLOCKING = frozenset({"parser", "context", "thinking", "unusable"})


@dataclass(frozen=True)
class ProbeRequest:
    """One call as the run makes it: τ²-bench's messages and tool schemas for a role in a domain."""

    domain: str
    role: str  # 'agent' or 'user'
    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Reply:
    """What one probe got back: status None when no HTTP answer came (refused, reset, timed out)."""

    server: str
    status: int | None
    content: str | None = None
    tool_calls: int = 0
    error: str | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class Verdict:
    """kind: 'ok'; a warning: 'no_tool_call' (text answers only), 'truncated' (a call cut at max_tokens),
    'malformed' (a call in the servers' own parser's format that it did not parse: no flag fixes that);
    or one that should stop the run: 'parser', 'context', 'thinking', 'unusable'. message: one line,
    naming the flag to change and the evidence."""

    kind: str
    message: str

    @property
    def blocking(self) -> bool:
        return self.kind in BLOCKING


def probe_requests(domain: str, role: str = "agent", turns: Sequence[str] | None = None) -> list[ProbeRequest]:
    """The run's own first calls of a role, one per turn: the system prompt and tools of τ²-bench's
    LLMAgent (or of its UserSimulator with the user's tools, for a domain whose user has tools), after
    the orchestrator's greeting. A user without tools makes one call, its opening, with no tools."""
    offline_cost_map()
    from tau2.agent.llm_agent import LLMAgent
    from tau2.orchestrator.orchestrator import DEFAULT_FIRST_AGENT_MESSAGE
    from tau2.registry import registry
    from tau2.user.user_simulator import UserSimulator

    env = registry.get_env_constructor(domain)()
    greeting = DEFAULT_FIRST_AGENT_MESSAGE.content
    if role == "agent":
        tools = env.get_tools()
        system = LLMAgent(tools=tools, domain_policy=env.get_policy()).system_prompt
        history = [{"role": "assistant", "content": greeting}]
        turns = turns or AGENT_TURNS.get(domain)
    elif role == "user":
        tools = env.get_user_tools() if env.user_tools is not None else []
        task = registry.get_tasks_loader(domain)()[0]
        system = UserSimulator(tools=tools or None, instructions=str(task.user_scenario)).system_prompt
        if not tools:  # the user's opening, answering the greeting (which it sees as 'user')
            return [ProbeRequest(domain, role, ({"role": "system", "content": system},
                                                {"role": "user", "content": greeting}), ())]
        # the user simulator sees the conversation with roles flipped: the agent speaks as 'user'
        history = [{"role": "user", "content": greeting}, {"role": "assistant", "content": USER_OPENING}]
        turns = turns or USER_TURNS
    else:
        raise ValueError(f"role is 'agent' or 'user', not {role!r}")
    if not turns:
        raise ValueError(f"no probe turns for domain {domain!r}: pass turns")
    schemas = tuple(tool.openai_schema for tool in tools)
    return [ProbeRequest(domain, role, ({"role": "system", "content": system}, *history,
                                        {"role": "user", "content": turn}), schemas) for turn in turns]


@functools.lru_cache(maxsize=32)
def first_requests(domain: str, role: str = "agent") -> tuple[ProbeRequest, ...]:
    """probe_requests with the default turns, built once a process (a domain's environment takes a while)."""
    return tuple(probe_requests(domain, role))


def request_body(model: str, request: ProbeRequest, sampling: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The chat-completions body litellm sends for this call: messages, tools, tool_choice auto and the
    run's sampling arguments (litellm's own keys left out, extra_body merged in)."""
    args = dict(sampling or {})
    extra = args.pop("extra_body", None) or {}
    body: dict[str, Any] = {"model": model, "messages": list(request.messages)}
    if request.tools:
        body.update(tools=list(request.tools), tool_choice="auto")
    body.update({k: v for k, v in args.items() if k not in LITELLM_ONLY}, **extra)
    return body


def send_probe(url: str, model: str, request: ProbeRequest, sampling: Mapping[str, Any] | None = None,
               api_key: str | None = None, timeout: float = 120.0) -> Reply:
    """POST one probe to an endpoint (http://host:port or .../v1)."""
    root = url.rstrip("/").removesuffix("/v1")
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    data = json.dumps(request_body(model, request, sampling)).encode()
    http = urllib.request.Request(f"{root}/v1/chat/completions", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(http, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ValueError) as exc:  # refused, reset, timed out
        return Reply(url, None, error=f"{type(exc).__name__}: {exc}")
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if status != 200 or not isinstance(doc, dict):
        return Reply(url, status, error=_error_text(doc, raw))
    try:
        choice = doc["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        return Reply(url, status, error=f"a reply without choices[0].message: {raw[:300]!r}")
    return Reply(url, status, content=message.get("content"), tool_calls=len(message.get("tool_calls") or []),
                 finish_reason=choice.get("finish_reason"))


def _error_text(doc: Any, raw: bytes) -> str:
    """The server's own words: vLLM's {"error": {"message"}}, older {"message"}, or the raw body."""
    if isinstance(doc, dict):
        error = doc.get("error")
        inner: dict[str, Any] = error if isinstance(error, dict) else doc
        if isinstance(inner.get("message"), str):
            return inner["message"]
    return raw[:500].decode(errors="replace")


def probe_pool(urls: Sequence[str], model: str, requests: Sequence[ProbeRequest],
               sampling: Mapping[str, Any] | None = None, api_key: str | None = None,
               timeout: float = 120.0) -> list[Reply]:
    """Probe a pool at once: every server gets at least one probe and every request is sent."""
    if not urls or not requests:
        raise ValueError("probe_pool needs at least one server and one request")
    count = max(len(urls), len(requests))
    with futures.ThreadPoolExecutor(max_workers=count) as pool:
        jobs = [pool.submit(send_probe, urls[k % len(urls)], model, requests[k % len(requests)], sampling,
                            api_key, timeout) for k in range(count)]
        return [job.result() for job in jobs]


# What a tool call written as text looks like, and the parser that reads it: the specific formats first.
TEXT_FORMATS: tuple[tuple[str, str, str], ...] = (
    ("<arg_key>", "GLM's <arg_key> call", "glm45"),
    ("<function=", "Qwen3-Coder's <function=...> call", "qwen3_coder"),
    ("<tool_call>", "<tool_call> tags", "hermes"),
    ("<|python_tag|>", "Llama's <|python_tag|>", "llama3_json"),
    ("[TOOL_CALLS]", "Mistral's [TOOL_CALLS]", "mistral"),
    ("<|tool_call|>", "Granite's <|tool_call|>", "granite"),
    ("to=functions.", "a harmony call (to=functions.NAME)", "openai"),
)
PYTHONIC_CALL = re.compile(r"^\s*\[\s*[A-Za-z_]\w*\(.*\)\s*\]\s*$", re.DOTALL)


def tool_call_format(text: str | None) -> tuple[str, str] | None:
    """(what it looks like, the vLLM parser that reads it) when text holds a tool call; None if not."""
    if not text:
        return None
    for marker, what, parser in TEXT_FORMATS:
        if marker in text:
            return what, parser
    if "<｜tool▁call▁begin｜>" in text:
        return "DeepSeek's <｜tool▁call▁begin｜>", "deepseek_v3" if "```json" in text else "deepseek_v31"
    if PYTHONIC_CALL.match(text):
        return "a Python-style call [name(arg=...)]", "pythonic"
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("name"), str) and (
                isinstance(obj.get("arguments"), dict) or isinstance(obj.get("parameters"), dict)):
            return 'bare JSON {"name": ..., "arguments": ...}', "llama3_json"
    return None


def context_numbers(message: str) -> tuple[int | None, int | None, bool]:
    """(prompt tokens, the server's maximum context, whether the count is exact) from vLLM's 400 text
    (0.32: "maximum context length is T tokens. However, your prompt contains [at least] N input
    tokens"; older: "you requested N tokens (P in the messages, C in the completion)", "(length N) is
    longer than the maximum model length of T")."""
    limit = re.search(r"maximum context length is (\d+)|maximum model length of (\d+)", message)
    context = int(limit.group(1) or limit.group(2)) if limit else None
    for pattern in (r"your prompt contains (at least )?(\d+) input tokens", r"\((?:at least )?()(\d+) in the messages",
                    r"your request has (at least )?(\d+) input tokens", r"prompt \(length ()(\d+)\)"):
        found = re.search(pattern, message)
        if found:
            return int(found.group(2)), context, not found.group(1)
    return None, context, False


def judge(replies: Sequence[Reply], tool_call_parser: str | None, reasoning_parser: str | None = None,
          max_tokens: int | None = None, prompt_tokens: int | None = None, expect_calls: bool = True) -> Verdict:
    """One verdict for a pool's probe replies. tool_call_parser: the servers' (None: servers this run did
    not start); max_tokens: the run's reply cap; prompt_tokens: the first turn's count by the checkpoint's
    tokenizer (first_turn_tokens), if known, for the context advice; expect_calls: False for probes that
    offer no tools (a user simulator's opening), whose answer is text."""
    m = len(replies)
    overflow = next((r for r in replies if r.status == 400 and r.error
                     and any(k in r.error.lower() for k in CONTEXT_MARKERS)), None)
    if overflow:
        return _context_verdict(overflow.error or "", max_tokens, prompt_tokens)
    answered = [r for r in replies if r.status == 200 and (r.tool_calls or (r.content or "").strip())]
    failed = [r for r in replies if r.status != 200]
    if not answered:
        said = "every reply was empty (no content, no tool call)"
        if failed:
            said = f"{failed[0].server} " + (f"answered HTTP {failed[0].status}: " if failed[0].status else "") + \
                   str(failed[0].error)
        return Verdict("unusable", f"no usable reply to {m} probe(s): {_short(said, 300)}; read the server's log "
                                   f"(a flag the model refuses, a wrong --served-model-name or API key?)")
    parser = tool_call_parser or "the servers' parser"
    as_text = [(r, found) for r in answered if expect_calls and not r.tool_calls
               and (found := tool_call_format(r.content))]
    if as_text:
        reply, (what, fits) = as_text[0]
        seen = f"{len(as_text)} of {m} probe replies carry a tool call as text, not as tool_calls ({what}: " \
               f"{_short(reply.content)!r})"
        if fits == tool_call_parser and reply.finish_reason == "length":
            return Verdict("truncated", f"--max-new-tokens: {seen}; the reply was cut at max_tokens before the "
                                        f"call was complete: allow longer replies")
        if fits == tool_call_parser:
            return Verdict("malformed", f"--tool-call-parser: {seen}; it looks like {fits}'s format, yet the "
                                        f"servers' {fits} did not parse it (a malformed call? their log says why)")
        return Verdict("parser", f"--tool-call-parser: {seen}; {parser} does not read this model's "
                                 f"calls: serve it with --tool-call-parser {fits}")
    thinking = [r for r in answered if any(t in (r.content or "") for t in THINK_MARKERS)]
    if thinking:
        seen = f"{len(thinking)} of {m} probe replies carry thinking text in their content " \
               f"({_short(thinking[0].content)!r})"
        if reasoning_parser:
            return Verdict("thinking", f"--reasoning-parser: {seen}; {reasoning_parser} does not read this "
                                       f"model's thinking: pick the model's own")
        return Verdict("thinking", f"--reasoning-parser: {seen} and the servers run no reasoning parser: serve "
                                   f"with the model's own (qwen3 for Qwen3, deepseek_r1 for DeepSeek-R1 and QwQ, "
                                   f"...) or turn its thinking off in the chat template")
    called = sum(1 for r in answered if r.tool_calls)
    errors = f"; {len(failed)} probe(s) failed: {_short(failed[0].error or '', 200)}" if failed else ""
    named = f"--tool-call-parser {tool_call_parser}" if tool_call_parser else parser
    if called:
        return Verdict("ok", f"tool calls parsed in {called} of {m} probes" + (f" ({named})" if tool_call_parser
                                                                              else "") + errors)
    if not expect_calls:
        return Verdict("ok", f"answered in text in {len(answered)} of {m} probes{errors}")
    return Verdict("no_tool_call", f"no tool call in {m} probes, each a turn that needs one: the model answered "
                                   f"in text ({_short(answered[0].content)!r}){errors}; with {named} that is the "
                                   f"model's own doing or a format not known here")


def _context_verdict(error: str, max_tokens: int | None, prompt_tokens: int | None) -> Verdict:
    said, limit, exact = context_numbers(error)
    prompt = prompt_tokens or said
    if prompt is None:
        return Verdict("context", f"--max-model-len: the servers refuse the first turn as too long for their "
                                  f"context ({_short(error, 300)}); raise --max-model-len")
    count = f"{'' if exact or prompt_tokens else 'at least '}{prompt}"
    reply = f" and its reply up to {max_tokens}" if max_tokens else ""
    context = f" of {limit} tokens" if limit else ""
    return Verdict("context", f"--max-model-len: the servers' context{context} is too short for the first "
                              f"turn: its prompt has {count} tokens{reply}; serve with --max-model-len of at "
                              f"least {prompt + (max_tokens or 0)}; conversations grow from there, so more is safer")


def _short(text: str | None, limit: int = 120) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def first_turn_tokens(model_dir: str | Path, domain: str, role: str = "agent",
                      chat_template: str | Path | None = None) -> int:
    """Tokens of a domain's first turn as the servers see it: the checkpoint's own tokenizer with its
    chat template (or --chat-template's) applied to τ²-bench's system prompt, tools and first messages."""
    request = first_requests(domain, role)[0]
    messages, tools = list(request.messages), list(request.tools) or None
    fast = _count_without_transformers(Path(model_dir), messages, tools, chat_template)
    if fast is not None:
        return fast
    template = {"chat_template": Path(chat_template).read_text()} if chat_template else {}
    ids = _tokenizer(str(model_dir)).apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                         tokenize=True, **template)
    return len(ids["input_ids"] if isinstance(ids, Mapping) else ids)


SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _count_without_transformers(folder: Path, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                                chat_template: str | Path | None) -> int | None:
    """apply_chat_template's count without importing transformers (seconds): the template rendered as
    transformers renders it (jinja2 sandbox, trim_blocks, lstrip_blocks, its tojson, raise_exception,
    strftime_now, the special tokens), encoded by tokenizer.json with no special tokens added. None where
    that is not the whole story: no tokenizer.json, named templates, a template that needs more."""
    import datetime

    import jinja2
    import jinja2.ext
    import jinja2.sandbox
    from tokenizers import Tokenizer

    config = _json_file(folder / "tokenizer_config.json")
    template = (Path(chat_template).read_text() if chat_template else (folder / "chat_template.jinja").read_text()
                if (folder / "chat_template.jinja").is_file() else config.get("chat_template"))
    if not isinstance(template, str) or not (folder / "tokenizer.json").is_file():
        return None

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
    special = {**config, **_json_file(folder / "special_tokens_map.json")}
    tokens = {k: v["content"] if isinstance(v, dict) else v for k, v in special.items()
              if k in SPECIAL_TOKENS and isinstance(v, (str, dict)) and (not isinstance(v, dict) or "content" in v)}
    try:
        text = env.from_string(template).render(messages=messages, tools=tools, documents=None,
                                                add_generation_prompt=True, **tokens)
    except jinja2.TemplateError:  # {% generation %} and the like: transformers' own extensions
        return None
    return len(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids)


def _json_file(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@functools.lru_cache(maxsize=4)
def _tokenizer(model_dir: str) -> Any:
    """A checkpoint's tokenizer, loaded once (transformers takes seconds to import)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)
