"""Write small GGUF files with a real model architecture's geometry and random weights.

llama.cpp loads, serves and generates (random) text from them, so tests can start the real engine
without downloading anything. The attention geometry (layers, KV heads, head dim) can be Qwen3-4B's, which
is what the KV cache depends on; the hidden size and MLP stay tiny so the file is a few MB.
Used by the tests (as a fixture) and by bench/ scripts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class SyntheticShape:
    layers: int = 36
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    hidden: int = 64
    ffn: int = 128
    vocab: int = 151936
    context: int = 262144
    architecture: str = "qwen3"
    sliding_window: int | None = None  # gemma3 only


QWEN3_4B_ATTENTION = SyntheticShape()


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 byte-level BPE tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    mapping = dict(zip(printable, chars, strict=True))
    return [chr(mapping[b]) for b in range(256)]


def write_synthetic_gguf(path: Path, shape: SyntheticShape = QWEN3_4B_ATTENTION, seed: int = 0) -> Path:
    """Write a GGUF of `shape` with F16 matrices and F32 norms; returns `path`."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    arch = shape.architecture
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"synthetic-{arch}-{shape.layers}l-{shape.kv_heads}kv")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_block_count(shape.layers)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1_000_000.0)
    if shape.sliding_window:
        writer.add_sliding_window(shape.sliding_window)

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merged = ["Ġt", "he"]
    tokens = _byte_tokens() + merged
    filler = shape.vocab - len(tokens) - len(special)
    if filler < 0:
        raise ValueError(f"vocab must be at least {len(tokens) + len(special)}")
    tokens += [f"<|filler_{i}|>" for i in range(filler)] + special
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(special)) + [gguf.TokenType.CONTROL] * len(special)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_bos_token_id(len(tokens) - 3)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def norm(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    q_dim, kv_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    writer.add_tensor("token_embd.weight", matrix(shape.vocab, shape.hidden))
    for i in range(shape.layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", norm(shape.hidden))
        writer.add_tensor(p + "attn_q.weight", matrix(q_dim, shape.hidden))
        writer.add_tensor(p + "attn_k.weight", matrix(kv_dim, shape.hidden))
        writer.add_tensor(p + "attn_v.weight", matrix(kv_dim, shape.hidden))
        writer.add_tensor(p + "attn_output.weight", matrix(shape.hidden, q_dim))
        writer.add_tensor(p + "attn_q_norm.weight", norm(shape.head_dim))
        writer.add_tensor(p + "attn_k_norm.weight", norm(shape.head_dim))
        if arch == "gemma3":
            writer.add_tensor(p + "post_attention_norm.weight", norm(shape.hidden))
            writer.add_tensor(p + "post_ffw_norm.weight", norm(shape.hidden))
        writer.add_tensor(p + "ffn_norm.weight", norm(shape.hidden))
        writer.add_tensor(p + "ffn_gate.weight", matrix(shape.ffn, shape.hidden))
        writer.add_tensor(p + "ffn_up.weight", matrix(shape.ffn, shape.hidden))
        writer.add_tensor(p + "ffn_down.weight", matrix(shape.hidden, shape.ffn))
    writer.add_tensor("output_norm.weight", norm(shape.hidden))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
