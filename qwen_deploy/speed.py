"""How fast a llama.cpp candidate runs on a CPU: prefill (compute-bound) and decode (bandwidth-bound, with a
compute floor), from the model's FLOPs and bytes per token against the machine's throughput. Pure.

    prefill of n tokens  = 2·P·n / R_matmul + 2·L·H·D·n² / R_attention          (seconds)
        P = the repeating layers' matrix parameters (q, k, v, o, gate, up, down); the causal attention
        multiplies n²/2 query-key pairs by 4·H·D FLOPs (QKᵀ and softmax·V) in every layer.
    decode at depth d    = max(W / B, 2·(P + lm_head) / R_decode)                  (seconds per token)
                           + KV(d) / B + 2·L·H·(D + Dv)·d / R_decode_attention
        the weights W read once per token (or the mat-vec products computed, where that is slower), then the
        d tokens of KV read and attended to; B is the bandwidth decoding reaches (the measured figure ×
        DECODE_BANDWIDTH_EFFICIENCY).

R_* are FLOP/s for the weights' quantization type on the planned threads (cores × a per-core rate read
from our runs of llama.cpp's AVX2 build: CPU_RATES below, bench/speed_cpu.py holds them against measured
speeds); `bandwidth` is `probe --measure`'s figure, else a typical one.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwen_deploy.hardware.types import Hardware
from qwen_deploy.memory import kv_bytes_per_token
from qwen_deploy.model.types import Artifact, ModelSpec

# Decode and prefill figures are quoted for a conversation of this many tokens (its prompt, its KV).
SPEED_CONTEXT = 4096
CPU_TYPICAL_BANDWIDTH_GBPS = 40.0  # dual-channel DDR4/DDR5 desktop, effective; `probe --measure` replaces it

# Per physical core, GFLOP/s of llama.cpp's portable AVX2 build (scripts/install-llamacpp, b11312), by the
# weights' main type: (prefill matmul, decode mat-vec). Fitted on one run of bench/speed_cpu.py --implied
# (2026-12-02, AMD EPYC, 2 cores; the full-size Qwen3-4B GGUF at prompts of 512, 2,048 and 4,096 tokens):
#   prefill, t(n) = a·n + b·n² by least squares with b shared by both quants (the attention does not depend on
#   the weights): q4_k_m a = 44.43 ms/token -> 7.2666 GFLOP / 0.04443 s / 2 cores = 81.8; q8_0 a = 60.40 ms
#   -> 60.2; b = 5.128e-6 s -> 294,912 FLOPs per pair-half / b / 2 = 28.8 GFLOP/s per core of attention.
#   decode: q4_k_m reads its weights at the memory bandwidth (its mat-vecs would need > 35/core to bind);
#   q8_0 is bound by its mat-vecs: 8.04 GFLOP per token in ~217 ms = 18.5 per core.
# q4_k_m and q8_0 are measured; the others are placed between them by their kernels (q4_0 shares q4_K's
# repacked AVX2 path; q5_K/q6_K have no repacked kernel; f16/bf16 convert every row): not measured here.
CPU_RATES: dict[str, tuple[float, float]] = {
    "q4_k_m": (81.8, 48.0),
    "q4_0": (81.8, 48.0),
    "q4_1": (70.0, 40.0),
    "q5_k_m": (62.0, 26.0),
    "q6_k": (60.0, 22.0),
    "q8_0": (60.2, 18.5),
    "f16": (40.0, 12.0),
    "bf16": (30.0, 9.0),
}
DEFAULT_RATE = (40.0, 12.0)
# Attention (flash attention over the cache), GFLOP/s per core: prefill (measured above, f16 cache) and
# decode (one query row at a time: 13 per core, fitted on the same run's decode at depths 528-4,112 together
# with the bandwidth factor below). Quantized caches dequantize first: estimated, not measured.
CPU_ATTENTION_GFLOPS = {"f16": 28.8, "q8_0": 23.0, "q4_0": 20.0}
CPU_DECODE_ATTENTION_GFLOPS = {"f16": 13.0, "q8_0": 10.5, "q4_0": 9.0}
# Decoding on every core reads memory faster than the probe's one-thread copy: 1.08x on the run above (AMD
# EPYC); an earlier run on an Intel Xeon of the same 2-core kind gave ~0.8x. Machine-dependent: ±25%.
DECODE_BANDWIDTH_EFFICIENCY = 1.05


@dataclass(frozen=True)
class Rates:
    matmul_flops_per_s: float
    attention_flops_per_s: float
    decode_flops_per_s: float
    bandwidth_bytes_per_s: float  # what decoding reaches, not the probe's figure
    decode_attention_flops_per_s: float | None = None  # one query over the cache; None: attention_flops_per_s

    @property
    def decode_attention(self) -> float:
        return self.decode_attention_flops_per_s or self.attention_flops_per_s


def cpu_decode_bandwidth(hw: Hardware) -> float:
    """Bytes a second that decoding on this CPU reads: the measured (or typical) figure × the factor above."""
    return (hw.cpu.memory_bandwidth_gbps or CPU_TYPICAL_BANDWIDTH_GBPS) * DECODE_BANDWIDTH_EFFICIENCY * 1e9


def cpu_rates(hw: Hardware, precision: str, kv: str) -> Rates:
    cores = max(1, hw.cpu.physical_cores)
    prefill, decode = CPU_RATES.get(precision, DEFAULT_RATE)
    attention = CPU_ATTENTION_GFLOPS.get(kv, CPU_ATTENTION_GFLOPS["f16"])
    decode_attention = CPU_DECODE_ATTENTION_GFLOPS.get(kv, CPU_DECODE_ATTENTION_GFLOPS["f16"])
    return Rates(
        prefill * cores * 1e9, attention * cores * 1e9, decode * cores * 1e9, cpu_decode_bandwidth(hw),
        decode_attention * cores * 1e9,
    )  # fmt: skip


def layer_matrix_params(model: ModelSpec) -> int:
    """Parameters of the repeating layers' matrices (what prefill multiplies every token by)."""
    e, f = model.hidden_size, model.intermediate_size
    q, kv = model.attention_heads * model.head_dim, model.kv_heads * (model.head_dim + model.value_head_dim)
    o = model.attention_heads * model.value_head_dim
    return model.layers * (e * q + e * kv + o * e + 3 * e * f)


