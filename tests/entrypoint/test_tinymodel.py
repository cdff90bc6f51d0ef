"""The tiny Gemma 4 builder: deterministic, idempotent, world-readable, Gemma-4-shaped."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

from entrypoint import capacity, tinymodel


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_is_deterministic_idempotent_and_readable(tmp_path: Path) -> None:
    a = tinymodel.build(tmp_path / "a")
    b = tinymodel.build(tmp_path / "b")
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert digest(a / name) == digest(b / name), name
    before = (a / "model.safetensors").stat().st_mtime_ns
    tinymodel.build(a)  # up to date: untouched
    assert (a / "model.safetensors").stat().st_mtime_ns == before
    for f in a.iterdir():
        assert f.stat().st_mode & stat.S_IROTH, f"{f.name} is not world-readable"

    cfg = json.loads((a / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma4ForCausalLM"]
    geo = capacity.geometry_from_config(a)
    assert (geo.head_dim_sliding, geo.head_dim_full) == (32, 64)
    tok = json.loads((a / "tokenizer_config.json").read_text())
    assert "<|turn>" in tok["chat_template"]


def test_special_tokens_have_gemma4_ids(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tinymodel.build(tmp_path / "m"))
    assert tok.convert_tokens_to_ids(["<pad>", "<eos>", "<bos>", "<turn|>"]) == [0, 1, 2, 6]
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<bos><|turn>user\nhi<turn|>\n<|turn>model\n"
