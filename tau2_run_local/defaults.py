"""The launcher's fixed choices in one place: domains, τ²-bench's agent and user names and the routed names
results record, sampling and retry defaults, concurrency and worker sizing, the experts' tool and addendum.
"""
from __future__ import annotations

KNOWN_DOMAINS = ("retail", "telecom", "telecom-workflow", "airline", "mock")


DEFAULT_DOMAINS = ("retail", "telecom", "airline")


# τ²-bench's agents and users, as `tau2 run --agent/--user` names them, and the name under which this
# launcher registers each with its calls guarded and routed (what results files record).
ROUTED = {"llm_agent": "run_local_routed_agent", "llm_agent_gt": "run_local_routed_agent_gt",
          "llm_agent_solo": "run_local_routed_agent_solo", "user_simulator": "run_local_routed_user",
          "dummy_user": "dummy_user"}


AGENTS, USERS = ("llm_agent", "llm_agent_gt", "llm_agent_solo"), ("user_simulator", "dummy_user")


DEFAULT_LLM_ARGS = '{"temperature": 0.0}'  # τ²-bench's default sampling: greedy


MAX_ERRORS = 10  # τ²-bench's default tool-error budget per simulation


ADAPTIVE_START_PER_SERVER = 16  # simulations in flight per agent server at first, without --max-concurrency


ADAPTIVE_CEILING_PER_SERVER = 256  # ... and at most, as the servers' gauges allow


SIMULATIONS_PER_WORKER = 8  # default --workers: one process per this many simulations of the ceiling


# The garbage collector of a process that runs simulations: a collection of the youngest objects after this
# many allocations (Python's default: 700), of the middle ones after 50 of those, of all after 10 of those
# (issue 17: every simulation's database copies, a million objects for airline, kept setting off collections
# of the whole heap, half of the client's CPU; the data holds no cycles, its garbage goes by refcount).
GC_THRESHOLDS = (50_000, 50, 10)


EXPERT_TOOL = "call_expert"


DEFAULT_POLICY_ADDENDUM = """\
## Consulting experts
You can hand your next turn to an expert with the `call_expert` tool. Its argument `expert` names one of
the experts listed in the tool's description. The expert sees this conversation, this policy and the
same tools, and its reply (a message to the user or tool calls) is sent in your place. Call an expert
when you are not confident you can take the next step correctly on your own, when the request needs
careful reasoning over several records, or when a mistake would be costly; handle routine steps
yourself, since experts cost more. Call `call_expert` on its own, never together with other tools."""


RETRY_TIMEOUT_S = 600.0  # a simulation may spend this long retrying the machinery's failures


REQUEST_TIMEOUT_S = 600.0  # one model call may take this long before it counts as a timeout


SEED_SCRIPT_SERVERS = 4  # the seed script's default server count, capped to the GPUs available
CPU_KV_CACHE_GIB = "2"  # KV cache per server on a machine without GPU
MAX_API_SERVERS = 8  # API-server processes per vLLM server, at most (8 was the best measured on 16 cores)
VLLM_HELP_TIMEOUT_S = 300  # `vllm serve --help=all` imports vLLM: 10-40 s on 2 busy cores; once per vLLM (cached)
