"""Build a tiny Llama-architecture model for tests and the demo, entirely offline.

Random weights (fixed seed) and a byte-level BPE tokenizer trained locally on a small
generated corpus, with a chat template, saved in the Hugging Face layout that vLLM loads.
Nothing is downloaded from any hub. The output is deterministic for a given version of this
file and is cached: ``build(dest)`` returns at once when ``dest`` already holds a model of the
same recipe.

Usage: ``python -m infera_testenv.tinymodel [DEST]`` (prints the model directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

RECIPE_VERSION = "1"
MODEL_NAME = "infera-tiny-llama"

CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,  # vLLM's CPU attention needs head_dim >= 32
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# A ChatML-like template: each message becomes <|role|>\ncontent<|end|>\n.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_WORDS = (
    "the model serves tokens to clients over an api kubernetes schedules pods on nodes with gpus "
    "an operator reconciles resources into deployments services and autoscalers the runtime streams "
    "completions while the engine batches requests and manages the cache latency throughput "
    "hello world how are you today what is the weather like please write a short poem about "
    "clouds rivers mountains and the sea one two three four five six seven eight nine ten "
    "inference request response token prompt system user assistant answer question ready"
).split()


def _recipe_digest() -> str:
    blob = json.dumps(
        {"v": RECIPE_VERSION, "config": CONFIG, "vocab": VOCAB_SIZE, "tpl": CHAT_TEMPLATE}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _corpus(seed: int = 0, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        n = rng.randint(4, 24)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 10_000)))
        out.append(" ".join(words) + rng.choice([".", "?", "!", ","]))
    return out


def _build_tokenizer(dest: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(dest / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|end|>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "model_max_length": CONFIG["max_position_embeddings"],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (dest / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "<|end|>", "unk_token": "<unk>", "pad_token": "</s>"})
        + "\n"
    )


def _build_weights(dest: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = json.loads((dest / "tokenizer.json").read_text())["model"]["vocab"]
    ids = {t: vocab[t] for t in SPECIAL_TOKENS}
    cfg = dict(CONFIG)
    cfg.update(
        vocab_size=VOCAB_SIZE, bos_token_id=ids["<s>"], eos_token_id=ids["<|end|>"], pad_token_id=ids["</s>"]
    )
    cfg.pop("architectures")
    cfg.pop("model_type")
    dtype = cfg.pop("torch_dtype")
    torch.manual_seed(1234)
    config = LlamaConfig(**cfg)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))  # type: ignore[no-untyped-call]
    model.save_pretrained(str(dest), safe_serialization=True)
    gen = {"bos_token_id": ids["<s>"], "eos_token_id": ids["<|end|>"], "pad_token_id": ids["</s>"]}
    (dest / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def default_dir() -> Path:
    cache = Path(os.environ.get("INFERA_CACHE_DIR", Path.home() / ".cache" / "infera"))
    return cache / "models" / f"{MODEL_NAME}-{_recipe_digest()}"


def build(dest: Path | None = None) -> Path:
    """Build the tiny model into ``dest`` (default: the cache) and return its directory."""
    dest = Path(dest) if dest is not None else default_dir()
    stamp = dest / ".infera-recipe"
    if stamp.exists() and stamp.read_text().strip() == _recipe_digest():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _build_tokenizer(tmp)
    _build_weights(tmp)
    (tmp / ".infera-recipe").write_text(_recipe_digest() + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(build(Path(argv[0]) if argv else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