def _attention_flops_per_pair(model: ModelSpec) -> int:
    """FLOPs one query spends on one key in all layers: QKᵀ (2·D) and the weighted V sum (2·Dv), per head."""
    return 2 * model.layers * model.attention_heads * (model.head_dim + model.value_head_dim)


def prefill_seconds(model: ModelSpec, rates: Rates, n: int) -> float:
    matmul = 2 * layer_matrix_params(model) * n / rates.matmul_flops_per_s
    attention = _attention_flops_per_pair(model) * n * n / 2 / rates.attention_flops_per_s
    return matmul + attention


def prefill_tokens_per_s(model: ModelSpec, rates: Rates | None, context: int) -> float | None:
    """Tokens a second for a prompt of SPEED_CONTEXT tokens (or the whole context when shorter)."""
    if rates is None or context <= 0:
        return None
    n = min(context, SPEED_CONTEXT)
    return n / prefill_seconds(model, rates, n)


def fill_seconds(model: ModelSpec, rates: Rates | None, context: int) -> float | None:
    """Seconds to prefill the whole context from an empty cache."""
    return None if rates is None or context <= 0 else prefill_seconds(model, rates, context)


def longest_fillable(model: ModelSpec, rates: Rates, seconds: float) -> int:
    """The longest prompt prefilled within `seconds`: the positive root of a·n² + b·n = seconds."""
    a = _attention_flops_per_pair(model) / 2 / rates.attention_flops_per_s
    b = 2 * layer_matrix_params(model) / rates.matmul_flops_per_s
    return int((-b + (b * b + 4 * a * seconds) ** 0.5) / (2 * a)) if a > 0 else int(seconds / b)


def decode_tokens_per_s(model: ModelSpec, art: Artifact, kv: str, rates: Rates, depth: int) -> float:
    """Single-stream decode at `depth` tokens of context: the weights read once (or their mat-vec products
    computed, where that is slower), then the KV of `depth` tokens read and attended to."""
    per_token = kv_bytes_per_token(
        model.layers, model.kv_heads, model.head_dim, kv, value_head_dim=model.value_head_dim
    )
    lm_head = model.vocab_size * model.hidden_size
    weights = max(
        art.weights_bytes / rates.bandwidth_bytes_per_s,
        2 * (layer_matrix_params(model) + lm_head) / rates.decode_flops_per_s,
    )
    cache = per_token * depth / rates.bandwidth_bytes_per_s
    attention = _attention_flops_per_pair(model) * depth / rates.decode_attention
    return 1.0 / (weights + cache + attention)
