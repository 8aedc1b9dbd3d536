"""A trained student as a GGUF file, the format the local engine (llama.cpp) serves.

Why write it with the ``gguf`` package and not llama.cpp's ``convert_hf_to_gguf.py``: the converter
lives in llama.cpp's source tree (not on PyPI), which ``promptbake teacher build`` only fetches
through pip, so it would need the network after training; the ``gguf`` package is the converter's
own library, installed with ``promptbake[train]``. The price is scope: this writer knows the Llama
architecture (SmolLM, SmolLM2, Llama 3 and their fine-tunes) with a byte-level BPE tokenizer, and
:func:`check_convertible` refuses anything else before training starts, pointing at the converter.

It does what the converter does for those models: the same tensor names, Q and K rows permuted
from Hugging Face's rotary layout to llama.cpp's, norms kept in F32, the tokenizer's tokens, merges,
special ids and chat template, and the pre-tokenizer name llama.cpp needs to split text the way
the Hugging Face tokenizer does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from promptbake.errors import TrainingError

if TYPE_CHECKING:
    import numpy as np

GgufType = Literal["q8_0", "f16", "f32"]
GGUF_TYPES: tuple[GgufType, ...] = ("q8_0", "f16", "f32")
ARCHITECTURES = ("LlamaForCausalLM",)
CONVERTER_HINT = "convert it yourself with llama.cpp's convert_hf_to_gguf.py, or pass --no-gguf"

# llama.cpp names the pre-tokenizer (how text is split before BPE) by the hash of the token ids of
# this text; entries from its convert_hf_to_gguf.py (get_vocab_base_pre), for Llama-architecture models.
CHECK_TEXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) '
              '✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作'
              '1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been '
              '\'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
}
# Hugging Face (model) tensor suffix -> llama.cpp tensor name, per layer
_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def check_convertible(config: dict[str, Any], tokenizer_json: dict[str, Any] | None, where: str) -> None:
    """Raise before training when the student could not be written as a GGUF afterwards."""
    archs = config.get("architectures") or [config.get("model_type", "?")]
    if archs[0] not in ARCHITECTURES and config.get("model_type") != "llama":
        raise TrainingError(f"{where}: a {archs[0]} model; promptbake writes GGUF files for the Llama architecture "
                         f"only ({', '.join(ARCHITECTURES)}): {CONVERTER_HINT}")
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise TrainingError(f"{where}: rope scaling {rope.get('rope_type')!r} is not supported by promptbake's GGUF "
                         f"writer: {CONVERTER_HINT}")
    model = (tokenizer_json or {}).get("model") or {}
    if model.get("type") != "BPE" or _byte_level(tokenizer_json or {}) is None:
        raise TrainingError(f"{where}: the GGUF writer needs a byte-level BPE tokenizer (tokenizer.json), as SmolLM2 "
                         f"and Llama 3 have: {CONVERTER_HINT}")


def _byte_level(tokenizer_json: dict[str, Any]) -> dict[str, Any] | None:
    """The tokenizer's ByteLevel pre-tokenizer (its settings), if it has one."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers") or [pre]
    return next((p for p in parts if isinstance(p, dict) and p.get("type") == "ByteLevel"), None)


def pre_tokenizer(tokenizer: Any, tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for how this tokenizer splits text: by the converter's hash for known models,
    else by the shape of two simple pre-tokenizers (GPT-2's regex; SmolLM's digits, then GPT-2's)."""
    ids = tokenizer.encode(CHECK_TEXT, add_special_tokens=False)
    name = KNOWN_PRE.get(hashlib.sha256(str(ids).encode()).hexdigest())
    if name is not None:
        return name
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = [(p.get("type"), p.get("individual_digits"), p.get("use_regex", True))
             for p in (pre.get("pretokenizers") or [pre])]
    if parts == [("ByteLevel", None, True)]:
        return "gpt-2"
    if parts == [("Digits", True, True), ("ByteLevel", None, True)]:
        return "smollm"
    raise TrainingError(f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:120]}) is not one llama.cpp is known to "
                     f"reproduce here: {CONVERTER_HINT}")


