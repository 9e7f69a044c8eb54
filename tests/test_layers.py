"""The package keeps its shape: the layers its docstring draws (imports go one way, no cycles), the planning
layers free of third-party imports, process-wide state touched only at the entry points, modules small
enough to read in one sitting; one home for every object that crosses to a worker process; and the
three ways in (run_local.py, python -m tau2_run_local, run-local) all work."""
from __future__ import annotations

import ast
import multiprocessing
import pickle
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import tau2_run_local
from conftest import ROOT, cpu_plan
from tau2_run_local.plan import Plan
from tau2_run_local.results import Job, NotScored, Outcome

PACKAGE = ROOT / "tau2_run_local"
PURE_LAYERS = ("planner", "plan", "utilities")  # no third-party package imported at module level
ENTRY_POINTS = {"cli", "app", "tau2_loader", "worker_main"}  # the only modules that touch process-wide state
MAX_LINES = 400


def layer_map() -> dict[str, tuple[int, str]]:
    """module -> (depth, layer), read from the package docstring's table: depth 0 is the top."""
    found: dict[str, tuple[int, str]] = {}
    layer, depth = "", -1
    for line in tau2_run_local.__doc__.split("Layers, top to bottom.", 1)[1].splitlines():
        if not line.startswith("  ") or not line.strip():
            continue
        head, words = line[:18].strip(), line[18:].split()
        if head:
            layer, depth = head, depth + 1
        found[words[0]] = (depth, layer)
    return found


def modules() -> dict[str, Path]:
    """Each module of the package by its name in the map (executors' modules count as 'executors')."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts in (("__init__",), ("__main__",)):
            continue
        out[".".join(p for p in parts if p != "__init__")] = path
    return out


def map_name(module: str) -> str:
    return module.split(".")[0]


def imports_of(path: Path, module: str) -> tuple[set[str], list[str]]:
    """(modules of this package it imports anywhere in the file, third-party modules imported at module level)."""
    inside, third = set(), []
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            if target:
                inside.add(map_name(".".join(target)))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tau2_run_local."):
            inside.add(map_name(node.module.removeprefix("tau2_run_local.")))
    for node in tree.body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
        third += [n for n in names if n.split(".")[0] not in sys.stdlib_module_names | {"__future__", "tau2_run_local"}]
    return inside - {map_name(module)}, third


def test_every_module_is_in_the_docstring_map_once():
    mapped = layer_map()
    assert sorted(mapped) == sorted({map_name(m) for m in modules()})


def test_imports_go_down_the_layers_without_cycles():
    depth = {name: d for name, (d, _) in layer_map().items()}
    graph: dict[str, set[str]] = {}
    for module, path in modules().items():
        graph.setdefault(map_name(module), set()).update(imports_of(path, module)[0])
    upward = [(m, d) for m, deps in graph.items() for d in deps if depth[d] < depth[m]]
    assert not upward, f"imports from a higher layer: {upward}"
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        assert state.get(node) != 1, f"import cycle: {' -> '.join(trail + [node])}"
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in sorted(graph[node]):
            visit(dep, trail + [node])
        state[node] = 2

    for node in graph:
        visit(node, [])


def test_the_plan_and_below_import_no_third_party_package_at_module_level():
    layers = layer_map()
    for module, path in modules().items():
        if layers[map_name(module)][1] in PURE_LAYERS:
            assert not imports_of(path, module)[1], f"{module} imports {imports_of(path, module)[1]}"


def touches_process_state(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            pair = (node.value.id, node.attr)
            if pair in {("os", "environ"), ("os", "_exit"), ("os", "putenv"), ("signal", "signal"),
                        ("resource", "setrlimit"), ("logger", "add"), ("logger", "remove"),
                        ("gc", "freeze"), ("gc", "set_threshold")}:
                found.append(".".join(pair))
        if isinstance(node, ast.Attribute) and node.attr in ("register_agent", "register_user"):
            found.append(node.attr)
    return found


def test_only_the_entry_points_touch_process_wide_state():
    touched = {m: touches_process_state(ast.parse(p.read_text())) for m, p in modules().items()}
    assert {m for m, found in touched.items() if found} <= ENTRY_POINTS, touched
    assert touched["app"] and touched["cli"] and touched["tau2_loader"] and touched["worker_main"]


def test_modules_are_short_and_run_local_is_a_thin_entry():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    assert len((ROOT / "run_local.py").read_text().splitlines()) < 60


def round_trip(line) -> None:  # in a spawned process: what crosses to a worker, back again with its types
    plan, job, outcome = line.recv()
    line.send((plan, job, outcome, [type(x).__module__ for x in (plan, job, outcome, outcome.result)]))


def test_objects_sent_to_worker_processes_have_one_home():
    plan = cpu_plan("--domains", "mock")
    job = Job("mock", "task-1", 0, 7)
    outcome = Outcome(job, NotScored("task-1", 0, 7, "infrastructure", "gone", "now"), Counter(retried_calls=2))
    ctx = multiprocessing.get_context("spawn")  # as the worker processes are started
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=round_trip, args=(theirs,))
    child.start()
    ours.send((plan, job, outcome))
    back_plan, back_job, back_outcome, homes = ours.recv()
    child.join(timeout=30)
    assert homes == ["tau2_run_local.plan", "tau2_run_local.results", "tau2_run_local.results",
                     "tau2_run_local.results"]
    assert isinstance(back_plan, Plan) and back_plan == plan
    assert isinstance(back_job, Job) and isinstance(back_outcome.result, NotScored) and back_outcome == outcome


def test_run_local_reexports_the_package_objects():
    import run_local
    from tau2_run_local import cli

    assert run_local.main is cli.main and run_local.run is cli.run
    assert run_local.__version__ == tau2_run_local.__version__


def test_routed_classes_are_importable_and_picklable():
    from tau2_run_local import agents

    for cls in (*agents.AGENT_CLASSES.values(), *agents.USER_CLASSES.values()):
        assert pickle.loads(pickle.dumps(cls)) is cls and cls.__module__ == "tau2_run_local.agents"


def test_three_ways_in_and_a_checkout_with_no_install(tmp_path: Path):
    script = Path(sys.executable).parent / "run-local"
    for argv in ([sys.executable, str(ROOT / "run_local.py")], [sys.executable, "-m", "tau2_run_local"], [str(script)]):
        done = subprocess.run([*argv, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith("usage: run_local.py"), (argv, done.stderr)
    checkout = tmp_path / "checkout"
    shutil.copytree(PACKAGE, checkout / "tau2_run_local", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "run_local.py", checkout)
    # -S: no site-packages at all, so the package can only come from beside the script
    done = subprocess.run([sys.executable, "-S", str(checkout / "run_local.py"), "--version"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"run_local.py {tau2_run_local.__version__}", done.stderr
