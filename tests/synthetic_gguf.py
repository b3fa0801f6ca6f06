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
    merges: int = 2  # BPE merges; a real Qwen3 vocabulary has 151,387 (most of a GGUF header's bytes)


QWEN3_4B_ATTENTION = SyntheticShape()
# Qwen3-4B's every dimension (config.json of Qwen/Qwen3-4B-Instruct-2507: hidden 2560, intermediate 9728, tied
# embeddings): 4.02e9 parameters, so loading it and answering take what the real model's do on this machine.
QWEN3_4B_FULL = SyntheticShape(hidden=2560, ffn=9728, merges=151387)


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


def write_synthetic_gguf(
    path: Path, shape: SyntheticShape = QWEN3_4B_ATTENTION, seed: int = 0, weights: str = "F16"
) -> Path:
    """Write a GGUF of `shape` with `weights` (F16 or Q8_0) matrices and F32 norms; returns `path`."""
    import gguf
    import numpy as np

    if weights not in ("F16", "Q8_0"):
        raise ValueError(f"weights must be F16 or Q8_0, not {weights!r}")
    quantized = weights == "Q8_0"

    rng = np.random.default_rng(seed)
    arch = shape.architecture
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"synthetic-{arch}-{shape.layers}l-{shape.kv_heads}kv")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantized else gguf.LlamaFileType.MOSTLY_F16)
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
    fillers = [f"<|filler_{i}|>" for i in range(filler)]
    tokens += fillers + special
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(special)) + [gguf.TokenType.CONTROL] * len(special)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # two real merges, then pairs of filler tokens (their products never occur in text, so tokenizing is
    # unchanged; they make the header and the tokenizer's load as big as the real vocabulary's)
    extra = [f"{fillers[i % filler]} {fillers[(i + 1) % filler]}" for i in range(max(0, shape.merges - 2))]
    writer.add_token_merges(["Ġ t", "h e", *extra])
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_bos_token_id(len(tokens) - 3)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    def matrix(rows: int, cols: int) -> np.ndarray:
        values = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
        if quantized:
            return gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
        return values.astype(np.float16)

    def add_matrix(name: str, rows: int, cols: int) -> None:
        raw = gguf.GGMLQuantizationType.Q8_0 if quantized else None
        writer.add_tensor(name, matrix(rows, cols), raw_dtype=raw)

    def norm(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    q_dim, kv_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    add_matrix("token_embd.weight", shape.vocab, shape.hidden)
    for i in range(shape.layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", norm(shape.hidden))
        add_matrix(p + "attn_q.weight", q_dim, shape.hidden)
        add_matrix(p + "attn_k.weight", kv_dim, shape.hidden)
        add_matrix(p + "attn_v.weight", kv_dim, shape.hidden)
        add_matrix(p + "attn_output.weight", shape.hidden, q_dim)
        writer.add_tensor(p + "attn_q_norm.weight", norm(shape.head_dim))
        writer.add_tensor(p + "attn_k_norm.weight", norm(shape.head_dim))
        if arch == "gemma3":
            writer.add_tensor(p + "post_attention_norm.weight", norm(shape.hidden))
            writer.add_tensor(p + "post_ffw_norm.weight", norm(shape.hidden))
        writer.add_tensor(p + "ffn_norm.weight", norm(shape.hidden))
        add_matrix(p + "ffn_gate.weight", shape.ffn, shape.hidden)
        add_matrix(p + "ffn_up.weight", shape.ffn, shape.hidden)
        add_matrix(p + "ffn_down.weight", shape.hidden, shape.ffn)
    writer.add_tensor("output_norm.weight", norm(shape.hidden))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def full_size_qwen3_4b(quant: str = "Q8_0") -> Path:
    """A GGUF with every dimension of Qwen3-4B (random weights), written once into the test-model cache: Q8_0
    (4.3 GB, about 1.5 minutes) or Q4_K_M (2.5 GB: the Q8_0 file requantized by llama.cpp's own
    llama_model_quantize, the mix of q4_K/q6_K tensors a real Q4_K_M has; about 6 minutes on 2 cores). The
    real model cannot be downloaded here; loading and running this one take what the real one's do. For the
    benchmarks; the tests use the small shapes."""
    import os

    from tests.real_models import cache_dir

    if quant not in ("Q8_0", "Q4_K_M"):
        raise ValueError(f"quant must be Q8_0 or Q4_K_M, not {quant!r}")
    target = cache_dir() / f"synthetic-qwen3-4b-{quant.lower()}.gguf"
    if target.exists():
        return target
    partial = target.with_suffix(".partial")
    if quant == "Q8_0":
        print(f"writing {target} (once) ...", flush=True)
        write_synthetic_gguf(partial, QWEN3_4B_FULL, weights="Q8_0")
    else:
        import llama_cpp

        source = full_size_qwen3_4b("Q8_0")
        print(f"quantizing {source.name} to {target.name} (once) ...", flush=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        params.allow_requantize = True
        params.nthread = os.cpu_count() or 2
        if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
            raise RuntimeError(f"llama_model_quantize failed for {source}")
    os.replace(partial, target)
    return target
