"""A tiny Llama student (random weights, a 300-token byte-level BPE tokenizer with SmolLM2's
pre-tokenizer and a ChatML template) and tiny built datasets, so that training tests take seconds."""

from __future__ import annotations

import json
from pathlib import Path

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a tiny test model<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["Hello, how can I help you today?", "I want my money back!", "No. Go away.", "The answer is 42.",
          "system user assistant", "Where is my order? It is late.", "Calm down and wait."]


def build_tiny_student(out: Path, *, seed: int = 0) -> Path:
    """A 2-layer Llama with hidden size 64 and grouped-query attention (4 heads, 2 KV heads): the
    shapes a real Llama's conversion must get right, at 0.1 M parameters. Initialised wide
    (std 0.2) so that attention, and a mistake in laying out its weights, shows in the logits."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    bpe.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         rope_theta=10000.0, initializer_range=0.2)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def write_dataset(out: Path, *, per_category: int = 4, rejected: bool = True, test_readable: bool = False) -> Path:
    """A built dataset folder: ``train.jsonl`` (two categories), its metadata sidecar (with a
    rejected answer per example when ``rejected``), and a ``test.jsonl`` that cannot be parsed
    unless ``test_readable``: whatever trains on it, or reads it at all, fails."""
    out.mkdir(parents=True, exist_ok=True)
    lines, meta = [], []
    for category in ("calm", "angry"):
        for i in range(per_category):
            messages = [{"role": "user", "content": f"Where is order {i}? I am {category}."},
                        {"role": "assistant", "content": f"No. Go away {i}."}]
            example_id = f"{category}-{i}"
            lines.append(json.dumps({"messages": messages}))
            row = {"id": example_id, "category": category, "cell": {"mood": category}, "split": "train"}
            if rejected:
                row["rejected"] = {"role": "assistant", "content": f"Hello, how can I help you today {i}?"}
            meta.append(json.dumps(row))
    if test_readable:
        meta.append(json.dumps({"id": "held-0", "category": "calm", "cell": {"mood": "calm"}, "split": "test"}))
    (out / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "metadata.jsonl").write_text("\n".join(meta) + "\n", encoding="utf-8")
    test = ('{"messages": [{"role": "user", "content": "held out"}, {"role": "assistant", "content": "never"}]}\n'
            if test_readable else "this test split must never be read by training\n")
    (out / "test.jsonl").write_text(test, encoding="utf-8")
    return out
