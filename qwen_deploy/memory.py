"""Pure memory arithmetic for vLLM and llama.cpp: weights, KV per token, engine overheads, capacity.

No I/O, no environment, nothing heavy imported. Every constant that comes from an engine's source or
log carries its source; the tests recompute the results by hand (tests/test_memory.py).

Sources read (2026-11): vLLM 0.33.0 wheel (commit g4ba787ec9); llama.cpp as vendored in
llama-cpp-python 0.3.36. Log figures: shared/calibration/public_engine_logs.yaml and our own runs of the
llama-cpp-python server (bench/accuracy_llamacpp.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qwen_deploy.units import GiB, MiB

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
class MemoryEstimate:
    """Bytes on the device that holds the KV cache (a GPU for vLLM, RAM for llama.cpp)."""

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

    def to_dict(self) -> dict[str, object]:
        return {
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


# ----------------------------------------------------------------------------- llama.cpp

# llama.cpp pads n_ctx up to a multiple of 256 (observed: n_ctx 5000 -> 'n_ctx = 5120' with
# llama-cpp-python 0.3.36; llama-context.cpp pads n_ctx to the KV cache's padding).
LLAMACPP_CTX_PAD = 256

# Resident memory of `python -m llama_cpp.server` before any model buffer: the interpreter, uvicorn,
# fastapi, pydantic and libllama/libggml (measured here: bench/accuracy_llamacpp.py prints it).
LLAMACPP_PROCESS_BYTES = 160 * MiB

# A BPE tokenizer's merges live in llama.cpp's vocabulary as a map of string pairs to ranks: 218 B each
# (measured: two GGUFs that differ only in 2 vs 151,387 merges, the count of every Qwen2/Qwen3 GGUF, peak
# 795.6 vs 827.1 MiB RSS under the same load: 31.5 MiB / 151,385). SentencePiece vocabularies have none.
LLAMACPP_BYTES_PER_MERGE = 218


def pad_context(n_ctx: int, pad: int = LLAMACPP_CTX_PAD) -> int:
    return -(-n_ctx // pad) * pad


def llamacpp_kv_bytes(
    n_ctx: int,
    *,
    full_layers: int,
    swa_layers: int,
    kv_heads: int,
    head_dim: int,
    type_k: str,
    type_v: str,
    n_swa: int | None = None,
    swa_full: bool = True,
    n_seq: int = 1,
    n_ubatch: int = 512,
    value_head_dim: int | None = None,
) -> tuple[int, int]:
    """(KV bytes, padded n_ctx) llama.cpp allocates: per layer n_embd_k_gqa × cells × row bytes of K, same for V.

    Sliding-window layers get every cell when swa_full (llama-cpp-python's Llama() creates the iSWA cache
    'using full-size SWA cache'), else pad(n_swa × n_seq + n_ubatch) cells (llama-kv-cache-iswa.cpp).
    """
    cells = pad_context(n_ctx)
    v_dim = head_dim if value_head_dim is None else value_head_dim
    per_cell = kv_row_bytes(kv_heads * head_dim, type_k) + kv_row_bytes(kv_heads * v_dim, type_v)
    swa_cells = cells
    if swa_layers and not swa_full and n_swa:
        swa_cells = min(cells, pad_context(n_swa * n_seq + n_ubatch))
    return per_cell * (full_layers * cells + swa_layers * swa_cells), cells


def llamacpp_compute_bytes(
    n_ctx: int,
    *,
    n_ubatch: int,
    n_vocab: int,
    n_embd: int,
    n_ff: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    flash_attn: bool,
) -> int:
    """The CPU compute buffer ('sched_reserve: CPU compute buffer size'): the peak of the worst-case graph
    (n_tokens = n_outputs = U = n_ubatch, n_kv = the padded n_ctx; llama_context::sched_reserve).

    ggml's allocator reuses memory, so the buffer is the largest of three stages (E n_embd, H heads of
    D, F n_ff, V vocab; 4-byte floats):
      mask       n_kv·U·2 with flash attention (f16), n_kv·U·4 without (f32); live through every layer
      attention  mask + (no flash attention: the f32 KQ scores n_kv·U·H·4) + (3E + 2·H·D + 2·Hkv·D)·U·4
      MLP        mask + (3F + 4E)·U·4
      output     (V + 2E)·U·4   (logits for U outputs; this build always adds the out_ids get_rows copy)
    Fitted to the engine's own reservation over 11 real model shapes, n_ctx 512-32768, U 256-1024, flash
    attention on and off: 76 of 80 within 0.05 MiB, the rest up to 9% above (allocator fragmentation).
    """
    u = n_ubatch
    mask = n_ctx * u * (2 if flash_attn else 4)
    kq = 0 if flash_attn else n_ctx * u * n_head * 4
    attention = mask + kq + (3 * n_embd + 2 * n_head * head_dim + 2 * n_head_kv * head_dim) * u * 4
    mlp = mask + (3 * n_ff + 4 * n_embd) * u * 4
    output = (n_vocab + 2 * n_embd) * u * 4
    return max(attention, mlp, output)


def llamacpp_work_bytes(n_ctx: int, *, n_ubatch: int, n_head: int, flash_attn: bool) -> int:
    """The CPU backend's unlogged work buffer (ggml_graph_plan): without flash attention the f16 copy of
    the KQ scores for kqv = mul_mat(v, kq), n_kv·U·H·2; with it only small per-thread tiles."""
    return 0 if flash_attn else n_ctx * n_ubatch * n_head * 2


def llamacpp_output_bytes(n_vocab: int, n_seq: int = 1) -> int:
    """'CPU output buffer size': logits of one output per sequence, f32 (logits_all off)."""
    return 4 * n_vocab * n_seq


@dataclass(frozen=True)
class LlamacppConfig:
    n_ctx: int
    type_k: str = "f16"
    type_v: str = "f16"
    n_ubatch: int = 512
    flash_attn: bool = True
    n_seq: int = 1
    swa_full: bool = True
    use_mmap: bool = True


def llamacpp_memory(
    *,
    layers: int,
    swa_layers: int,
    kv_heads: int,
    head_dim: int,
    n_head: int,
    n_embd: int,
    n_ff: int,
    n_vocab: int,
    weights_bytes: int,
    budget_bytes: int,
    config: LlamacppConfig,
    repacked_bytes: int = 0,
    repacked_source_bytes: int = 0,
    n_swa: int | None = None,
    value_head_dim: int | None = None,
    tokenizer_merges: int = 0,
) -> MemoryEstimate:
    """RAM the llama-cpp-python server takes at n_ctx: model buffers, KV, compute/output buffers, process
    (and the tokenizer's BPE merges).

    Model buffers: with mmap the whole tensor data stays mapped and resident once read ('CPU_Mapped'), and
    CPUs with repack kernels add a repacked copy of some matrices ('CPU_REPACK'); without mmap the file is
    read into anonymous buffers and repacked tensors exist once ('CPU' + 'CPU_REPACK'). The planner turns
    mmap off whenever something is repacked, so weights are never held twice.

    The compute buffer is reserved for U outputs, but with logits_all off each ubatch asks for one, so the
    logits rows are never touched: the total counts the resident part (compute_resident_bytes).
    """
    if config.type_v != "f16" and not config.flash_attn:
        raise ValueError("a quantized V cache needs flash attention in llama.cpp")
    kv, cells = llamacpp_kv_bytes(
        config.n_ctx,
        full_layers=layers - swa_layers,
        swa_layers=swa_layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        type_k=config.type_k,
        type_v=config.type_v,
        n_swa=n_swa,
        swa_full=config.swa_full,
        n_seq=config.n_seq,
        n_ubatch=config.n_ubatch,
        value_head_dim=value_head_dim,
    )
    shape = {"n_ubatch": config.n_ubatch, "n_embd": n_embd, "n_ff": n_ff, "n_head": n_head, "n_head_kv": kv_heads}
    compute = llamacpp_compute_bytes(cells, n_vocab=n_vocab, head_dim=head_dim, flash_attn=config.flash_attn, **shape)
    # one output row per ubatch: the logits stage shrinks from (V + 2E)·U·4 to (V + 2E·U)·4
    resident = min(
        compute,
        max(
            llamacpp_compute_bytes(cells, n_vocab=0, head_dim=head_dim, flash_attn=config.flash_attn, **shape),
            4 * (n_vocab + 2 * n_embd * config.n_ubatch),
        ),
    )
    work = llamacpp_work_bytes(cells, n_ubatch=config.n_ubatch, n_head=n_head, flash_attn=config.flash_attn)
    output = llamacpp_output_bytes(n_vocab, config.n_seq)
    model = weights_bytes + repacked_bytes - (0 if config.use_mmap else repacked_source_bytes)
    tokenizer = tokenizer_merges * LLAMACPP_BYTES_PER_MERGE
    overhead = resident + work + output + LLAMACPP_PROCESS_BYTES + tokenizer
    return MemoryEstimate(
        budget_bytes=budget_bytes,
        weights_bytes=model,
        kv_bytes_per_token=kv // cells,
        kv_cache_bytes=kv,
        overhead_bytes=overhead,
        total_bytes=model + kv + overhead,
        kv_capacity_tokens=cells,
        counts={"n_ctx_padded": cells},
        parts={
            "repacked_weights_bytes": repacked_bytes,
            "compute_buffer_bytes": compute,
            "compute_resident_bytes": resident,
            "work_buffer_bytes": work,
            "output_buffer_bytes": output,
            "process_bytes": LLAMACPP_PROCESS_BYTES,
            "tokenizer_merges_bytes": tokenizer,
        },
    )


def llamacpp_max_context(fits, limit: int, minimum: int = LLAMACPP_CTX_PAD) -> int:
    """Largest multiple of 256 in [minimum, limit] for which fits(n_ctx) holds (memory grows with n_ctx),
    or 0 when even `minimum` does not fit."""
    lo, hi = -(-minimum // LLAMACPP_CTX_PAD), limit // LLAMACPP_CTX_PAD
    if hi < lo or not fits(lo * LLAMACPP_CTX_PAD):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * LLAMACPP_CTX_PAD):
            lo = mid
        else:
            hi = mid - 1
    return lo * LLAMACPP_CTX_PAD


# ----------------------------------------------------------------------------- decode speed


def decode_tokens_per_second(bandwidth_gbps: float, bytes_per_token: int, efficiency: float) -> float:
    """Memory-bound decode: every generated token reads the weights (and the live KV) once."""
    if bytes_per_token <= 0:
        return 0.0
    return bandwidth_gbps * 1e9 * efficiency / bytes_per_token


# ----------------------------------------------------------------------------- llama.cpp repacked weights

# Bytes per block and elements per block of the ggml weight types the CPU extra buffers handle.
_GGML_WEIGHT_BLOCKS = {
    "Q4_0": (18, 32),
    "Q4_1": (20, 32),
    "Q5_0": (22, 32),
    "Q5_1": (24, 32),
    "Q8_0": (34, 32),
    "Q2_K": (84, 256),
    "Q3_K": (110, 256),
    "Q4_K": (144, 256),
    "Q5_K": (176, 256),
    "Q6_K": (210, 256),
    "IQ4_XS": (136, 256),
    "IQ4_NL": (18, 32),
    "F16": (2, 1),
    "BF16": (2, 1),
    "F32": (4, 1),
}

# AMX (ggml-cpu/amx/common.h qtype_has_amx_kernels, amx.cpp supports_op): these types, plus F16 copied
# unpacked; K (ne0) a multiple of 32 (legacy quants) / 256 (K-quants) / 16 (F16), N (ne1) of 32.
_AMX_ALIGN = {"Q4_0": 32, "Q4_1": 32, "Q8_0": 32, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ4_XS": 256, "F16": 16}


def _amx_bytes(type_name: str, ne0: int, ne1: int) -> int:
    """ggml_backend_amx_get_alloc_size: N rows of get_row_size<type>(K) (VNNI packing adds per-block
    compensation for q8_0, 4 B per block for q4_K/q5_K, 2 B for iq4_xs); F16 is copied as is."""
    block_bytes, block = _GGML_WEIGHT_BLOCKS[type_name]
    if type_name == "F16":
        return ne0 * ne1 * 2
    kb = ne0 // block
    row = kb * block_bytes
    if type_name in ("Q8_0", "Q4_K", "Q5_K"):
        row += kb * 4
    if type_name == "IQ4_XS":
        row += kb * 2
    return ne1 * row


def _repack_supported(type_name: str, ne1: int, flags: frozenset[str]) -> bool:
    """ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type (x86 and arm64 branches)."""
    avx2 = "avx2" in flags
    avx512 = "avx512f" in flags
    neon = "neon" in flags or "asimd" in flags
    dotprod = neon and ("asimddp" in flags or "dotprod" in flags)
    i8mm = neon and "i8mm" in flags
    if type_name == "Q4_0":
        return (avx2 and ne1 % 8 == 0) or ((i8mm or dotprod) and ne1 % 4 == 0)
    if type_name == "Q4_K":
        return (avx2 or i8mm or dotprod) and ne1 % 8 == 0
    if type_name == "Q2_K":
        return avx512 and ne1 % 8 == 0
    if type_name in ("Q5_K", "Q6_K"):
        return (i8mm or dotprod) and ne1 % 8 == 0
    if type_name == "IQ4_NL":
        return (avx2 and ne1 % 8 == 0) or (dotprod and ne1 % 4 == 0)
    if type_name == "Q8_0":
        return (i8mm or dotprod) and ne1 % 4 == 0
    return False


def llamacpp_repack(
    tensors: tuple[tuple[str, str, int, int, int], ...], cpu_flags: tuple[str, ...], amx: bool = False
) -> tuple[int, int]:
    """(bytes of the tensors llama.cpp repacks, bytes of the 'AMX' / 'CPU_REPACK' buffers holding the copies).

    Every matrix a MUL_MAT reads goes to the first extra buffer type that takes it (AMX, then REPACK):
    the 2-D weights, and token_embd too when there is no separate output.weight (tied embeddings). Checked
    against the engine's own 'AMX model buffer size' lines (tests/test_engine_llamacpp.py).

    AMX is a compile-time choice (a native build on a Sapphire Rapids or newer Xeon); that build segfaults
    on quantized weights (ggml-org/llama.cpp#20824), so qwen-deploy installs the portable AVX2 build and
    plans without AMX unless told otherwise.
    """
    flags = frozenset(cpu_flags)
    names = {t[0] for t in tensors}
    amx = amx and "amx_int8" in flags
    source = total = 0
    for name, type_name, ne0, ne1, nbytes in tensors:
        if ne1 <= 1 or type_name not in _GGML_WEIGHT_BLOCKS:
            continue
        if name == "token_embd.weight" and "output.weight" in names:
            continue  # only read by GET_ROWS, which stays on the plain CPU buffer
        if amx and type_name in _AMX_ALIGN and ne0 % _AMX_ALIGN[type_name] == 0 and ne1 % 32 == 0:
            source, total = source + nbytes, total + _amx_bytes(type_name, ne0, ne1)
        elif _repack_supported(type_name, ne1, flags):
            source, total = source + nbytes, total + nbytes
    return source, total


# Main ggml type of each GGUF precision, for estimating tensors when only a profile (no file) is known.
# Q*_K_M files mix in some Q6_K (attn_v, ffn_down on some layers); the estimate uses the main type.
GGUF_MAIN_TYPE = {
    "q4_k_m": "Q4_K",
    "q5_k_m": "Q5_K",
    "q6_k": "Q6_K",
    "q8_0": "Q8_0",
    "q4_0": "Q4_0",
    "f16": "F16",
    "bf16": "BF16",
}


def estimate_gguf_tensors(
    *,
    layers: int,
    hidden: int,
    intermediate: int,
    attention_heads: int,
    kv_heads: int,
    head_dim: int,
    vocab: int,
    tied: bool,
    precision: str,
    file_bytes: int,
) -> tuple[tuple[str, str, int, int, int], ...]:
    """The matrices of a dense GQA decoder in `precision`, scaled so they add up to the file's size."""
    type_name = GGUF_MAIN_TYPE.get(precision, "Q4_K")
    q, kv = attention_heads * head_dim, kv_heads * head_dim
    shapes = [("token_embd.weight", hidden, vocab)]
    if not tied:
        shapes.append(("output.weight", hidden, vocab))
    for i in range(layers):
        p = f"blk.{i}."
        shapes += [
            (p + "attn_q.weight", hidden, q),
            (p + "attn_k.weight", hidden, kv),
            (p + "attn_v.weight", hidden, kv),
            (p + "attn_output.weight", q, hidden),
            (p + "ffn_gate.weight", hidden, intermediate),
            (p + "ffn_up.weight", hidden, intermediate),
            (p + "ffn_down.weight", intermediate, hidden),
        ]
    block_bytes, block = _GGML_WEIGHT_BLOCKS[type_name]
    raw = [(n, ne0, ne1, ne0 * ne1 * block_bytes // block) for n, ne0, ne1 in shapes]
    scale = file_bytes / max(1, sum(r[3] for r in raw))
    return tuple((n, type_name, ne0, ne1, int(b * scale)) for n, ne0, ne1, b in raw)
