"""vLLM's KV budget on one GPU, as its V1 engine computes it at start-up
(v1/worker/gpu_worker.determine_available_memory, v1/core/kv_cache_utils).

Pure. Sources read (2026-11): vLLM 0.33.0 wheel (commit g4ba787ec9). Log figures:
shared/calibration/public_engine_logs.yaml.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qwen_deploy.memory import MemoryEstimate, kv_bytes_per_token
from qwen_deploy.units import GiB

# ----------------------------------------------------------------------------- vLLM

# vLLM 0.33.0 defaults (research notes, quoted from the wheel):
VLLM_GPU_MEMORY_UTILIZATION = 0.92  # config/cache.py:215 Field(default=0.92); 0.9 before
VLLM_BLOCK_SIZE = 16  # config/cache.py:185 DEFAULT_BLOCK_SIZE


def vllm_batch_defaults(gpu_total_bytes: int, gpu_name: str) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that `vllm serve` picks (engine/arg_utils.py get_batch_defaults).

    >= 160 GiB: 16384/1024; >= 70 GiB and not an A100: 8192/1024; otherwise 2048/256. The memory is
    NVML's total (current_platform.get_device_total_memory).
    """
    if gpu_total_bytes >= 160 * GiB:
        return 16384, 1024
    if gpu_total_bytes >= 70 * GiB and "a100" not in gpu_name.lower():
        return 8192, 1024
    return 2048, 256


def vllm_cudagraph_count(max_num_seqs: int, max_num_batched_tokens: int) -> int:
    """CUDA graphs vLLM captures by default: PIECEWISE for every capture size, FULL for decode sizes.

    Capture sizes (config/vllm.py _set_cudagraph_sizes): [1, 2, 4] + 8..<256 step 8 + 256..max step 16,
    with max = min(2 × max_num_seqs, 512, max_num_batched_tokens); FULL decode graphs for sizes up to
    max_num_seqs (FULL_AND_PIECEWISE is the default mode). S=256 gives 51 + 35, as a public 0.2x log shows
    ('Profiling CUDA graph memory: PIECEWISE=51, FULL=35').
    """
    largest = min(2 * max_num_seqs, 512, max_num_batched_tokens)
    sizes = [s for s in [1, 2, 4, *range(8, 256, 8), *range(256, largest + 1, 16)] if s <= largest]
    return len(sizes) + sum(1 for s in sizes if s <= max_num_seqs)


# Estimated CUDA graph memory per captured graph. vLLM (>= 0.21, VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1
# by default) captures two graphs per mode and extrapolates linearly, then subtracts the estimate from
# the KV budget. Public log: 'PIECEWISE=51, FULL=35' -> 'Estimated CUDA graph memory: 1.58 GiB total'
# (18.8 MiB per graph). An assumption until measured on our own GPU runs; see BENCHMARKS.md.
VLLM_CUDAGRAPH_BYTES_PER_GRAPH = int(1.58 * GiB / 86)

# Memory vLLM keeps besides the weights after loading and profiling ('total_consumed' minus weights):
# non-torch growth (cuBLAS workspaces) and persistent buffers. V0 logs print non_torch_memory 0.25-0.35 GiB
# (calibration vllm-01, -04, -05); we take 0.25 GiB plus the Triton top-k/top-p buffer the sampler keeps,
# num_SM × vocab × 4 B (v1/sample/ops/topk_topp_sampler.py), at 132 SMs (H100; smaller GPUs have fewer).
VLLM_NON_TORCH_BYTES = int(0.25 * GiB)
VLLM_SAMPLER_SM_COUNT = 132

# 'Model loading took X GiB' exceeds the checkpoint's tensors by the rotary cos/sin cache
# (max_position × rotary_dim in the model dtype) and allocator rounding: Qwen3-4B-Instruct-2507 logs
# 7.6065 GiB (calibration vllm-13) and 7.61 GiB (vllm-15) for 7.4925 GiB of tensors; rope cache 0.0625 GiB,
# the remaining 0.05 GiB we carry as a constant.
VLLM_LOAD_SLACK_BYTES = int(0.05 * GiB)


def vllm_loaded_weights(checkpoint_bytes: int, tp: int, max_position: int, head_dim: int) -> int:
    """Bytes 'Model loading took' reports per rank: sharded tensors + rope cache + slack."""
    return math.ceil(checkpoint_bytes / tp) + max_position * head_dim * 2 + VLLM_LOAD_SLACK_BYTES


# V0's sampler kept sorted values and indices, probabilities and log-probabilities: about 39 bytes per
# logit (calibration vllm-03: 1.42 GiB activation peak = 256 sequences × 152,064 vocab × 39.2 B).
VLLM_V0_SAMPLER_BYTES_PER_LOGIT = 39


