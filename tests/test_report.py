"""report.html and compare.html as a person sees them: rendered by real headless Chromium (Debian's
`chromium`, installed here when missing), their numbers read back from the rendered page and checked
against summary.json; screenshots kept under outputs/test-artifacts/."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import LAUNCHER, ROOT, STANDIN, run_launcher
from tau2_run_local.compare import bootstrap_ci, compare_folders, incomparable, read_output_folder
from tau2_run_local.report_files import write_html_report
from tau2_run_local.results import DomainRun
from tau2_run_local.scoring import domain_summary

ARTIFACTS = ROOT / "outputs" / "test-artifacts"
FIELD = re.compile(r'data-field="([^"]+)">([^<]*)<')


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (CI runs on a clean machine, as root), one
    apt-get at a time with the SLURM tests' (tests/slurm/cluster.py)."""
    found = shutil.which("chromium")
    if not found:
        sys.path.insert(0, str(ROOT / "tests" / "slurm"))
        from cluster import apt_get_install

        apt_get_install(["chromium"], recommends=True)
        found = shutil.which("chromium")
    assert found, "chromium could not be installed"
    return found


def browse(chromium: str, page: Path, *mode: str, url_suffix: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=2000", *mode, page.resolve().as_uri() + url_suffix],
                          capture_output=True, text=True, timeout=120, check=True)


def rendered_fields(chromium: str, page: Path, url_suffix: str = "") -> tuple[str, dict[str, str]]:
    """The DOM after Chromium ran the page, and every data-field's text in it."""
    dom = browse(chromium, page, "--dump-dom", url_suffix=url_suffix).stdout
    return dom, dict(FIELD.findall(dom))


def screenshot(chromium: str, page: Path, name: str, size: str = "1280,1800") -> Path:
    """A PNG of the page, kept as a test artefact; it must show something besides a blank page."""
    from PIL import Image

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    browse(chromium, page, f"--screenshot={shot}", f"--window-size={size}")
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours and len(colours) > 20, f"{shot} looks blank"
    return shot


