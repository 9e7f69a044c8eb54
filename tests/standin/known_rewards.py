"""Rewards that real tau2-bench gives to simulations run against the stand-in server.

``expected_reward(domain, task_id, failed_ids)`` is derived from the task data and the
stand-in's fixed script (``standin_server.agent_steps`` / ``played``); nothing is hard-coded per task.

What the stand-in does for task T (see standin_server.py):
  * its user simulator announces the *canonical* task C = the first task of T's task set
    whose ``str(user_scenario)`` equals T's (usually C == T; tau2 has tasks that share a
    scenario, e.g. mock ``create_task_1*`` and ``update_task_with_*``);
    (``tasks``: the run's STANDIN_TASKS, whose first task with T's scenario is C instead);
  * if C is not in ``failed_ids`` its agent replays C's gold actions with
    ``requestor == "assistant"`` (one tool call per turn, gold arguments) and its user those
    with ``requestor == "user"`` (telecom), in gold order: the agent hands each run of user
    actions over with one text, the user answers it once done; then the agent sends
    "All done: ... <C.communicate_info joined by spaces>"; otherwise it sends only a refusal;
  * the user then answers ``###STOP###`` -> termination USER_STOP, so tau2 evaluates it.

The reward is then tau2's ``EvaluationType.ALL`` product over T's reward_basis:
  DB             gold env (init + history + ALL of T's gold actions) and predicted env
                 (init + history + replayed actions) have equal agent and user DB hashes
  ENV_ASSERTION  T's env assertions hold on the predicted env
  ACTION         every gold action of T matches (name + compare_args) some tool call in the
                 trajectory (history tool calls included)
  COMMUNICATE    every T.communicate_info string occurs (case-insensitive, commas stripped
                 from the message) in some assistant text (greeting, history, final text)
  NL_ASSERTION   not supported (tau2's default evaluation raises) -> ValueError here
Both environments are built with tau2's own domain environment (set_state / get_response /
make_tool_call / run_env_assertion), exactly as tau2's EnvironmentEvaluator builds them.

Validity (checked end-to-end with tau2.run.run_task + llm_agent/user_simulator against the
stand-in, hosted_vllm via litellm, max_steps=30, solved AND listed in STANDIN_FAIL_TASKS):
  * mock    - all 9 tasks (valid_task_ids("mock")).
  * retail  - tasks 0..4 (valid_task_ids("retail")); the rule has nothing retail-specific and
    every retail task is DB+COMMUNICATE with assistant-only actions, so it should hold for all.
  * airline - spot-checked (0..5 solved, 0..2 failed, 44 hits max_steps): same structure as
    retail.  Failed read-only tasks (e.g. airline 1) still score 1.0 - computed, not assumed.
  * telecom - the user's gold actions are the stand-in user's own tool calls (its phone);
    validated for the telecom_small tasks of tests/test_telecom.py, solved and failed, against
    `tau2 run` and the launcher.  Nearly every telecom scenario is shared by many tasks (it
    tells the symptom, not the cause): without ``tasks`` most tasks replay another task's
    actions (computed here, usually 0.0).
  Notable mock cases: create_task_1_nl_eval has no gold actions -> 1.0 even when "failed";
  create_task_1_with_env_assertions is an alias of create_task_1 (same scenario); when it is
  failed, tau2's env assertion raises "Task task_2 not found" and run_task() raises instead of
  returning a reward (expected_reward gives 0.0, what a launcher should record).
  Step limit: n replayed actions and h hand-overs take 2(n+h)+3 orchestrator steps; tau2 turns
  the final USER_STOP into MAX_STEPS when the step count reaches max_steps, so the reward is
  0.0 unless 2(n+h)+3 < max_steps (pass ``max_steps=`` to account for it; retail 4 needs
  max_steps >= 30).
  A task in ``malformed_ids`` (STANDIN_MALFORMED_TOOL_JSON) never gets a reward from tau2:
  tau2.utils.llm_utils.generate() json.loads() the arguments and raises
  json.JSONDecodeError out of run_task(); a launcher records it as agent_error -> 0.0, which
  is what this function returns for it.
  Not supported: solo agents (llm_agent_solo), NL_ASSERTION reward basis.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import sys


def _load_standin_server():
    # Load by path: putting tests/standin on sys.path would also expose the fake ``vllm``.
    mod = sys.modules.get("standin_server")
    if mod is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin_server.py")
        spec = importlib.util.spec_from_file_location("standin_server", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["standin_server"] = mod
        spec.loader.exec_module(mod)
    return mod


_ss = _load_standin_server()

# task set name -> tau2 environment/domain name
_ENV_OF = {"mock": "mock", "retail": "retail", "airline": "airline", "telecom": "telecom"}


@functools.cache
def _env_constructor(domain: str):
    mod = importlib.import_module(f"tau2.domains.{_ENV_OF[domain]}.environment")
    if domain == "telecom":
        return mod.get_environment_manual_policy
    return mod.get_environment


def canonical_task_id(domain: str, task_id: str, tasks=()) -> str:
    """The task id the stand-in user announces (and the agent acts on) for ``task_id``."""
    return _ss.canonical_task_id(domain, task_id, tasks)


def steps_needed(domain: str, task_id: str, failed_ids=(), tasks=()) -> int:
    """Orchestrator steps the stand-in conversation takes (user msg, 2 per action and per hand-over,
    text, STOP)."""
    cid = canonical_task_id(domain, task_id, tasks)
    solved = not _ss.id_listed(domain, cid, failed_ids)
    task = _ss.get_task(domain, cid)
    steps, _ = _ss.agent_steps(task, solved)
    return 2 * (len(_ss.played(task, solved)) + steps.count(None)) + 3


def replayed_calls(domain: str, task_id: str, failed_ids=(), tasks=()) -> list[tuple[str, str, dict]]:
    """The tool calls a stand-in simulation of ``task_id`` makes, in order: (requestor, name, arguments)."""
    cid = canonical_task_id(domain, task_id, tasks)
    solved = not _ss.id_listed(domain, cid, failed_ids)
    return [(a.requestor, a.name, a.arguments) for a in _ss.played(_ss.get_task(domain, cid), solved)]


def expected_reward(domain: str, task_id: str, failed_ids=(), *, malformed_ids=(),
                    max_steps: int | None = None, tasks=()) -> float:
    """Reward tau2 gives task ``task_id`` of ``domain`` when run against the stand-in.

    ``failed_ids`` / ``malformed_ids``: the values of STANDIN_FAIL_TASKS /
    STANDIN_MALFORMED_TOOL_JSON (iterables of "id" or "domain/id"); ``tasks``: STANDIN_TASKS.
    """
    from tau2.data_model.message import AssistantMessage, ToolCall
    from tau2.data_model.tasks import RewardType

    if domain not in _ENV_OF:
        raise ValueError(f"unsupported domain {domain!r}")
    task = _ss.get_task(domain, task_id)
    if task is None:
        raise KeyError(f"{domain}/{task_id}")
    cid = canonical_task_id(domain, task_id, tasks)
    if _ss.id_listed(domain, cid, malformed_ids):
        return 0.0
    solved = not _ss.id_listed(domain, cid, failed_ids)
    canonical = _ss.get_task(domain, cid)
    played = _ss.played(canonical, solved)
    steps, final_text = _ss.agent_steps(canonical, solved)
    if max_steps is not None and steps_needed(domain, task_id, failed_ids, tasks) >= max_steps:
        return 0.0  # MAX_STEPS termination -> tau2 gives 0.0

    ec = task.evaluation_criteria
    if ec is None:
        return 1.0
    basis = set(ec.reward_basis)
    if RewardType.NL_ASSERTION in basis:
        raise ValueError(f"{domain}/{task_id}: NL_ASSERTION reward basis is not evaluated by tau2's default run")

    init = task.initial_state
    init_data = init.initialization_data if init is not None else None
    init_actions = init.initialization_actions if init is not None else None
    history = list(init.message_history or []) if init is not None else []

    # --- predicted environment: init + history + the stand-in's tool calls
    make_env = _env_constructor(domain)
    pred = make_env()
    pred.set_state(initialization_data=init_data, initialization_actions=init_actions,
                   message_history=history)
    pred_calls = []
    for m in history:
        if hasattr(m, "tool_calls") and m.tool_calls:
            pred_calls.extend(m.tool_calls)
    for i, a in enumerate(played):
        tc = ToolCall(id=f"call_{i}", name=a.name, arguments=dict(a.arguments), requestor=a.requestor)
        pred.get_response(tc)
        pred_calls.append(tc)
    pred.sync_tools()

    reward = 1.0
    if basis & {RewardType.DB, RewardType.ENV_ASSERTION}:
        if ec.actions is None and ec.env_assertions is None:
            env_reward = 1.0
        else:
            gold = make_env()
            gold.set_state(initialization_data=init_data, initialization_actions=init_actions,
                           message_history=history)
            for a in ec.actions or []:
                with contextlib.suppress(Exception):  # tau2 logs and ignores failing gold actions too
                    gold.make_tool_call(tool_name=a.name, requestor=a.requestor, **a.arguments)
            db_ok = (gold.get_db_hash() == pred.get_db_hash()
                     and gold.get_user_db_hash() == pred.get_user_db_hash())
            env_reward = 1.0
            if RewardType.DB in basis and not db_ok:
                env_reward = 0.0
            if RewardType.ENV_ASSERTION in basis:
                for ea in ec.env_assertions or []:
                    try:
                        met = pred.run_env_assertion(ea, raise_assertion_error=False)
                    except Exception:
                        # tau2's evaluator does not catch this: run_task() raises (the
                        # simulation has no reward); a launcher records it as 0.0.
                        met = False
                    if not met:
                        env_reward = 0.0
        reward *= env_reward

    if RewardType.ACTION in basis:
        for a in ec.actions or []:
            if not any(a.compare_with_tool_call(tc) for tc in pred_calls):
                reward = 0.0

    if RewardType.COMMUNICATE in basis and ec.communicate_info:
        from tau2.orchestrator.orchestrator import DEFAULT_FIRST_AGENT_MESSAGE

        texts = [DEFAULT_FIRST_AGENT_MESSAGE.content]  # only sent when there is no history
        texts = [] if history else texts
        texts += [m.content for m in history
                  if isinstance(m, AssistantMessage) and m.content]
        texts += [_ss.HANDOVER_TEXT] * steps.count(None)
        texts.append(final_text)
        for info in ec.communicate_info:
            if not any(info.lower() in t.lower().replace(",", "") for t in texts):
                reward = 0.0
    return reward


def valid_task_ids(domain: str) -> list[str]:
    """Task ids for which expected_reward() was validated end-to-end (see module doc)."""
    ids = [t.id for t in _ss.load_task_set(domain)]
    if domain == "mock":
        return ids
    if domain == "retail":
        return ids[:5]
    return []
