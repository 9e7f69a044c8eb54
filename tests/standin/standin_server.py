"""Deterministic OpenAI-compatible stand-in for a vLLM server (tests/benchmarks only).

It plays BOTH roles of a tau2-bench simulation from one endpoint:

* user simulator  - the request's system prompt contains ``<scenario>...</scenario>``
  (tau2/user/user_simulator.py SYSTEM_PROMPT).  The scenario text is exactly
  ``str(task.user_scenario)``, which is matched against the tau2 task sets
  (mock, retail, airline, telecom; loaded lazily, first chat request only).
  First turn: ``Hi, I need help. [domain:<d>] [task:<id>]``.
  Asked to act (the agent's hand-over text, ending in ``[your turn]``, or the result of its own
  tool call): the task's next gold actions of requestor "user" as its own tool calls, one a turn,
  as far as the next gold action of the agent; then ``Done, I did that on my phone.``
  (telecom: the user's phone).  Any other agent text (the final one, a refusal): ``###STOP###``.
* agent           - the system prompt starts with ``<instructions>`` and contains
  ``<policy>`` (tau2/agent/llm_agent.py SYSTEM_PROMPT).  The agent reads the
  ``[domain:..] [task:..]`` tags from the latest user message that has them and
  replays the task's gold actions (requestor == "assistant") as one tool call per
  turn, in gold order with the user's: where the user's actions come next, it hands
  over with one text message (``... [your turn]``) and goes on once the user answers.
  Then it sends one final text message (which quotes the task's
  ``communicate_info``).  Tasks listed in STANDIN_FAIL_TASKS get only a refusal.
  A first turn that names no task (the launcher's preflight probes) gets one tool
  call, as a model that calls tools answers it: the first gold action of the first
  task whose gold actions all use tools the request offers.
* anything else   - a short fixed text reply ("OK.") - handy for smoke checks.

Several tau2 tasks share an identical user scenario (e.g. mock create_task_1*,
update_task_with_*).  The user simulator cannot tell them apart, so it always
names the FIRST task of the task set with that scenario (the "canonical" task);
STANDIN_FAIL_TASKS / STANDIN_MALFORMED_TOOL_JSON are matched against that
canonical id.  tests/standin/known_rewards.py accounts for this.  In telecom nearly every
scenario is shared (it tells the symptom, not the cause): STANDIN_TASKS names the tasks a
run uses, and a scenario then names the first of those with it.

Run as ``python standin_server.py --model M [--served-model-name N] --host H --port P``
or through the fake ``vllm`` package next to this file
(``python -m vllm.entrypoints.openai.api_server ...`` with tests/standin on PYTHONPATH).
Unknown (vLLM) flags are ignored.

Environment variables (faults apply only to ports in STANDIN_FAULT_PORTS, if set):
  STANDIN_STARTUP_DELAY=S           sleep S seconds before serving (the port is bound from the start, as vLLM
                                    binds it: connections are refused until then)
  STANDIN_KV_AT=K                   K seconds into that delay, log vLLM's "GPU KV cache size" line
  STANDIN_CRASH_AT_START=1          vLLM-like traceback on stderr, exit 1, never serves
  STANDIN_HANG_AT_START=1           never serves, sleeps forever
  STANDIN_KV_RACE_ONCE=<marker>     first start (marker absent): create marker, print the
                                    KV-cache ValueError, exit 1; later starts are normal
  STANDIN_CRASH_AFTER=N             os._exit(1) right after the N-th chat completion is sent
  STANDIN_TOKEN_DELAY=sec/token     each completion sleeps completion_tokens * delay ...
  STANDIN_MAX_CONCURRENT=K          ... with at most K completions in flight (semaphore)
  STANDIN_IGNORE_SIGTERM=1          ignore SIGTERM (only SIGKILL stops it), like a server slow to stop
  STANDIN_SPAWN_CHILD=1             spawn ``sleep 100000`` (same process group) at startup,
                                    like vLLM's EngineCore; it is deliberately NOT cleaned
                                    up by the stand-in - the launcher must kill the group
  STANDIN_FAIL_TASKS=a,b            tasks the agent does not solve ("id" or "domain/id"); a file
                                    ``standin_fail_tasks`` in the --model folder sets it too, so
                                    stand-in checkpoints of one run can score differently
  STANDIN_MALFORMED_TOOL_JSON=a,b   agent's first turn is a tool call with invalid JSON args
  STANDIN_TASK_SETS=mock,retail     restrict/reorder the task sets searched (default:
                                    mock,retail,airline,telecom)
  STANDIN_TASKS=set/id,set/id       the tasks of the run: a scenario names the first of these that
                                    has it (before the first task of its task set)
  STANDIN_RECORD=path               append each chat request's body to this file as it came, one
                                    request a line (the body is JSON, which holds no raw newline)
  VLLM_API_KEY=key                  as vLLM: every /v1/... request without the header
                                    ``Authorization: Bearer <key>`` gets 401 {"error": "Unauthorized"};
                                    /health, /metrics, /stats stay open (vLLM guards only /v1 and
                                    the like); unset, nothing is guarded

Faults of the machinery, per chat request (also only on STANDIN_FAULT_PORTS, if set), for
fault-injection tests; what a fault does never changes the scripted replies:
  STANDIN_FAULT_ROLE=user|agent     only requests of this role get the faults below (default: all)
  STANDIN_FAULT_TOOL_TURNS=K,K      the first requests whose scripted reply is a tool call get these
                                    faults, one each in order (KIND as below): a user's tool-call turn
  STANDIN_FAULT_WINDOW=A:B:KIND,..  from A to B seconds after the first chat request, every
                                    request gets KIND: 429 (with Retry-After), 500 or any other
                                    HTTP status (401, say), reset (the
                                    connection is closed without an answer) or hang (no answer
                                    for STANDIN_HANG_S seconds, default 3600, then closed)
  STANDIN_429_RATE=p                refuse this share of requests with 429 (seeded random)
  STANDIN_RATE_LIMIT=N              at most N requests in any 1 s; more are refused with 429
  STANDIN_RETRY_AFTER=s             Retry-After of every 429 (default 1)
  STANDIN_FAULT_SEED=n              seed of STANDIN_429_RATE (default 0)
An orchestrator (the agent's request offers a call_expert tool):
  STANDIN_CALL_EXPERT=name          every agent turn is call_expert(expert=name); the expert, asked
                                    without that tool, replays the gold actions as usual
Failures of the model (never limited to STANDIN_FAULT_PORTS: they are the model's doing):
  STANDIN_CONTEXT_OVERFLOW=a,b      the agent's turns of these tasks are vLLM's HTTP 400
                                    "maximum context length" error
  STANDIN_USER_OVERFLOW=a,b         the same for the user simulator's turns
  STANDIN_MAX_MODEL_LEN=T           a prompt over T tokens (the stand-in's count: 4 characters a token)
                                    gets vLLM 0.32's HTTP 400 for it, "at least T+1" tokens as vLLM says
A model served with the wrong parsers (preflight tests):
  STANDIN_TOOL_CALLS_AS_TEXT=json|hermes  tool calls come back as text content, no tool_calls: bare
                                    JSON {"name", "arguments"}, or that inside <tool_call> tags
  STANDIN_THINK=text                every reply's content starts with <think>text</think>
/stats counts what was refused: refused_429, errors_500, resets, hangs; lists the sampling
arguments each role sent (sampling: role -> distinct {temperature, top_p, max_tokens, seed?}); and, for
each request failed by STANDIN_FAULT_TOOL_TURNS, how often the same body came again (tool_turn_faults:
digest -> count; a client that retries with the history as it was sends it again byte for byte).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STOP_TOKEN = "###STOP###"  # tau2.user.base.STOP
DEFAULT_TASK_SETS = ("mock", "retail", "airline", "telecom")
GREETING = "Hi, I need help."
FAIL_TEXT = "I'm sorry, but I am unable to help with this request."
SOLVED_TEXT = "All done: your request has been handled."
UNKNOWN_TEXT = "OK."
HANDOVER_MARK = "[your turn]"
HANDOVER_TEXT = f"Please do this next step on your phone and tell me once it is done. {HANDOVER_MARK}"
USER_DONE_TEXT = "Done, I did that on my phone."
GUARDED_PREFIX = ("/v1", "/v2", "/inference", "/cohere")  # vLLM's AuthenticationMiddleware guards these

KV_RACE_MESSAGE = (
    "ValueError: No available memory for the cache blocks. Try increasing "
    "gpu_memory_utilization when initializing the engine. "
    "Available KV cache memory: -0.43 GiB"
)

CRASH_TRACEBACK = """\
(EngineCore_0 pid={pid}) ERROR {ts} [core.py:700] EngineCore failed to start.
(EngineCore_0 pid={pid}) ERROR {ts} [core.py:700] Traceback (most recent call last):
(EngineCore_0 pid={pid}) ERROR {ts} [core.py:700]   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", line 691, in run_engine_core
(EngineCore_0 pid={pid}) ERROR {ts} [core.py:700]     engine_core = EngineCoreProc(*args, **kwargs)
(EngineCore_0 pid={pid}) ERROR {ts} [core.py:700]   File "/usr/local/lib/python3.12/dist-packages/vllm/worker/worker.py", line 271, in load_model
(EngineCore_0 pid={pid}) ERROR {ts} [core.py:700] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.02 GiB is free.
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "<frozen runpy>", line 88, in _run_code
  File "/usr/local/lib/python3.12/dist-packages/vllm/entrypoints/openai/api_server.py", line 1856, in <module>
    uvloop.run(run_server(args))
  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core_client.py", line 447, in __init__
    self._wait_for_engine_startup()
  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/utils.py", line 723, in wait_for_engine_startup
    raise RuntimeError("Engine core initialization failed. "
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {{'EngineCore_0': 1}}
"""  # noqa: E501  (vLLM's own text, verbatim)

_TAG_RE = re.compile(r"\[domain:([^\]\s]+)\]\s*\[task:(.+?)\](?:\s|$)")
_SCENARIO_RE = re.compile(r"<scenario>\n(.*)\n</scenario>", re.DOTALL)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _id_list(name: str) -> set[str]:
    return {x.strip() for x in _env(name).split(",") if x.strip()}


def id_listed(domain: str, task_id: str, ids) -> bool:
    """An entry matches a bare task id (any domain) or 'domain/task_id'."""
    ids = set(ids or ())
    return task_id in ids or f"{domain}/{task_id}" in ids


# --------------------------------------------------------------------------------------
# tau2 task data (lazy)
# --------------------------------------------------------------------------------------
_tasks_lock = threading.Lock()
_record_lock = threading.Lock()  # STANDIN_RECORD: one request's line at a time
_tasks_by_set: dict[str, list] = {}
_scenario_index: dict[str, tuple[str, str]] = {}  # scenario text -> (task_set, canonical id)


def load_task_set(task_set: str) -> list:
    """All tasks of a tau2 task set (split=None), in file order. Cached."""
    with _tasks_lock:
        if task_set not in _tasks_by_set:
            import importlib

            mod = importlib.import_module(f"tau2.domains.{task_set}.environment")
            tasks = mod.get_tasks(task_split_name=None)
            _tasks_by_set[task_set] = tasks
            for t in tasks:
                # first task with a given scenario wins ("canonical" task)
                _scenario_index.setdefault(str(t.user_scenario), (task_set, t.id))
                _scenario_index.setdefault(_norm(str(t.user_scenario)), (task_set, t.id))
        return _tasks_by_set[task_set]


def _norm(s: str) -> str:
    return " ".join(s.split())


def task_sets() -> list[str]:
    v = [x.strip() for x in _env("STANDIN_TASK_SETS").split(",") if x.strip()]
    return v or list(DEFAULT_TASK_SETS)


def get_task(task_set: str, task_id: str):
    for t in load_task_set(task_set):
        if t.id == task_id:
            return t
    return None


def run_tasks() -> list[str]:
    """STANDIN_TASKS: the run's tasks, as 'set/id'."""
    return [x.strip() for x in _env("STANDIN_TASKS").split(",") if x.strip()]


def listed_match(scenario: str, tasks) -> tuple[str, str] | None:
    """The first of tasks ('set/id') whose scenario this is."""
    for entry in tasks:
        ts, tid = entry.split("/", 1)
        task = get_task(ts, tid)
        if task is not None and _norm(str(task.user_scenario)) == _norm(scenario):
            return ts, tid
    return None


def match_scenario(scenario: str) -> tuple[str, str] | None:
    hit = listed_match(scenario, run_tasks())
    if hit:
        return hit
    for ts in task_sets():
        try:
            load_task_set(ts)
        except Exception as e:  # tau2 missing or broken: no scripted tasks
            log(f"standin: cannot load task set {ts}: {e!r}")
            continue
        hit = _scenario_index.get(scenario) or _scenario_index.get(_norm(scenario))
        if hit:
            return hit
    return None


def canonical_task_id(task_set: str, task_id: str, tasks=()) -> str:
    """The id the stand-in user will announce for this task (the first of tasks, the run's STANDIN_TASKS,
    with the same scenario; else the first of its task set)."""
    task = get_task(task_set, task_id)
    if task is None:
        raise KeyError(f"{task_set}/{task_id}")
    hit = listed_match(str(task.user_scenario), tasks)
    if hit:
        return hit[1]
    load_task_set(task_set)
    return _scenario_index[str(task.user_scenario)][1]


# --------------------------------------------------------------------------------------
# scripted policy (shared with known_rewards.py)
# --------------------------------------------------------------------------------------
def agent_plan(task, solved: bool) -> tuple[list, str]:
    """(assistant gold actions to replay, final text) for a canonical task."""
    if not solved:
        return [], FAIL_TEXT
    ec = task.evaluation_criteria
    actions = [a for a in ((ec.actions if ec else None) or []) if a.requestor == "assistant"]
    info = list((ec.communicate_info if ec else None) or [])
    text = SOLVED_TEXT + ("" if not info else " " + " ".join(info))
    return actions, text


def gold_actions(task) -> list:
    ec = task.evaluation_criteria
    return list((ec.actions if ec else None) or [])


def agent_steps(task, solved: bool) -> tuple[list, str]:
    """(the agent's turns in gold order: an action of its own to replay, or None where the user's actions
    come next - a hand-over; final text) for a canonical task."""
    actions, text = agent_plan(task, solved)
    if not solved:
        return actions, text
    steps, previous = [], None
    for a in gold_actions(task):
        if a.requestor == "assistant":
            steps.append(a)
        elif previous != a.requestor:
            steps.append(None)
        previous = a.requestor
    return steps, text


def user_runs(task) -> list[list]:
    """The user's gold actions, one run for each hand-over of the agent (agent_steps' None)."""
    runs: list[list] = []
    previous = None
    for a in gold_actions(task):
        if a.requestor == "user":
            if previous != "user":
                runs.append([])
            runs[-1].append(a)
        previous = a.requestor
    return runs


def played(task, solved: bool) -> list:
    """The gold actions a simulation of a canonical task replays, in order: none when the agent does not
    solve it (it never hands over), else all of them (only telecom's users have gold actions, and tools)."""
    return gold_actions(task) if solved else []


def _tool_call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def probe_turn(messages: list[dict], tools: list | None) -> dict | None:
    """A first turn that names no task: the first gold action of the first task whose gold actions all use
    tools offered here; None once the conversation holds a call, or when no task fits."""
    if any(m.get("role") == "tool" or m.get("tool_calls") for m in messages):
        return None
    offered = {(t.get("function") or {}).get("name") for t in tools or []}
    for ts in task_sets():
        for task in load_task_set(ts):
            actions, _ = agent_plan(task, True)
            if actions and all(a.name in offered for a in actions):
                return {"content": None, "tool_calls": [_tool_call("chatcmpl-tool-probe-0", actions[0].name,
                                                                   json.dumps(actions[0].arguments))]}
    return None


def miss_parsers(msg: dict) -> dict:
    """The reply as vLLM passes it on when its parsers do not read the model (STANDIN_TOOL_CALLS_AS_TEXT,
    STANDIN_THINK); unchanged when neither is set."""
    shape, thought = _env("STANDIN_TOOL_CALLS_AS_TEXT"), _env("STANDIN_THINK")
    if shape and msg.get("tool_calls"):
        calls = [json.dumps({"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])})
                 for c in msg["tool_calls"]]
        text = "\n".join(f"<tool_call>\n{c}\n</tool_call>" if shape == "hermes" else c for c in calls)
        msg = {"content": text}
    if thought:
        msg = {**msg, "content": f"<think>\n{thought}\n</think>\n\n{msg.get('content') or ''}"}
    return msg


def _content_text(msg: dict) -> str:
    c = msg.get("content")
    if c is None:
        return ""
    if isinstance(c, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return str(c)


def detect_role(system: str) -> str:
    s = system.lstrip()
    if s.startswith("<instructions>") and "<policy>" in s:
        return "agent"
    if "<scenario>" in s and "</scenario>" in s:
        return "user"
    return "unknown"


def user_turn(system: str, messages: list[dict], tools: list | None, conv_key: str) -> tuple[dict, str | None]:
    # The user simulator sees its own past messages as role=assistant, the agent's as role=user.
    own = [m for m in messages if m.get("role") == "assistant"]
    greeted = any("[task:" in _content_text(m) for m in own)
    found = _SCENARIO_RE.search(system)
    hit = match_scenario(found.group(1)) if found else None
    if hit is None:
        return ({"content": STOP_TOKEN} if greeted else {"content": f"{GREETING} [domain:unknown] [task:unknown]"},
                None)
    ts, tid = hit
    if not greeted:
        return {"content": f"{GREETING} [domain:{ts}] [task:{tid}]"}, f"{ts}/{tid}"
    last = messages[-1] if messages else {}
    asked = last.get("role") == "tool" or (last.get("role") == "user" and HANDOVER_MARK in _content_text(last))
    if not asked:
        return {"content": STOP_TOKEN}, None
    handovers = sum(1 for m in messages if m.get("role") == "user" and HANDOVER_MARK in _content_text(m))
    runs = user_runs(get_task(ts, tid))
    mine = [a for run in runs[:handovers] for a in run]  # the actions asked of it so far
    done = sum(len(m.get("tool_calls") or []) for m in own)
    if tools and done < len(mine):
        a = mine[done]
        call = _tool_call(f"chatcmpl-tool-{conv_key[:12]}-u{done}", a.name, json.dumps(a.arguments))
        return {"content": None, "tool_calls": [call]}, f"{ts}/{tid}"
    return {"content": USER_DONE_TEXT}, f"{ts}/{tid}"


def agent_turn(messages: list[dict], tools: list | None, conv_key: str) -> tuple[dict, str | None]:
    tag_idx, tag = None, None
    for i, m in enumerate(messages):
        if m.get("role") == "user":
            mt = _TAG_RE.search(_content_text(m))
            if mt:
                tag_idx, tag = i, (mt.group(1), mt.group(2))
    if tag is None:
        return probe_turn(messages, tools) or {"content": FAIL_TEXT}, None
    ts, tid = tag
    task = None
    try:
        task = get_task(ts, tid) if ts in DEFAULT_TASK_SETS or ts in task_sets() else None
    except Exception as e:
        log(f"standin: cannot load task {ts}/{tid}: {e!r}")
    if task is None:
        return {"content": FAIL_TEXT}, None
    later = messages[tag_idx + 1 :]
    done = sum(len(m.get("tool_calls") or []) for m in later if m.get("role") == "assistant")
    replied = any(m.get("role") == "assistant" for m in later)
    handed = sum(1 for m in later if m.get("role") == "assistant" and HANDOVER_MARK in _content_text(m))

    if id_listed(ts, tid, _id_list("STANDIN_MALFORMED_TOOL_JSON")) and not replied:
        actions, _ = agent_plan(task, True)
        if actions:
            name, args = actions[0].name, json.dumps(actions[0].arguments)
        else:
            name = ((tools or [{}])[0].get("function") or {}).get("name", "unknown_tool")
            args = '{"query": "x"}'
        broken = args[: max(1, len(args) // 2)]  # truncated object -> never valid JSON
        return ({"content": None, "tool_calls": [_tool_call(f"chatcmpl-tool-{conv_key[:12]}-0", name, broken)]},
                f"{ts}/{tid}")

    solved = not id_listed(ts, tid, _id_list("STANDIN_FAIL_TASKS"))
    steps, final_text = agent_steps(task, solved)
    if done + handed < len(steps):
        a = steps[done + handed]
        if a is None:
            return {"content": HANDOVER_TEXT}, f"{ts}/{tid}"
        call = _tool_call(f"chatcmpl-tool-{conv_key[:12]}-{done}", a.name, json.dumps(a.arguments))
        return {"content": None, "tool_calls": [call]}, f"{ts}/{tid}"
    return {"content": final_text}, f"{ts}/{tid}"


# --------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------
class State:
    def __init__(self, served_names: list[str], port: int, faults_on: bool):
        self.served_names = served_names
        self.port = port
        self.faults_on = faults_on
        self.lock = threading.Lock()
        self.chat_requests = 0
        self.conversations: dict[str, dict] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.crash_after = int(_env("STANDIN_CRASH_AFTER", "0") or 0) if faults_on else 0
        self.token_delay = float(_env("STANDIN_TOKEN_DELAY", "0") or 0)
        k = int(_env("STANDIN_MAX_CONCURRENT", "0") or 0)
        self.sem = threading.BoundedSemaphore(k) if k > 0 else None
        self.started = time.time()
        self.faults = RequestFaults() if faults_on else None
        self.refused = {"refused_429": 0, "errors_500": 0, "resets": 0, "hangs": 0}
        self.sampling: dict[str, list] = {}
        self.tool_turn_faults: dict[str, int] = {}  # body digest of a failed tool-call turn -> times sent again
        self.api_key = os.environ.get("VLLM_API_KEY", "")
        self.unauthorized = 0  # requests refused for a missing or wrong key


class RequestFaults:
    """Which chat requests the machinery fails, and how (see the module docstring)."""

    def __init__(self):
        self.role = _env("STANDIN_FAULT_ROLE")
        self.windows = []
        for spec in filter(None, (x.strip() for x in _env("STANDIN_FAULT_WINDOW").split(","))):
            start, end, kind = spec.split(":")
            self.windows.append((float(start), float(end), kind))
        self.rate_429 = float(_env("STANDIN_429_RATE", "0") or 0)
        self.rate_limit = int(_env("STANDIN_RATE_LIMIT", "0") or 0)
        self.retry_after = _env("STANDIN_RETRY_AFTER", "1")
        self.hang_s = float(_env("STANDIN_HANG_S", "3600") or 3600)
        self.rng = random.Random(int(_env("STANDIN_FAULT_SEED", "0") or 0))
        self.tool_turns = [x.strip() for x in _env("STANDIN_FAULT_TOOL_TURNS").split(",") if x.strip()]
        self.first = None
        self.recent: list[float] = []
        self.lock = threading.Lock()

    def tool_turn(self, role: str) -> str | None:
        """The fault of a request whose scripted reply is a tool call (STANDIN_FAULT_TOOL_TURNS), once each."""
        with self.lock:
            if (self.role and role != self.role) or not self.tool_turns:
                return None
            return self.tool_turns.pop(0)

    def pick(self, role: str) -> str | None:
        """The fault this request gets: '429', '500', 'reset', 'hang' or None."""
        with self.lock:
            now = time.monotonic()
            self.first = self.first if self.first is not None else now
            if self.role and role != self.role:
                return None
            for start, end, kind in self.windows:
                if start <= now - self.first < end:
                    return kind
            if self.rate_429 and self.rng.random() < self.rate_429:
                return "429"
            if self.rate_limit:
                self.recent = [t for t in self.recent if now - t < 1.0]
                if len(self.recent) >= self.rate_limit:
                    return "429"
                self.recent.append(now)
            return None


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "standin-vllm/0"
    state: State  # set on the class by serve()

    def log_message(self, fmt, *args):  # uvicorn-like access log, stdout
        if _env("STANDIN_QUIET") != "1":
            sys.stdout.write(f"INFO:     {self.client_address[0]} - {fmt % args}\n")
            sys.stdout.flush()

    def _send(self, code: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _path(self) -> str:
        p = self.path.split("?", 1)[0].rstrip("/")
        return p[3:] if p.startswith("/v1/") else p

    def _refused(self) -> bool:
        """vLLM's AuthenticationMiddleware: with a key set, a guarded path needs `Bearer <key>` (401 otherwise)."""
        st = self.state
        if not st.api_key or not self.path.startswith(GUARDED_PREFIX):
            return False
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), st.api_key.encode()):
            return False
        with st.lock:
            st.unauthorized += 1
        self._send(401, {"error": "Unauthorized"})
        return True

    def do_GET(self):
        if self._refused():
            return
        p = self._path()
        st = self.state
        if p in ("/health", "/ping"):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif p == "/models":
            now = int(st.started)
            self._send(200, {"object": "list", "data": [
                {"id": n, "object": "model", "created": now, "owned_by": "vllm", "root": n,
                 "parent": None, "max_model_len": 32768} for n in st.served_names]})
        elif p == "/version":
            self._send(200, {"version": "0.0.0+standin"})
        elif p == "/stats":
            with st.lock:
                self._send(200, {
                    "chat_requests": st.chat_requests,
                    "conversations": len(st.conversations),
                    "conversation_keys": list(st.conversations),
                    "conversation_info": st.conversations,
                    "max_in_flight": st.max_in_flight,
                    "unauthorized": st.unauthorized,
                    "keyed": bool(st.api_key),
                    "port": st.port,
                    "pid": os.getpid(),
                    **st.refused,
                    "sampling": st.sampling,
                    "tool_turn_faults": st.tool_turn_faults,
                })
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self):
        p = self._path()
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if self._refused():
            return
        if p != "/chat/completions":
            self._send(404, {"detail": "Not Found"})
            return
        record = _env("STANDIN_RECORD")
        if record:
            with _record_lock, open(record, "ab") as out:
                out.write(raw + b"\n")
        try:
            req = json.loads(raw or b"{}")
        except json.JSONDecodeError as e:
            self._send(400, {"object": "error", "message": f"invalid JSON body: {e}", "type": "BadRequestError",
                             "param": None, "code": 400})
            return
        if req.get("stream"):
            self._send(400, {"object": "error", "message": "stand-in does not support streaming",
                             "type": "BadRequestError", "param": None, "code": 400})
            return
        model = req.get("model")
        if model not in self.state.served_names:
            self._send(404, {"object": "error", "message": f"The model `{model}` does not exist.",
                             "type": "NotFoundError", "param": None, "code": 404})
            return
        self._chat(req, hashlib.sha256(raw).hexdigest()[:16])

    def _fault(self, kind: str | None) -> bool:
        """Fail this request as the machinery would; True when it was failed."""
        if kind is None:
            return False
        st = self.state
        with st.lock:
            counter = {"429": "refused_429", "reset": "resets", "hang": "hangs"}.get(kind, f"errors_{kind}")
            st.refused[counter] = st.refused.get(counter, 0) + 1
        if kind == "429":
            body = json.dumps({"object": "error", "message": "Rate limit reached; try again later",
                               "type": "RateLimitError", "param": None, "code": 429}).encode()
            self.send_response(429)
            self.send_header("Retry-After", st.faults.retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif kind.isdigit():  # 500 and any other status, e.g. 401 for a key the API refuses
            self._send(int(kind), {"object": "error", "message": f"stand-in fault: HTTP {kind}",
                                   "type": "InternalServerError" if kind == "500" else "Error", "param": None,
                                   "code": int(kind)})
        elif kind == "hang":
            time.sleep(st.faults.hang_s)
        if kind in ("reset", "hang"):
            import socket
            import struct
            # SO_LINGER 0: the close sends RST, as a crashed proxy does
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
        return True

    def _chat(self, req: dict, digest: str) -> None:
        st = self.state
        with st.lock:
            if digest in st.tool_turn_faults:  # a failed tool-call turn, sent again
                st.tool_turn_faults[digest] += 1
        messages = req.get("messages") or []
        system = "\n".join(_content_text(m) for m in messages if m.get("role") == "system")
        first_user = next((_content_text(m) for m in messages if m.get("role") == "user"), "")
        key = hashlib.sha256((system + "\x00" + first_user).encode()).hexdigest()[:16]
        role = detect_role(system)
        seen = {k: req[k] for k in ("temperature", "top_p", "max_tokens") if k in req}
        with st.lock:
            if seen not in st.sampling.setdefault(role, []):
                st.sampling[role].append(seen)
        if st.faults and self._fault(st.faults.pick(role)):
            return
        prompt_tokens = _tokens("".join(_content_text(m) for m in messages) + json.dumps(req.get("tools") or []))
        limit = int(_env("STANDIN_MAX_MODEL_LEN", "0") or 0)
        if limit and prompt_tokens > limit:  # vLLM's tokenizer stops at limit + 1, so that is all it says
            self._send(400, {"error": {"type": "BadRequestError", "param": "input_tokens", "code": 400, "message":
                             f"This model's maximum context length is {limit} tokens. However, your prompt "
                             f"contains at least {limit + 1} input tokens, which exceeds this limit even without "
                             f"any output tokens. Please reduce the length of the input prompt. "
                             f"(parameter=input_tokens, value={limit + 1})"}})
            return
        expert = _env("STANDIN_CALL_EXPERT")
        offered = {((t.get("function") or {}).get("name")) for t in req.get("tools") or []}
        if role == "agent" and expert and "call_expert" in offered:
            role = "orchestrator"
        try:
            if role == "user":
                msg, task_ref = user_turn(system, messages, req.get("tools"), key)
            elif role == "agent":
                msg, task_ref = agent_turn(messages, req.get("tools"), key)
            elif role == "orchestrator":
                calls = sum(len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant")
                msg = {"content": None, "tool_calls": [_tool_call(f"chatcmpl-tool-{key[:12]}-x{calls}", "call_expert",
                                                                  json.dumps({"expert": expert}))]}
                task_ref = None
            else:
                msg, task_ref = {"content": UNKNOWN_TEXT}, None
        except Exception as e:  # never 500 silently: report like vLLM would
            log(f"standin: error building reply: {e!r}")
            self._send(500, {"object": "error", "message": repr(e), "type": "InternalServerError", "param": None,
                             "code": 500})
            return
        fault = st.faults.tool_turn(role) if st.faults and msg.get("tool_calls") else None
        if fault:
            with st.lock:
                st.tool_turn_faults.setdefault(digest, 0)
            self._fault(fault)
            return
        if task_ref and msg.get("content") != STOP_TOKEN and id_listed(
                *task_ref.split("/", 1),
                _id_list("STANDIN_CONTEXT_OVERFLOW" if role == "agent" else "STANDIN_USER_OVERFLOW")):
            self._send(400, {"object": "error", "type": "BadRequestError", "param": None, "code": 400, "message":
                             "This model's maximum context length is 8192 tokens. However, you requested 9000 "
                             "tokens (8800 in the messages, 200 in the completion). Please reduce the length of "
                             "the messages or completion."})
            return

        msg = miss_parsers(msg)
        out = msg.get("content") or json.dumps(msg.get("tool_calls") or [])
        completion_tokens = _tokens(out)

        if st.sem:
            st.sem.acquire()
        try:
            with st.lock:
                st.in_flight += 1
                st.max_in_flight = max(st.max_in_flight, st.in_flight)
            if st.token_delay > 0:
                time.sleep(completion_tokens * st.token_delay)
            with st.lock:
                st.in_flight -= 1
                st.chat_requests += 1
                served = st.chat_requests
                info = st.conversations.setdefault(key, {"role": role, "task": task_ref, "requests": 0})
                info["requests"] += 1
                if task_ref and not info.get("task"):
                    info["task"] = task_ref
        finally:
            if st.sem:
                st.sem.release()

        message = {"role": "assistant", "content": msg.get("content"), "tool_calls": msg.get("tool_calls") or [],
                   "reasoning_content": None}
        resp = {
            "id": f"chatcmpl-{key}-{served}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model"),
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if msg.get("tool_calls") else "stop",
                         "stop_reason": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        self._send(200, resp)
        if st.crash_after and served >= st.crash_after:
            log("ERROR: EngineCore encountered a fatal error. (stand-in STANDIN_CRASH_AFTER="
                f"{st.crash_after} reached)\n"
                "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.")
            os._exit(1)


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="standin vllm api_server", add_help=True)
    ap.add_argument("--model", default="standin")
    ap.add_argument("--served-model-name", nargs="+", default=None)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8000)
    args, unknown = ap.parse_known_args(argv)
    return args, unknown


def main(argv=None) -> None:
    args, unknown = parse_args(argv)
    fail_file = os.path.join(args.model, "standin_fail_tasks")
    if os.path.isfile(fail_file):
        with open(fail_file) as f:
            os.environ["STANDIN_FAIL_TASKS"] = f.read().strip()
    served = args.served_model_name or [args.model]
    ports = {p.strip() for p in _env("STANDIN_FAULT_PORTS").split(",") if p.strip()}
    faults_on = not ports or str(args.port) in ports
    log(f"INFO {time.strftime('%m-%d %H:%M:%S')} [api_server.py] stand-in vLLM pid={os.getpid()} "
        f"model={args.model} served={served} port={args.port} faults={'on' if faults_on else 'off'} "
        f"ignored_args={unknown}")
    # where it runs, as a real server's GPUs are seen by CUDA (tests of the SLURM executor read it)
    log(f"INFO [api_server.py] placement CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')} "
        f"SLURMD_NODENAME={os.environ.get('SLURMD_NODENAME', '')} SLURM_STEP_ID={os.environ.get('SLURM_STEP_ID', '')}")

    # the port taken first, as vLLM binds it before loading the model: nothing answers there (connections are
    # refused) until it listens, but no other process can take it meanwhile
    httpd = _Server((args.host, args.port), Handler, bind_and_activate=False)
    httpd.server_bind()
    if _env("STANDIN_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a server slow to shut down
    if _env("STANDIN_SPAWN_CHILD") == "1":
        child = subprocess.Popen(["sleep", "100000"], stdin=subprocess.DEVNULL)
        log(f"INFO [core.py] EngineCore_0 child started pid={child.pid}")

    if faults_on:
        if _env("STANDIN_CRASH_AT_START") == "1":
            sys.stderr.write(CRASH_TRACEBACK.format(pid=os.getpid(), ts=time.strftime("%m-%d %H:%M:%S")))
            sys.stderr.flush()
            sys.exit(1)
        marker = _env("STANDIN_KV_RACE_ONCE")
        if marker and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(f"{os.getpid()}\n")
            sys.stderr.write("Traceback (most recent call last):\n"
                             '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/core/kv_cache_utils.py", line 699, in check_enough_kv_cache_memory\n'  # noqa: E501  (vLLM's own text, verbatim)
                             f"{KV_RACE_MESSAGE}\n")
            sys.stderr.flush()
            sys.exit(1)
        if _env("STANDIN_HANG_AT_START") == "1":
            log("INFO [gpu_model_runner.py] Loading model weights ... (stand-in: hanging forever)")
            while True:
                time.sleep(3600)
        delay = float(_env("STANDIN_STARTUP_DELAY", "0") or 0)
        kv_at = min(float(_env("STANDIN_KV_AT", "0") or 0), delay)
        if kv_at > 0:  # vLLM logs its KV-cache size once memory profiling is done, well before it serves
            time.sleep(kv_at)
            print(f"(EngineCore pid={os.getpid()}) INFO [kv_cache_utils.py] GPU KV cache size: 1,530,800 tokens",
                  flush=True)
        if delay - kv_at > 0:
            time.sleep(delay - kv_at)

    Handler.state = State(served, args.port, faults_on)
    httpd.server_activate()
    print(f"INFO:     Started server process [{os.getpid()}]", flush=True)
    print("INFO:     Application startup complete.", flush=True)
    print(f"INFO:     Uvicorn running on http://{args.host}:{args.port} (Press CTRL+C to quit)", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