def write_gguf(model_dir: Path, out: Path, gguf_type: GgufType = "q8_0", *, name: str | None = None) -> Path:
    """Write the Hugging Face model folder ``model_dir`` (safetensors, config, tokenizer) as ``out``,
    atomically (a temporary file renamed into place); returns ``out``."""
    import gguf
    from safetensors import safe_open
    from transformers import AutoTokenizer

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    check_convertible(config, tokenizer_json, str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    vocab_size = int(config["vocab_size"])
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]

    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
    writer.add_file_type(file_type)
    writer.add_vocab_size(vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    _add_vocab(writer, tokenizer, tokenizer_json, model_dir, vocab_size)
    if gguf_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
        for key in names:
            target = _tensor_name(key)
            if target is None:
                continue
            data = weights.get_tensor(key).float().numpy()
            if key.endswith(("q_proj.weight", "q_proj.bias")):
                data = _permute(data, n_head)
            elif key.endswith(("k_proj.weight", "k_proj.bias")):
                data = _permute(data, n_kv)
            _add_tensor(writer, target, data, gguf_type)
        if "lm_head.weight" not in names and not config.get("tie_word_embeddings", True):
            raise TrainingError(f"{model_dir}: no lm_head.weight and the embeddings are not tied")
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _tensor_name(key: str) -> str | None:
    """llama.cpp's name of a Hugging Face Llama tensor; None for buffers it does not read."""
    stem, _, kind = key.rpartition(".")
    if "rotary_emb" in key:
        return None
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{kind}"
    parts = stem.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER:
        return f"blk.{int(parts[2])}.{_LAYER[parts[3]]}.{kind}"
    raise TrainingError(f"tensor {key!r} has no place in a llama.cpp Llama model: {CONVERTER_HINT}")


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    # Hugging Face rotates the two halves of each head; llama.cpp rotates interleaved pairs
    # (the same reshaping as LlamaModel.permute in llama.cpp's converter)
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _add_tensor(writer: Any, name: str, data: np.ndarray, gguf_type: GgufType) -> None:
    import gguf
    import numpy as np

    if data.ndim < 2 or name.endswith("_norm.weight") or gguf_type == "f32":
        writer.add_tensor(name, data.astype(np.float32))
        return
    if gguf_type == "q8_0":
        try:
            quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        except gguf.QuantError:
            pass  # rows not a multiple of the block size: F16, as llama.cpp's converter falls back
        else:
            writer.add_tensor(name, quantized, raw_shape=quantized.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            return
    writer.add_tensor(name, data.astype(np.float16))


def _add_vocab(writer: Any, tokenizer: Any, tokenizer_json: dict[str, Any], model_dir: Path, vocab_size: int) -> None:
    """Tokens, their types, merges, special ids and the chat template, as the converter's
    ``_set_vocab_gpt2`` writes them."""
    import gguf

    reverse = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoders = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        token = reverse.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            special = decoders[index].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
            tokens.append(token)
        else:
            types.append(gguf.TokenType.NORMAL)
            tokens.append(token)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer, tokenizer_json))
    writer.add_add_space_prefix(bool((_byte_level(tokenizer_json) or {}).get("add_prefix_space")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    # what the tokenizer does to plain text, not what a config claims: llama.cpp adds exactly these
    plain = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    special.add_special_token = {
        "bos": tokenizer.bos_token_id is not None and plain[:1] == [tokenizer.bos_token_id] != bare[:1],
        "eos": tokenizer.eos_token_id is not None and plain[-1:] == [tokenizer.eos_token_id] != bare[-1:],
    }
    if special.chat_template is None and tokenizer.chat_template:
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
