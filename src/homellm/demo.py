"""The embedded demo model: a byte-level BPE tokenizer and a tiny random Qwen3, built locally.

Nothing is downloaded. The weights are random, so answers are gibberish by design: the demo shows
the serving path (engine, gateway, failover), not a language model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from homellm.fsutil import atomic_write_text

# bump when the recipe below changes, so cached demo models are rebuilt
DEMO_RECIPE = "tiny-qwen3-v1"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

# ChatML, as Qwen models use; add_generation_prompt opens the assistant turn
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def demo_corpus() -> str:
    return resources.files("homellm.assets").joinpath("demo_corpus.txt").read_text("utf-8")


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in demo_corpus().splitlines() if line.strip()]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _write_model(out_dir: Path, vocab_size: int, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tokenizer = _train_tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=True,
        temperature=1.0,
        max_new_tokens=32,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    params = sum(p.numel() for p in model.parameters())
    atomic_write_text(
        out_dir / "homellm-demo.json",
        json.dumps({"recipe": DEMO_RECIPE, "parameters": params, "vocab_size": len(tokenizer)}),
    )


def build_demo_model(out_dir: Path, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Build (or reuse) the demo model folder; the folder appears whole or not at all."""
    out_dir = Path(out_dir)
    marker = out_dir / "homellm-demo.json"
    if marker.exists():
        try:
            if json.loads(marker.read_text("utf-8")).get("recipe") == DEMO_RECIPE:
                return out_dir
        except (OSError, ValueError):
            pass  # a damaged marker means a damaged folder: rebuild it
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write_model(staging, vocab_size, seed)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def demo_model_info(model_dir: Path) -> dict[str, object]:
    return json.loads((Path(model_dir) / "homellm-demo.json").read_text("utf-8"))


def demo_stack_yaml(model_dir: Path, port: int) -> str:
    """The demo's stack file: two CPU replicas of the demo model, primary and backup."""
    return f"""\
# Written by `homellm demo`. Two replicas of the embedded tiny model on CPU:
# the gateway sends traffic to the primary, and to the backup only while the primary is down.
models:
  demo:
    source: {model_dir}
    engine: transformers
    device: cpu
    max_context: 2048
    replicas:
      - {{role: primary}}
      - {{role: backup}}
gateway:
  listen: 127.0.0.1:{port}
  health: {{interval_s: 1.0, timeout_s: 2.0, fail_threshold: 1, cooldown_s: 3.0}}
supervisor:
  ready_timeout_s: 180
  backoff_initial_s: 0.5
  stop_grace_s: 5
"""


def demo_snippets(url: str) -> tuple[str, str]:
    """Ready-to-paste curl and openai-client snippets for the demo endpoint."""
    curl = (f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' "
            "-d '{\"model\": \"demo\", \"max_tokens\": 16, "
            "\"messages\": [{\"role\": \"user\", \"content\": \"Привет!\"}]}'")
    python = (
        "from openai import OpenAI\n"
        f"client = OpenAI(base_url='{url}/v1', api_key='unused')\n"
        "reply = client.chat.completions.create(model='demo', max_tokens=16,\n"
        "    messages=[{'role': 'user', 'content': 'Привет!'}])\n"
        "print(reply.choices[0].message.content)"
    )
    return curl, python