def standin_run(tmp: Path, name: str, fail: str = "", *extra: str, wait_running: bool = False) -> tuple[Path, str]:
    """One launcher run against the stand-in on mock; returns the output folder and (if asked) the
    report.html seen while the run was still going."""
    model = tmp / f"{name}-ckpt"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp / name
    cmd = [sys.executable, str(LAUNCHER), "--agent-model", str(model), "--served-model-name", "standin",
           "--user-llm", "standin", "--domains", "mock", "--num-trials", "2", "--max-concurrency", "2",
           "--start-port", "auto", "--output-dir", str(out), "--log-dir", str(tmp / f"{name}-logs"),
           "--model-config-path", str(tmp / f"{name}-mc.json"), *extra]
    env = {**os.environ, "PYTHONPATH": str(STANDIN), "STANDIN_FAIL_TASKS": fail, "STANDIN_TOKEN_DELAY": "0.002"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    mid_run = ""
    if wait_running:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and "state: running" not in mid_run:
            if (out / "report.html").exists():
                mid_run = (out / "report.html").read_text()
            time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr + stdout
    return out, mid_run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("report")
    first, mid_run = standin_run(tmp, "first", "create_task_1,update_task_with_message_history", wait_running=True)
    second, _ = standin_run(tmp, "second", "update_task_1")
    return first, second, mid_run


def test_report_html_rendered_numbers_match_summary(chromium: str, two_runs):
    out, _, _ = two_runs
    summary = json.loads((out / "summary.json").read_text())
    results = json.loads((out / "mock.json").read_text())
    page = out / "report.html"
    dom, fields = rendered_fields(chromium, page)
    for name, d in [*summary["domains"].items(), ("overall", summary["overall"])]:
        assert float(fields[f"{name}:avg_reward"]) == pytest.approx(d["avg_reward"], abs=5e-5)
        assert int(fields[f"{name}:simulations"]) == d["simulations"]
        for k, value in d["pass_hat_k"].items():
            assert float(fields[f"{name}:pass^{k}"]) == pytest.approx(value, abs=5e-5)
        for reason, count in d["termination_reasons"].items():
            assert float(fields[f"{name}:termination_reasons:{reason}"]) == count
    assert 0 < summary["overall"]["avg_reward"] < 1  # some tasks solved, some not: both colours on the grid
    # the grid: one cell per simulation, each linking to a conversation that is on the page
    links = re.findall(r'<td style="background:[^"]+" title="[^"]*"><a href="#(sim-mock-\d+)"', dom)
    assert len(links) == len(results["simulations"]) == summary["domains"]["mock"]["simulations"]
    assert all(f'id="{anchor}"' in dom for anchor in links)
    # every conversation: messages, tool calls with arguments, the reward breakdown
    sims = results["simulations"]
    assert dom.count('<details class="sim"') == len(sims)
    called = next(tc for s in sims for m in s["messages"] for tc in m.get("tool_calls") or [])
    assert f"calls <b>{called['name']}</b>" in dom and "reward breakdown" in dom
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', dom)
    assert "<svg" in dom
    # a click on a grid cell (its #anchor) opens that conversation
    opened, _ = rendered_fields(chromium, page, url_suffix=f"#{links[0]}")
    assert re.search(rf'<details class="sim" id="{links[0]}" open', opened)
    screenshot(chromium, page, "report.png")


def test_report_html_is_written_while_the_run_goes_on(two_runs):
    out, _, mid_run = two_runs
    assert "state: running" in mid_run, "report.html was not there before the run ended"
    assert "state: finished" in (out / "report.html").read_text()


def test_compare_html_rendered_numbers_match_summaries(chromium: str, two_runs, tmp_path: Path):
    first, second, _ = two_runs
    result = run_launcher(["--compare", str(first), str(second), "--output-dir", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    _, fields = rendered_fields(chromium, tmp_path / "compare.html")
    for folder in (first, second):
        summary = json.loads((folder / "summary.json").read_text())
        for scope, d in [("mock", summary["domains"]["mock"]), ("overall", summary["overall"])]:
            shown = fields[f"{folder}:{scope}:reward"]
            assert float(shown.split()[0]) == pytest.approx(d["avg_reward"], abs=5e-4)
            for k, value in d["pass_hat_k"].items():
                assert float(fields[f"{folder}:{scope}:pass^{k}"].split()[0]) == pytest.approx(value, abs=5e-4)
    a = json.loads((first / "summary.json").read_text())["overall"]["avg_reward"]
    b = json.loads((second / "summary.json").read_text())["overall"]["avg_reward"]
    assert float(fields[f"{second}:overall:reward:diff"].split()[0]) == pytest.approx(b - a, abs=1e-3)
    assert b != pytest.approx(a)
    assert "mock/create_task_1" in (tmp_path / "compare.md").read_text()  # failed first, solved second
    screenshot(chromium, tmp_path / "compare.html", "compare.png", size="1100,1300")


def test_report_escapes_conversation_text_and_redacts_secrets(tmp_path: Path):
    """A conversation holding markup and a key: the page shows them as text, the key as ***."""
    from tau2.data_model.simulation import Results

    secret = "sk-test-0123456789abcdef"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = Results.model_validate({
        "info": {"git_commit": "", "num_trials": 1, "max_steps": 10, "max_errors": 10, "seed": 1,
                 "user_info": {"implementation": "user_simulator", "llm": "u", "llm_args": {}},
                 "agent_info": {"implementation": "a", "llm": "a", "llm_args": {}},
                 "environment_info": {"domain_name": "mock", "policy": ""}},
        "tasks": [{"id": "t1", "user_scenario": {"instructions": "x"}}],
        "simulations": [{"id": "s", "task_id": "t1", "start_time": "", "end_time": "", "duration": 1.0,
                         "termination_reason": "user_stop", "trial": 0, "seed": 1,
                         "reward_info": {"reward": 1.0},
                         "messages": [{"role": "user", "content": f"<script>alert(1)</script> my key {secret}"},
                                      {"role": "assistant", "content": None,
                                       "tool_calls": [{"id": "c", "name": "lookup",
                                                       "arguments": {"q": "<b>&"}}]}]}]})
    run = DomainRun("mock", run_dir / "mock.json", results, 1, (secret,))
    plan = SimpleNamespace(agent_name="agent", user_llm="u", eval=SimpleNamespace(output_dir=run_dir))
    ev = SimpleNamespace(runs={"mock": run}, plan=plan)
    models = {"agent": "hosted_vllm/agent", "user": "hosted_vllm/u"}
    summary = {"domains": {"mock": domain_summary(run, models)}, "overall": domain_summary(run, models)}
    write_html_report(ev, summary, "finished", (secret,))
    page = (run_dir / "report.html").read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; my key ***" in page
    assert secret not in page
    assert "&lt;b&gt;&amp;" in page


def test_the_live_report_redraws_its_plots_at_most_once_a_minute_and_the_last_page_afresh(tmp_path: Path,
                                                                                            monkeypatch):
    from tau2.data_model.simulation import Results, SimulationRun

    from tau2_run_local import report_files
    from tau2_run_local.report_page import plots

    results = Results.model_validate({
        "info": {"git_commit": "", "num_trials": 5, "max_steps": 10, "max_errors": 10, "seed": 1,
                 "user_info": {"implementation": "user_simulator", "llm": "u", "llm_args": {}},
                 "agent_info": {"implementation": "a", "llm": "a", "llm_args": {}},
                 "environment_info": {"domain_name": "mock", "policy": ""}},
        "tasks": [{"id": "t1", "user_scenario": {"instructions": "x"}}], "simulations": []})
    run = DomainRun("mock", tmp_path / "mock.json", results, 5, ())
    ev = SimpleNamespace(runs={"mock": run}, plan=SimpleNamespace(
        agent_name="agent", user_llm="u", eval=SimpleNamespace(output_dir=tmp_path)))

    def summary(*_: object) -> dict:
        scores = domain_summary(run, {"agent": "hosted_vllm/agent", "user": "hosted_vllm/u"})
        return {"domains": {"mock": scores}, "overall": scores}

    def finish(trial: int) -> None:
        results.simulations.append(SimulationRun.model_validate({
            "id": f"s{trial}", "task_id": "t1", "start_time": "", "end_time": "", "duration": 1.0, "trial": trial,
            "seed": 1, "termination_reason": "user_stop", "reward_info": {"reward": float(trial % 2)},
            "messages": []}))

    def shown() -> list[bool]:
        """For each plot of the scores as they are now: is it on the page?"""
        page = (tmp_path / "report.html").read_text()
        return [svg in page for svg in plots(summary()).values() if svg]

    drawings: list[dict] = []
    monkeypatch.setattr(report_files, "summarize", summary)
    monkeypatch.setattr(report_files, "plots", lambda s: drawings.append(s) or plots(s))
    live = report_files.LiveReport(ev, (), interval=0.0)
    for trial in range(3):  # three simulations finish within the minute: three pages, the plots drawn once
        finish(trial)
        live.last_at = 0.0  # the last page long ago (a page is never written more often than it costs)
        live.maybe_write()
        assert f"running, {trial + 1}/5 simulations" in (tmp_path / "report.html").read_text()
    assert len(drawings) == 1 and drawings[0]["domains"]["mock"]["simulations"] == 1
    assert not any(shown())  # the page shows the plots of one simulation, not of three
    finish(3)
    live.last_at, live.drawn_at = 0.0, live.drawn_at - 60  # a minute later
    live.maybe_write()
    assert len(drawings) == 2 and all(shown())
    finish(4)
    write_html_report(ev, summary(), "finished", ())  # the page at the end: the plots of the final scores
    assert all(shown())


# ----------------------------------------------------------------------------------------------
# --compare on synthetic folders with known answers
# ----------------------------------------------------------------------------------------------


def fake_output(folder: Path, rewards: dict[str, dict[str, list[float]]], user: str = "hosted_vllm/u",
                max_steps: int = 200) -> Path:
    """An output folder as the launcher writes it: summary.json and <domain>.json, given each task's rewards."""
    folder.mkdir(parents=True)
    domains = {}
    for domain, tasks in rewards.items():
        trials = max(len(rs) for rs in tasks.values())
        sims = [{"task_id": t, "trial": i, "reward_info": {"reward": r}, "termination_reason": "user_stop"}
                for t, rs in tasks.items() for i, r in enumerate(rs)]
        info = {"num_trials": trials, "max_steps": max_steps, "max_errors": 10, "seed": 300,
                "agent_info": {"llm": f"hosted_vllm/{folder.name}", "llm_args": {"temperature": 0.0}},
                "user_info": {"llm": user, "llm_args": {"temperature": 0.0}}}
        (folder / f"{domain}.json").write_text(json.dumps(
            {"info": info, "tasks": [{"id": t} for t in tasks], "simulations": sims}))
        flat = [r for rs in tasks.values() for r in rs]
        domains[domain] = {"tasks": len(tasks), "simulations": len(flat), "avg_reward": sum(flat) / len(flat),
                           "pass_hat_k": {}, "status": "complete"}
    (folder / "summary.json").write_text(json.dumps({"domains": domains, "overall": {}}))
    return folder


def test_bootstrap_interval_known_answers():
    assert bootstrap_ci([0.25] * 40) == (0.25, 0.25)  # no spread, no interval
    # 200 tasks, half solved: the normal approximation gives 0.5 +- 1.96 * sqrt(0.25 / 200) = 0.5 +- 0.069
    lo, hi = bootstrap_ci([1.0, 0.0] * 100)
    assert lo == pytest.approx(0.5 - 0.0693, abs=0.012)
    assert hi == pytest.approx(0.5 + 0.0693, abs=0.012)
    assert bootstrap_ci([1.0, 0.0] * 100) == (lo, hi)  # the same folders give the same interval
    assert bootstrap_ci([]) is None


def test_compare_paired_difference_and_flips(tmp_path: Path):
    """B solves 20 of the 100 tasks A failed: +0.2, paired interval 0.2 +- 1.96 * 0.4 / 10 = [0.12, 0.28]."""
    base = {f"t{i}": [1.0 if i < 50 else 0.0] for i in range(100)}
    better = {t: [1.0] if 50 <= int(t[1:]) < 70 else rs for t, rs in base.items()}
    a = read_output_folder(fake_output(tmp_path / "a", {"retail": base}))
    b = read_output_folder(fake_output(tmp_path / "b", {"retail": better}))
    assert incomparable(a, b) == []
    table = compare_folders([a, b])
    assert table["scores"][0]["retail:reward"]["mean"] == pytest.approx(0.5)
    assert table["scores"][1]["overall:reward"]["mean"] == pytest.approx(0.7)
    diff = table["differences"][1]["retail:reward"]
    assert diff["mean"] == pytest.approx(0.2) and diff["tasks"] == 100
    assert diff["ci95"][0] == pytest.approx(0.12, abs=0.02) and diff["ci95"][1] == pytest.approx(0.28, abs=0.02)
    assert table["flipped"][1]["now solved"] == sorted(f"retail/t{i}" for i in range(50, 70))
    assert table["flipped"][1]["now failed"] == []


def test_compare_pass_k_and_tasks_both_ran(tmp_path: Path):
    """pass^k per task as tau2 defines it; the paired difference only over tasks both folders ran."""
    a = read_output_folder(fake_output(tmp_path / "a", {"mock": {"x": [1.0, 1.0], "y": [1.0, 0.0], "z": [0.0, 0.0]}}))
    b = read_output_folder(fake_output(tmp_path / "b", {"mock": {"x": [1.0, 1.0], "y": [1.0, 1.0]}}))
    table = compare_folders([a, b])
    assert table["metrics"] == ["reward", "pass^1", "pass^2"]
    assert table["scores"][0]["mock:pass^2"]["mean"] == pytest.approx(1 / 3)  # only x passes both trials
    assert table["scores"][0]["mock:pass^1"]["mean"] == pytest.approx(0.5)
    assert table["differences"][1]["mock:pass^2"] == {"mean": pytest.approx(0.5), "ci95": pytest.approx([0.0, 1.0]),
                                                      "tasks": 2}


def test_compare_refuses_incomparable_folders_unless_forced(tmp_path: Path):
    a = fake_output(tmp_path / "a", {"mock": {"x": [1.0]}})
    b = fake_output(tmp_path / "b", {"mock": {"x": [0.0]}}, user="gpt-4o", max_steps=50)
    result = run_launcher(["--compare", str(a), str(b), "--output-dir", str(tmp_path / "cmp")])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not comparable" in lines[0]
    assert "user model gpt-4o vs hosted_vllm/u" in lines[0] and "max steps 50 vs 200" in lines[0]
    assert "--force" in lines[0] and not (tmp_path / "cmp" / "compare.md").exists()
    c = fake_output(tmp_path / "c", {"mock": {"x": [1.0], "y": [1.0]}})
    assert "mock tasks differ" in run_launcher(["--compare", str(a), str(c)]).stderr
    forced = run_launcher(["--compare", str(a), str(b), "--force", "--output-dir", str(tmp_path / "cmp")])
    assert forced.returncode == 0, forced.stderr
    assert "now failed (1): mock/x" in (tmp_path / "cmp" / "compare.md").read_text()


def test_compare_refuses_a_folder_without_results(tmp_path: Path):
    result = run_launcher(["--compare", str(tmp_path), str(tmp_path)])
    assert result.returncode == 2 and "is not a run_local.py output folder" in result.stderr
