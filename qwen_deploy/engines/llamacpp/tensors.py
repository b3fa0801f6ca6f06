"""The GGUF side of llama.cpp's arithmetic: ggml block sizes, the model geometry, and the exact tensor
list a quantization type writes (llama-quant.cpp's choices per tensor), for the offload model
(offload.py) when the GGUF's own tensor table is not at hand. Pure.

Read from llama.cpp as vendored in llama-cpp-python 0.3.36 (vendor/llama.cpp at commit 0c1e57098).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from qwen_deploy.engines.llamacpp.memory import GGML_BLOCKS

Tensor = tuple[str, str, int, int, int]  # (name, ggml type, ne0, ne1, nbytes) as memory.estimate_gguf_tensors

# ----------------------------------------------------------------------------- ggml types


# KV cache types accepted by --type_k/--type_v (names as llama.cpp prints them, lower case).
KV_TYPES = {
    "f32": "F32",
    "f16": "F16",
    "bf16": "BF16",
    "q8_0": "Q8_0",
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
    "iq4_nl": "IQ4_NL",
}


def row_bytes(type_name: str, n: int) -> int:
    """ggml_row_size(type, n): n elements of a row, which must be whole blocks."""
    block_bytes, block = GGML_BLOCKS[type_name.upper()]
    if n % block:
        raise ValueError(f"{type_name} rows need a multiple of {block} elements, not {n}")
    return n // block * block_bytes


def tensor_bytes(type_name: str, ne0: int, ne1: int = 1) -> int:
    return row_bytes(type_name, ne0) * ne1


def pad(x: int, to: int) -> int:
    return -(-x // to) * to


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """A dense decoder as llama.cpp sees it (names as memory.estimate_gguf_tensors uses them)."""

    layers: int
    hidden: int
    intermediate: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qk_norm: bool = False  # Qwen3: per-head q_norm/k_norm weights
    qkv_bias: bool = False  # Qwen2/2.5: q/k/v biases
    value_head_dim: int | None = None
    kv_layers: tuple[int, ...] | None = None  # layers that own a KV cache (hybrid models); None = all

    @property
    def v_head_dim(self) -> int:
        return self.value_head_dim or self.head_dim

    @property
    def n_embd_k_gqa(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def n_embd_v_gqa(self) -> int:
        return self.kv_heads * self.v_head_dim

    def has_kv(self, il: int) -> bool:
        return self.kv_layers is None or il in self.kv_layers


def as_geometry(geometry: Geometry | Mapping[str, Any]) -> Geometry:
    if isinstance(geometry, Geometry):
        return geometry
    names = {f.name for f in fields(Geometry)}
    aliases = {
        "n_layer": "layers",
        "n_embd": "hidden",
        "n_ff": "intermediate",
        "n_head": "attention_heads",
        "n_head_kv": "kv_heads",
        "n_vocab": "vocab",
        "tied_embeddings": "tied",
    }
    kw = {aliases.get(k, k): v for k, v in geometry.items() if aliases.get(k, k) in names}
    if "kv_layers" in kw and kw["kv_layers"] is not None:
        kw["kv_layers"] = tuple(kw["kv_layers"])
    return Geometry(**kw)


# ----------------------------------------------------------------------------- exact GGUF tensor list


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    """src/llama-quant.cpp llama_tensor_get_type_impl: the layers Q4_K_M/Q5_K_M give more bits."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "Q2_K": "Q4_0", "Q3_K": "Q4_0", "IQ4_XS": "IQ4_NL"}


def _fallback(type_name: str, ncols: int) -> str:
    """src/llama-quant.cpp tensor_type_fallback: a row length the block size does not divide."""
    block = GGML_BLOCKS[type_name][1]
    if ncols % block == 0:
        return type_name
    new = _FALLBACK.get(type_name, type_name)
    return new if ncols % GGML_BLOCKS[new][1] == 0 else "F16"


FTYPE_DEFAULT = {
    "q4_k_m": "Q4_K",
    "q4_k_s": "Q4_K",
    "q5_k_m": "Q5_K",
    "q6_k": "Q6_K",
    "q8_0": "Q8_0",
    "q4_0": "Q4_0",
    "f16": "F16",
    "bf16": "BF16",
    "f32": "F32",
}


def gguf_tensors(geometry: Geometry | Mapping[str, Any], ftype: str) -> list[Tensor]:
    """Every tensor of a dense llama/qwen2/qwen3 GGUF as llama-quantize writes it for `ftype`.

    Types per src/llama-quant.cpp llama_tensor_get_type_impl (vendored commit): the output matrix (and the
    token embedding when it is tied to it) is Q6_K unless the ftype is Q8_0; with Q4_K_M and Q5_K_M the
    attn_v and ffn_down of the use_more_bits layers are Q6_K; 1-D norms and biases stay F32. Checked:
    Qwen3-4B Q4_K_M gives 216 q4_K + 37 q6_K tensors and a 2375.91 MiB CUDA0 buffer as logged.
    """
    g = as_geometry(geometry)
    ft = ftype.lower()
    base = FTYPE_DEFAULT[ft]
    quantized = base not in ("F16", "BF16", "F32")
    out: list[Tensor] = []

    def add(name: str, type_name: str, ne0: int, ne1: int = 1) -> None:
        if ne1 > 1 and quantized:
            type_name = _fallback(type_name, ne0)
        out.append((name, type_name, ne0, ne1, tensor_bytes(type_name, ne0, ne1)))

    def out_type() -> str:
        if not quantized:
            return base
        return "Q8_0" if base == "Q8_0" or g.hidden % 256 else "Q6_K"

    emb_type = out_type() if g.tied else base
    add("token_embd.weight", emb_type, g.hidden, g.vocab)
    q, kv, v = g.attention_heads * g.head_dim, g.n_embd_k_gqa, g.n_embd_v_gqa
    for i in range(g.layers):
        p = f"blk.{i}."
        more = ft in ("q4_k_m", "q5_k_m") and _use_more_bits(i, g.layers)
        add(p + "attn_norm.weight", "F32", g.hidden)
        add(p + "attn_q.weight", base, g.hidden, q)
        add(p + "attn_k.weight", base, g.hidden, kv)
        add(p + "attn_v.weight", "Q6_K" if more else base, g.hidden, v)
        add(p + "attn_output.weight", base, q, g.hidden)
        if g.qkv_bias:
            add(p + "attn_q.bias", "F32", q)
            add(p + "attn_k.bias", "F32", kv)
            add(p + "attn_v.bias", "F32", v)
        if g.qk_norm:
            add(p + "attn_q_norm.weight", "F32", g.head_dim)
            add(p + "attn_k_norm.weight", "F32", g.head_dim)
        add(p + "ffn_norm.weight", "F32", g.hidden)
        add(p + "ffn_gate.weight", base, g.hidden, g.intermediate)
        add(p + "ffn_up.weight", base, g.hidden, g.intermediate)
        add(p + "ffn_down.weight", "Q6_K" if more else base, g.intermediate, g.hidden)
    add("output_norm.weight", "F32", g.hidden)
    if not g.tied:
        add("output.weight", out_type(), g.hidden, g.vocab)
    return out


def scaled_tensors(geometry: Geometry | Mapping[str, Any], ftype: str, file_bytes: int) -> list[Tensor]:
    """gguf_tensors scaled so the sizes add up to a known file size (imatrix/'dynamic' quants differ)."""
    ts = gguf_tensors(geometry, ftype)
    scale = file_bytes / max(1, sum(t[4] for t in ts))
    return [(n, ty, a, b, int(nb * scale)) for n, ty, a, b, nb in ts]
