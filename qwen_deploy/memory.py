"""What every engine's memory arithmetic shares: KV bytes per token from the attention layout, the result
types (MemoryEstimate, and one DeviceMemory per device that holds anything), and the decode-speed bound.

Pure: no I/O, no environment, nothing heavy imported. Each engine's own rules (vLLM's budget, llama.cpp's
buffers) live in its package under qwen_deploy/engines/.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ----------------------------------------------------------------------------- KV cache element sizes

# (bytes per block, elements per block): ggml block types store `block bytes` per `block size` elements
# (ggml-common.h: q8_0 34 B / 32, q4_0 18/32, q4_1 20/32, q5_0 22/32, q5_1 24/32).
KV_DTYPE_BLOCKS: dict[str, tuple[int, int]] = {
    "auto": (2, 1),  # vLLM: the model dtype (bf16/fp16 for every model we plan)
    "bf16": (2, 1),
    "bfloat16": (2, 1),
    "fp16": (2, 1),
    "float16": (2, 1),
    "f16": (2, 1),
    "fp8": (1, 1),
    "fp8_e4m3": (1, 1),
    "fp8_e5m2": (1, 1),
    "f32": (4, 1),
    "q8_0": (34, 32),
    "q5_1": (24, 32),
    "q5_0": (22, 32),
    "q4_1": (20, 32),
    "q4_0": (18, 32),
}


def kv_row_bytes(n_elements: int, dtype: str) -> int:
    """Bytes of one cache row of `n_elements` (ggml_row_size); quantized rows must be whole blocks."""
    block_bytes, block = KV_DTYPE_BLOCKS[dtype]
    if n_elements % block:
        raise ValueError(f"{dtype} KV cache needs rows that are a multiple of {block} elements, not {n_elements}")
    return n_elements // block * block_bytes


def kv_bytes_per_token(
    layers: int, kv_heads: int, head_dim: int, dtype: str, tp: int = 1, value_head_dim: int | None = None
) -> int:
    """K and V bytes one token takes in `layers` full-attention layers on one tensor-parallel rank.

    2 × layers × kv_heads × head_dim × bytes(dtype) when K and V have the same head size. Under tensor
    parallelism each rank holds max(1, kv_heads // tp) heads (vLLM ModelConfig.get_num_kv_heads).
    """
    heads = max(1, kv_heads // tp)
    v_dim = head_dim if value_head_dim is None else value_head_dim
    return layers * (kv_row_bytes(heads * head_dim, dtype) + kv_row_bytes(heads * v_dim, dtype))


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DeviceMemory:
    """What one device holds, named as the engine names its buffers (llama.cpp: CUDA0, Metal, CPU; vLLM:
    one entry per GPU of a replica)."""

    name: str
    model_bytes: int
    kv_bytes: int
    compute_bytes: int
    budget_bytes: int
    other_bytes: int = 0  # the rest the engine keeps there (process, CUDA graphs, non-torch memory ...)

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.kv_bytes + self.compute_bytes + self.other_bytes

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "model_bytes": self.model_bytes,
            "kv_bytes": self.kv_bytes,
            "compute_bytes": self.compute_bytes,
            "other_bytes": self.other_bytes,
            "total_bytes": self.total_bytes,
            "budget_bytes": self.budget_bytes,
        }


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the device that holds the KV cache (a GPU for vLLM, RAM for llama.cpp on the CPU)."""

    budget_bytes: int
    weights_bytes: int
    kv_bytes_per_token: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int
    kv_capacity_tokens: int
    # The named parts (bytes) behind the totals, for the breakdown table and the benchmarks.
    parts: dict[str, int] = field(default_factory=dict)
    # Counts the arithmetic used (KV blocks, batch limits, padded n_ctx): not bytes.
    counts: dict[str, int] = field(default_factory=dict)
    # Every device that holds anything (empty: the engine did not break it down).
    devices: tuple[DeviceMemory, ...] = ()

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "budget_bytes": self.budget_bytes,
            "weights_bytes": self.weights_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_cache_bytes": self.kv_cache_bytes,
            "overhead_bytes": self.overhead_bytes,
            "total_bytes": self.total_bytes,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "parts": dict(self.parts),
            "counts": dict(self.counts),
        }
        if self.devices:
            out["devices"] = [d.to_dict() for d in self.devices]
        return out


def empty_estimate(weights_bytes: int) -> MemoryEstimate:
    """The estimate of a candidate that cannot run at all (nothing was computed beyond the weights)."""
    return MemoryEstimate(0, weights_bytes, 0, 0, 0, weights_bytes, 0)


# ----------------------------------------------------------------------------- decode speed


def decode_tokens_per_second(bandwidth_gbps: float, bytes_per_token: int, efficiency: float) -> float:
    """Memory-bound decode: every generated token reads the weights (and the live KV) once."""
    if bytes_per_token <= 0:
        return 0.0
    return bandwidth_gbps * 1e9 * efficiency / bytes_per_token
