"""vLLM's KV budget on one GPU for a candidate, by the rules of the vLLM release that will run it
(rules.py: every term per release, from vLLM's source, checked against public V1 start-ups; weights.py:
'Model loading took' per checkpoint format). This module maps a ModelSpec, an Artifact and a GPU onto those
rules and their result onto the planner's MemoryEstimate. Pure.

Which release: the one installed (the CLI reads its version from the package metadata, without importing
vLLM), else --vllm-version, else the release this project pins (PINNED_VERSION, the image render uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from qwen_deploy.engines.vllm import rules, weights
from qwen_deploy.engines.vllm.versions import VLLM_BLOCK_SIZE
from qwen_deploy.hardware.types import GPU
from qwen_deploy.memory import DeviceMemory, MemoryEstimate
from qwen_deploy.model.types import Artifact, ModelSpec

PINNED_VERSION = "0.33.0"  # pyproject's vllm extra and the vllm/vllm-openai image render writes


def geometry(model: ModelSpec) -> rules.Geometry:
    """The rules' view of the model: Qwen2 attention has q/k/v biases, Qwen3 per-head q/k norms."""
    arch = model.architecture
    return rules.Geometry(
        layers=model.layers,
        hidden=model.hidden_size,
        intermediate=model.intermediate_size,
        heads=model.attention_heads,
        kv_heads=model.kv_heads,
        head_dim=model.head_dim,
        vocab=model.vocab_size,
        max_position=model.max_context,
        tied_embeddings=model.tied_embeddings,
        qkv_bias=arch.startswith("Qwen2"),
        qk_norm=arch.startswith("Qwen3"),
        architecture=arch,
        moe="moe" in arch.lower(),
    )


# The profile's precisions and the checkpoint layout each stands for (artifact.quant_config overrides).
_PRECISION_FORMAT = {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8_tensor", "awq": "awq", "gptq": "gptq"}


def checkpoint_format(art: Artifact) -> tuple[str, dict[str, Any]]:
    """(format, options) of weights.loaded_weights_bytes for an artifact: from its quantization config when
    known (config.json's quantization_config, or the profile's copy of it), else from its precision."""
    if art.quant_config:
        return weights.checkpoint_format_from_config(art.quant_config)
    if art.quantization == "fp8" and art.precision in ("bf16", "fp16"):
        return "fp8_online", {}
    return _PRECISION_FORMAT.get(art.precision, art.precision), {}


def loaded_weights(version: str, model: ModelSpec, art: Artifact, tp: int) -> tuple[int, str]:
    """('Model loading took' bytes on one rank, how it was worked out)."""
    geo = geometry(model)
    if art.safetensors:
        online = art.quantization == "fp8" and not art.quant_config
        tensors = {name: (dtype, shape) for name, dtype, shape in art.safetensors}
        return weights.loaded_weights_from_safetensors(version, tensors, geo, tp, online_fp8=online), "headers"
    fmt, options = checkpoint_format(art)
    return weights.loaded_weights_bytes(version, geo, fmt, tp, **options), fmt


@dataclass(frozen=True)
class Sizing:
    """One candidate's KV sizing: the planner's estimate and the rules' full answer."""

    estimate: MemoryEstimate
    terms: dict[str, Any]
    safe_blocks: int  # KV blocks after the margin for uncertain terms: what contexts are planned from
    weights_how: str


def size(
    version: str,
    model: ModelSpec,
    art: Artifact,
    gpu: GPU,
    *,
    total: int,
    util: float,
    tp: int,
    kv_cache_dtype: str,
    n_gpus: int,
) -> Sizing:
    """vLLM's available KV on one GPU of the candidate (every GPU of a replica holds the same), per the rules
    of `version`."""
    weights_bytes, how = loaded_weights(version, model, art, tp)
    terms = rules.available_kv(
        version,
        geometry=geometry(model),
        weights_bytes=weights_bytes,
        gpu_total_bytes=total,
        gpu_name=gpu.name,
        max_model_len=model.max_context,
        gpu_memory_utilization=util,
        tp=tp,
        kv_cache_dtype=kv_cache_dtype,
        nvml_total_bytes=gpu.memory_total_bytes,
        quantized=art.precision not in ("bf16", "fp16"),
        capability=gpu.cc,
    )
    per_token = int(terms["kv_bytes_per_token"])
    block_bytes = VLLM_BLOCK_SIZE * per_token
    blocks = int(terms["kv_blocks"])
    safe_blocks = max(0, int(terms["available_kv_safe"])) // block_bytes
    overhead = int(terms["activation_peak"]) + int(terms["non_torch"]) + int(terms["persistent"])
    overhead += int(terms["cuda_graph_deducted"])
    kv_cache = blocks * block_bytes
    other = int(terms["non_torch"]) + int(terms["persistent"]) + int(terms["cuda_graph_deducted"])
    devices = tuple(
        DeviceMemory(
            name=f"CUDA{i}",
            model_bytes=weights_bytes,
            kv_bytes=kv_cache,
            compute_bytes=int(terms["activation_peak"]),
            other_bytes=other,
            budget_bytes=int(terms["requested"]),
        )
        for i in range(n_gpus)
    )
    estimate = MemoryEstimate(
        budget_bytes=int(terms["requested"]),
        weights_bytes=weights_bytes,
        kv_bytes_per_token=per_token,
        kv_cache_bytes=kv_cache,
        overhead_bytes=overhead,
        total_bytes=weights_bytes + overhead + kv_cache,
        kv_capacity_tokens=int(terms["kv_tokens"]),
        parts={
            "available_kv_bytes": int(terms["available_kv"]),
            "activation_peak_bytes": int(terms["activation_peak"]),
            "non_torch_bytes": int(terms["non_torch"]),
            "persistent_buffers_bytes": int(terms["persistent"]),
            "cuda_graph_bytes": int(terms["cuda_graph_deducted"]),
            "cuda_graph_estimate_bytes": int(terms["cuda_graph_estimate"]),
            "margin_bytes": int(terms["margin_bytes"]),
            "warmup_headroom_bytes": int(terms["warmup_headroom"]),
        },
        counts={
            "max_num_batched_tokens": int(terms["max_num_batched_tokens"]),
            "max_num_seqs": int(terms["max_num_seqs"]),
            "kv_blocks": blocks,
            "safe_kv_blocks": safe_blocks,
        },
        devices=devices,
    )
    return Sizing(estimate=estimate, terms=terms, safe_blocks=safe_blocks, weights_how=how)


def warmup_utilization(terms: dict[str, Any], total: int) -> float:
    """The largest utilization (two decimals) that leaves the warm-up reserve beside the budget: after the KV
    cache is allocated, vLLM captures CUDA graphs (before 0.20 outside the budget) and warms the sampler up,
    next to its CUDA context and what other processes hold (rules.available_kv warmup_headroom)."""
    need = total - int(terms["requested"]) - int(terms["warmup_headroom"])  # context + post-KV needs
    room = total - need - int(terms["warmup_reserve"])
    return math.floor(room / total * 100) / 100 if total > 0 else 0.0


def vllm_concurrency(kv_capacity_tokens: int, context: int) -> float:
    """vLLM's 'Maximum concurrency for M tokens per request': blocks / ceil(M / block_size)."""
    if context <= 0:
        return 0.0
    return (kv_capacity_tokens // VLLM_BLOCK_SIZE) / -(-context // VLLM_BLOCK_SIZE)