def vllm_activation_peak(
    tokens: int,
    seqs: int,
    hidden: int,
    intermediate: int,
    vocab: int,
    tp: int = 1,
    dtype_bytes: int = 2,
    sampler_bytes_per_logit: int | None = None,
) -> int:
    """Transient torch peak of vLLM's profile run (V1: a dummy forward of max_num_batched_tokens tokens,
    then the sampler on min(tokens, max_num_seqs) rows).

    Forward (eager upper bound; gate_up still live while act and down are allocated, plus input and
    residual): T × (3·i/tp + 3·h) × 2 B — reproduces V0's 2.07 GiB / 2.99 GiB (calibration vllm-01/02).
    Sampler (v1/sample/sampler.py): bf16 logits + fp32 copy + fp32 probs + fp32 noise = 14 B per logit,
    on top of the retained hidden states T × h × 2 B.
    """
    rows = min(tokens, seqs)
    forward = tokens * (3 * intermediate // tp + 3 * hidden) * dtype_bytes
    per_logit = sampler_bytes_per_logit or (12 + dtype_bytes)
    sampler = tokens * hidden * dtype_bytes + per_logit * rows * vocab
    return max(forward, sampler)


@dataclass(frozen=True)
class VllmConfig:
    gpu_total_bytes: int  # CUDA-visible total of one GPU (torch.cuda.mem_get_info)
    gpu_name: str
    gpu_memory_utilization: float
    tp: int = 1
    kv_cache_dtype: str = "auto"
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    nvml_total_bytes: int | None = None  # for the batch-size defaults; defaults to gpu_total_bytes
    legacy_v0_max_model_len: int | None = None  # model V0's profile run (calibration of old logs only)


def vllm_memory(
    *,
    layers: int,
    kv_heads: int,
    head_dim: int,
    hidden: int,
    intermediate: int,
    vocab: int,
    max_position: int,
    checkpoint_bytes: int,
    config: VllmConfig,
    value_head_dim: int | None = None,
    weights_override_bytes: int | None = None,
) -> MemoryEstimate:
    """vLLM V1's KV cache on one GPU (gpu_worker.determine_available_memory, kv_cache_planning):

    requested = ceil(total × gpu_memory_utilization)
    available = requested − weights − non-torch/persistent − activation peak − CUDA-graph estimate
    blocks    = available // (block_size × kv_bytes_per_token); tokens = blocks × block_size
    """
    nvml_total = config.nvml_total_bytes or config.gpu_total_bytes
    default_tokens, default_seqs = vllm_batch_defaults(nvml_total, config.gpu_name)
    batched = config.max_num_batched_tokens or default_tokens
    seqs = config.max_num_seqs or default_seqs
    budget = math.ceil(config.gpu_total_bytes * config.gpu_memory_utilization)
    weights = (
        weights_override_bytes
        if weights_override_bytes is not None
        else vllm_loaded_weights(checkpoint_bytes, config.tp, max_position, head_dim)
    )
    legacy = config.legacy_v0_max_model_len is not None
    if legacy and config.legacy_v0_max_model_len <= 32768:
        # V0 profiled one forward of max(max_model_len, max_num_batched_tokens) tokens: it turned chunked
        # prefill on by default only above 32K tokens. It also sampled with its heavier sampler, kept no
        # Triton sampler buffer and had no CUDA-graph term.
        batched = max(config.legacy_v0_max_model_len, batched)
    activation = vllm_activation_peak(
        batched,
        seqs,
        hidden,
        intermediate,
        vocab,
        config.tp,
        sampler_bytes_per_logit=VLLM_V0_SAMPLER_BYTES_PER_LOGIT if legacy else None,
    )
    non_torch = VLLM_NON_TORCH_BYTES + (0 if legacy else VLLM_SAMPLER_SM_COUNT * vocab * 4)
    graphs = 0
    if not legacy:
        graphs = vllm_cudagraph_count(seqs, batched) * VLLM_CUDAGRAPH_BYTES_PER_GRAPH
    kv_per_token = kv_bytes_per_token(layers, kv_heads, head_dim, config.kv_cache_dtype, config.tp, value_head_dim)
    available = budget - weights - non_torch - activation - graphs
    block_bytes = VLLM_BLOCK_SIZE * kv_per_token
    blocks = max(0, available) // block_bytes
    tokens = blocks * VLLM_BLOCK_SIZE
    kv_cache = blocks * block_bytes
    overhead = non_torch + activation + graphs
    return MemoryEstimate(
        budget_bytes=budget,
        weights_bytes=weights,
        kv_bytes_per_token=kv_per_token,
        kv_cache_bytes=kv_cache,
        overhead_bytes=overhead,
        total_bytes=weights + overhead + kv_cache,
        kv_capacity_tokens=tokens,
        parts={
            "available_kv_bytes": available,
            "activation_peak_bytes": activation,
            "non_torch_bytes": non_torch,
            "cuda_graph_bytes": graphs,
        },
        counts={"max_num_batched_tokens": batched, "max_num_seqs": seqs, "kv_blocks": blocks},
    )


def vllm_blocks_per_request(context: int) -> int:
    return -(-context // VLLM_BLOCK_SIZE)


def vllm_concurrency(kv_capacity_tokens: int, context: int) -> float:
    """vLLM's 'Maximum concurrency for M tokens per request': blocks / ceil(M / block_size)."""
    if context <= 0:
        return 0.0
    return (kv_capacity_tokens // VLLM_BLOCK_SIZE) / vllm_blocks_per_request(context)
