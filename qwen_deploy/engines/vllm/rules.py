"""Version-aware vLLM V1 memory rules: predict the start-up line "Available KV cache memory: X GiB".

Pure Python, stdlib only, no I/O, no environment reads. One entry point, `available_kv()`, with helpers
`parse_version`, `defaults`, `activation_peak_bytes`, `cudagraph_estimate_bytes`; the weights
('Model loading took') are in weights.py.

Every rule cites vLLM's own source as shipped in the PyPI wheel of each release (file @ version, function).
The wheels were read for 0.9.2, 0.10.0, 0.10.1.1, 0.10.2, 0.11.0, 0.11.1, 0.11.2, 0.12.0, 0.13.0, 0.14.1,
0.15.1, 0.16.0, 0.17.0, 0.17.1, 0.18.0, 0.19.0, 0.19.1, 0.20.0, 0.21.0, 0.22.0, 0.23.0, 0.24.0, 0.25.0,
0.26.0, 0.27.0, 0.27.1, 0.28.0, 0.29.0, 0.30.0, 0.31.0, 0.32.0 and 0.33.0 (see NOTES.md). Where a term
could not be derived from source alone it is a *fitted* constant: each such constant is marked FIT with
the records it came from; `margin_bytes` carries the uncertainty we could not remove.

What vLLM computes (vllm/v1/worker/gpu_worker.py @ every release, Worker.determine_available_memory):

    requested = ceil(total × gpu_memory_utilization)                   (v1/worker/utils.py request_memory)
    < 0.27:  available = requested − (weights + torch_peak_increase + non_torch_increase) − cg_applied
    ≥ 0.27:  available = requested − (total_consumed + transient_peak_headroom)              − cg_applied
             (vllm/utils/mem_utils.py @0.27.0 memory_profiling: total_consumed = init free − free after the
              profile run, i.e. weights + every persistent buffer + non-torch growth)
    cg_applied = "Estimated CUDA graph memory" when VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS is on
                 (estimate exists from 0.18.0, default on from 0.20.0: vllm/envs.py @0.18.0 "0", @0.20.0 "1")
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qwen_deploy.engines.vllm.defaults import cudagraph_capture_sizes, defaults, gpu_facts  # noqa: F401
from qwen_deploy.engines.vllm.versions import (  # noqa: F401 (re-exported)
    RULES_MAX,
    RULES_MIN,
    GiB,
    MiB,
    NotModelled,
    _v,
    modelled,
    parse_version,
)

# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """Decoder geometry from config.json (dense GQA transformer)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_position: int
    tied_embeddings: bool
    qkv_bias: bool = False  # Qwen2 / Qwen2.5 attention has q/k/v biases
    qk_norm: bool = False  # Qwen3 has per-head q_norm / k_norm weights
    rotary_dim: int | None = None  # None: head_dim (partial rotary models set it)
    architecture: str = "LlamaForCausalLM"
    moe: bool = False


def kv_bytes_per_token(g: Geometry, tp: int = 1, kv_cache_dtype: str = "auto", dtype_bytes: int = 2) -> int:
    """K+V bytes of one token on one TP rank: 2 × layers × max(1, kv_heads // tp) × head_dim × elem.

    vllm/config/model.py get_num_kv_heads (@0.19.0): max(1, total_num_kv_heads // tp); FullAttentionSpec
    page_size_bytes = 2 × block_size × num_kv_heads × head_size × dtype_size (v1/kv_cache_interface.py).
    """
    elem = 1 if kv_cache_dtype.startswith("fp8") else dtype_bytes
    return 2 * g.layers * max(1, g.kv_heads // tp) * g.head_dim * elem


# ----------------------------------------------------------------------------- profile-run terms


# PyTorch cuBLAS workspace, allocated through the caching allocator at the first matmul of the profile run
# (aten/src/ATen/cuda/CublasHandlePool.cpp getChosenWorkspaceSize): 32 MiB on cc >= 9.0 (":4096:8"),
# else ":4096:2:16:8" = 8.125 MiB. Checked: it is the 0.03 GiB left over on H100 after the sampler terms
# (v1-010..v1-022, all within 0.01 GiB).
def _cublas_workspace(cc: tuple[int, int]) -> int:
    return 32 * MiB if cc >= (9, 0) else 8 * MiB + 128 * 1024


def _sampler_bytes_per_logit(sampler: str, rows: int) -> tuple[float, float]:
    """(bytes per logit at the peak of the dummy sampler run, uncertainty) for `rows` x vocab logits.

    All paths hold the model-dtype logits (2 B) from compute_logits plus the fp32 copy (4 B)
    (v1/sample/sampler.py Sampler.forward: logits.to(torch.float32)).
      triton      0.17-0.20: in-place Triton top-k/top-p, then probs = softmax fp32 (4) and q = empty_like
                  (4) in random_sample -> 14 B (+ the SM-sized buffer, separately). Fewer than 8 rows fall back
                  to the sort path (apply_top_k_top_p: 'logits.shape[0] >= 8').
      flashinfer  flashinfer.sampling.top_k_top_p_sampling_from_logits: top_k_mask_logits (4) then softmax
                  (4) -> 14 B.
      sort        0.11.1-0.16 logits.sort(): values fp32 (4) + indices int64 (8); PyTorch's CUDA sort of
                  >= 128 rows goes through cub segmented radix sort, which adds an int64 index input (8) and
                  cub's alternate key/value buffers (4 + 8) -> 2+4+4+8+8+12 = 38 B. Fitted check: 5.64 GiB
                  for Qwen3-14B at 1024 rows on 0.16 (v1-020) = 38.0 B/logit after the other terms. Rows in
                  [2, 128) use the full-sort path (pairs of int2 + key copy): ~50 B; one row: 28 B.
      mrv2        Model Runner V2 0.22-0.32 (v1/worker/gpu/model_runner.py _dummy_sampler_run: default
                  request states, 'the sampler may skip top_k, top_p, and logprobs'): fp32 copy + in-kernel
                  Gumbel sampling -> 6 B. Not checked against a printed activation line.
      mrv2_warmup 0.33 MRV2 adds a second pass with SamplingParams.for_sampler_warmup() (top-k/p, min_p,
                  penalties, logprobs=5): fp32 copy 4 + FlashInfer mask 4 + probs 4 + fp32 logprobs 4
                  -> 18 B, +6 B uncertainty (watermark/penalty temporaries not traced).
    """
    if sampler == "triton" and rows < 8:
        sampler = "sort_small"
    if sampler == "sort":
        if rows >= 128:
            return 38.0, 2.0
        return (50.0, 4.0) if rows > 1 else (28.0, 4.0)
    if sampler == "sort_small":
        return (24.0, 4.0) if rows > 1 else (18.0, 4.0)
    if sampler in ("triton", "flashinfer"):
        return 14.0, 1.0
    if sampler == "mrv2":
        return 6.0, 8.0
    if sampler == "mrv2_warmup":
        return 18.0, 6.0
    raise ValueError(sampler)


def activation_peak_bytes(
    version: str | tuple[int, int, int],
    g: Geometry,
    *,
    tokens: int,
    seqs: int,
    tp: int,
    sm_count: int,
    capability: tuple[int, int],
    sampler: str,
    dtype_bytes: int = 2,
) -> tuple[int, int, dict[str, int]]:
    """torch 'allocated_bytes.all.peak' increase over the profile run (profile_run: _dummy_run of
    max_num_batched_tokens tokens, then _dummy_sampler_run on min(tokens, max_num_seqs) rows), plus what the
    run allocates and keeps (Triton buffer cache, cuBLAS workspace). Returns (bytes, uncertainty, parts)."""
    rows = min(tokens, seqs)  # _dummy_run: num_reqs = min(num_tokens, max_num_reqs); logits at the last token
    h = g.hidden
    # Forward of the profile batch: in the MLP the gate_up output (2i/tp) and the SiluAndMul output (i/tp)
    # are live together with the residual stream, the normed input and the layer output (~4h); one more h
    # for the all-reduce output under TP. 4h (not 3h) from the held-out v0.19.0 H100 sweep, where the
    # forward dominates: CodeLlama-7b 0.77 GiB and granite-3.1-8b 0.85 GiB torch peak imply 3.75-3.8 h.
    forward = tokens * (3 * g.intermediate // tp + (4 + (1 if tp > 1 else 0)) * h) * dtype_bytes
    per_logit, per_logit_unc = _sampler_bytes_per_logit(sampler, rows)
    logits = int(per_logit * rows * g.vocab)
    # hidden_states of the whole batch stay alive through the sampler (profile_run deletes them after),
    # plus hidden_states[logit_indices] and torch.rand_like of it (_dummy_sampler_run).
    kept = tokens * h * dtype_bytes + 2 * rows * h * dtype_bytes
    triton_buf = 0
    if sampler == "triton" and rows >= 8:
        # apply_top_k_top_p_triton: buffer (min(next_pow2(min(num_sm, B)), num_sm), vocab) fp32, cached.
        progs = min(sm_count, rows)
        triton_buf = min(1 << (progs - 1).bit_length(), sm_count) * g.vocab * 4
    sampler_phase = kept + logits + triton_buf
    ws = _cublas_workspace(capability)
    peak = max(forward, sampler_phase) + ws
    unc = int(per_logit_unc * rows * g.vocab)
    return (
        peak,
        unc,
        {
            "forward": forward,
            "sampler_phase": sampler_phase,
            "sampler_logits": logits,
            "triton_buffer": triton_buf,
            "cublas_workspace": ws,
            "sampler_rows": rows,
        },
    )


# Non-torch growth between the init snapshot and the end of the profile run, one GPU (TP = 1). FIT:
#   0.13 GiB  - profile window without CUDA-graph capture (<= 0.17, and >= 0.27 where the capture moved out of
#               the window): 'non_torch_forward_memory_gib' 0.13 for Qwen3-14B on H100 at 0.16 and 0.17
#               (v1-020, v1-021). Lazily loaded kernel modules, cuBLAS/cuBLASLt handles. The RTX 3090 0.17.1
#               and A100 0.10.1.1 launches imply 0.02-0.06 GiB (so this errs on the safe side there).
#   0.25 GiB  - 0.18.0-0.26.x, when profile_cudagraph_memory runs inside the memory_profiling window
#               (gpu_worker.py @0.18.0): 0.24-0.25 GiB on every H100 0.19.0 launch (v1-010..012, 015..018),
#               0.25 at 0.18 (v1-022); A100 0.19.1 (v1-002) implies 0.22.
NON_TORCH_BASE = int(0.13 * GiB)
NON_TORCH_WITH_CG_WINDOW = int(0.25 * GiB)
# TP > 1, added per GPU. FIT: +1.81 / +1.82 / +1.88 GiB at TP 2 / 2 / 4 on H100 SXM at 0.19.0 (v1-013,
# v1-014, v1-019: 2.06, 2.07, 2.13 vs 0.24-0.25 at TP 1). From 0.11 the snapshot follows NCCL init, so this is
# memory NCCL allocates lazily at the first collectives of the profile run; on NVSwitch Hopper parts NCCL
# sets up NVLS (NVLink SHARP) buffers (vllm-project/vllm#9699 measures NVLS memory; vllm#10511 shows +1.79 GiB
# non-torch for TP 2 on H100 in Dec 2024). Without NVLS (A100 TP 2, 0.10.1.1: v1-051/052) +0.12 GiB.
TP_NVLS_BYTES = int(1.85 * GiB)
TP_PLAIN_BYTES = int(0.12 * GiB)
TP_PLAIN_MARGIN = int(0.40 * GiB)  # non-NVLS TP in >= 0.11 not observed: margin up to 0.5 GiB

# CUDA-graph estimate (gpu_model_runner.py @0.18.0+ profile_cudagraph_memory): per mode, capture the two
# largest descriptors; estimate = first capture + (n - 1) x second capture, summed over PIECEWISE and FULL.
# FIT (2 constants): first capture ~0.18 GiB per mode (a public 0.2x launch with PIECEWISE=1, FULL=1 printed
# 'Estimated CUDA graph memory: 0.36 GiB'); each further graph 6 MiB: H100 0.19.0 estimates 0.61-0.84 GiB for
# 51 + 51 graphs (v1-010..v1-019: 2.6-4.9 MiB/graph) and the RTX 5070 Ti 0.23 launch (v1-006) implies
# ~5.4 MiB/graph; 6 MiB is the upper end. A100 (FA2, max_model_len 40960) printed 2.35 GiB for 51 + 35
# graphs (v1-002): 24 MiB/graph - used for cc 8.0, and as the margin where the architecture was not observed.
CG_FIRST_PER_MODE = int(0.18 * GiB)
CG_PER_GRAPH = 6 * MiB
CG_PER_GRAPH_SM80 = 24 * MiB

# >= 0.27 (total_consumed): v1-044 (0.27.1, L40S behind a HAMi 16000 MiB cap) shows 1.26 GiB non-KV memory
# against 0.67 GiB from the terms here. One virtualized launch cannot separate HAMi's accounting from a
# missing term, so the gap is carried as margin, not as a fitted term.
TOTAL_CONSUMED_MARGIN = int(0.6 * GiB)

# Memory the process needs outside vLLM's budget when it starts: CUDA context and what was allocated before
# the snapshot. FIT: the RTX 3090 warm-up OOM (v1-028) shows 0.71 GiB non-PyTorch memory in the process at the
# failure (context + graph/driver memory); 0.5 GiB of it is the context.
CONTEXT_BYTES = int(0.5 * GiB)
# Policy, not physics: what other processes (desktop compositor, browser, monitoring) may hold on a consumer
# card. The failed v1-028 launch had ~1.68 GiB held by others (23.54 total - 21.72 in use - 0.14 free);
# the same launch at 0.86 (v1-029) started. Datacenter cards: 0.25 GiB.
OTHERS_RESERVE_CONSUMER = int(1.5 * GiB)
OTHERS_RESERVE_DATACENTER = int(0.25 * GiB)


def cudagraph_estimate_bytes(
    n_piecewise: int, n_full: int, capability: tuple[int, int], known_gpu: bool
) -> tuple[int, int]:
    """(estimate, margin) of 'Estimated CUDA graph memory' for the given graph counts."""
    modes = (1 if n_piecewise else 0) + (1 if n_full else 0)
    n = n_piecewise + n_full
    if n == 0:
        return 0, 0
    per = CG_PER_GRAPH_SM80 if capability[0] == 8 and capability[1] == 0 else CG_PER_GRAPH
    est = modes * CG_FIRST_PER_MODE + (n - modes) * per
    observed = capability in ((9, 0), (12, 0), (8, 0))
    margin = int(0.3 * est) if (observed and known_gpu) else (n - modes) * (CG_PER_GRAPH_SM80 - per) + int(0.3 * est)
    return est, margin


def _persistent_runner_bytes(g: Geometry, tokens: int, seqs: int, runner: str, tp: int) -> int:
    """Torch buffers the model runner allocates after the snapshot and before the profile run; only the
    >= 0.27 formula counts them (total_consumed). V1 runner (gpu_model_runner.py @0.27.1 __init__):
    inputs_embeds [max_num_tokens, hidden] + int32/int64/bool per-token buffers. MRV2 adds the penalty
    state output_bin_counts [max_num_reqs, vocab] int32 (v1/worker/gpu/sample/penalties.py)."""
    b = tokens * (g.hidden * 2 + 4 + 8 + 8 + 8 + 1)
    if runner == "v2":
        b += seqs * g.vocab * 4 + seqs * (-(-g.vocab // 32)) * 4
    return b


# ----------------------------------------------------------------------------- entry point


def available_kv(
    version: str | tuple[int, int, int],
    *,
    geometry: Geometry,
    weights_bytes: int,
    gpu_total_bytes: int,
    gpu_name: str,
    max_model_len: int,
    sm_count: int | None = None,
    gpu_memory_utilization: float | None = None,
    tp: int = 1,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    enforce_eager: bool = False,
    kv_cache_dtype: str = "auto",
    nvml_total_bytes: int | None = None,
    quantized: bool = False,
    flashinfer_installed: bool | None = None,
    cudagraph_estimate_on: bool | None = None,
    nodes: int = 1,
    other_process_bytes: int = 0,
    dtype_bytes: int = 2,
    capability: tuple[int, int] | None = None,
) -> dict[str, object]:
    """Every term (bytes) of vLLM's KV sizing for one GPU of the launch, and the verdict.

    Returns requested, weights, activation_peak, non_torch, persistent, cuda_graph_estimate,
    cuda_graph_deducted, available_kv, kv_blocks, kv_tokens (as 'GPU KV cache size' prints: blocks x 16, the
    null block included), usable_kv_tokens (one null block fewer: v1/core/block_pool.py BlockPool reserves
    block 0), max_len_needed ('To serve at least one request' check), warmup_headroom, margin_bytes,
    uncertain (list of notes) and verdict ('fits' / 'risk' / 'no').
    """
    v = _v(version)
    if geometry.moe:
        raise NotModelled("MoE models: expert weights, MoE workspaces and EP buffers are not modelled")
    facts = gpu_facts(gpu_name, capability)
    cc: tuple[int, int] = facts["capability"]  # type: ignore[assignment]
    sms = sm_count or int(facts["sm_count"])  # type: ignore[arg-type]
    d = defaults(
        v,
        gpu_total_bytes,
        gpu_name,
        nvml_total_bytes=nvml_total_bytes,
        architecture=geometry.architecture,
        quantized=quantized,
        moe=geometry.moe,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        enforce_eager=enforce_eager,
        flashinfer_installed=flashinfer_installed,
        capability=capability,
    )
    uncertain: list[str] = []
    margin = 0
    util = gpu_memory_utilization if gpu_memory_utilization is not None else float(d["gpu_memory_utilization"])  # type: ignore[arg-type]
    tokens = int(d["max_num_batched_tokens"])  # type: ignore[arg-type]
    seqs = int(d["max_num_seqs"])  # type: ignore[arg-type]
    requested = math.ceil(gpu_total_bytes * util)

    act, act_unc, act_parts = activation_peak_bytes(
        v,
        geometry,
        tokens=tokens,
        seqs=seqs,
        tp=tp,
        sm_count=sms,
        capability=cc,
        sampler=str(d["sampler"]),
        dtype_bytes=dtype_bytes,
    )
    margin += act_unc
    if d["sampler"] in ("mrv2", "mrv2_warmup"):
        uncertain.append("Model Runner V2 sampler peak derived from source only (no printed activation line)")
    if v < (0, 11, 1) and flashinfer_installed is None:
        uncertain.append(
            "0.10-0.11.0 sampler: assumed FlashInfer installed (official image); plain pip "
            "without flashinfer uses the sort path (+24 B/logit)"
        )
        margin += int(24 * act_parts["sampler_rows"] * geometry.vocab)

    non_torch = NON_TORCH_WITH_CG_WINDOW if d["cudagraph_profile_in_window"] else NON_TORCH_BASE
    if tp > 1:
        if facts["nvls"]:
            non_torch += TP_NVLS_BYTES
        else:
            non_torch += TP_PLAIN_BYTES
            if d["snapshot_after_dist_init"]:
                margin += TP_PLAIN_MARGIN
                uncertain.append("TP > 1 without NVLS after 0.11: NCCL lazy buffers not observed")
    if nodes > 1:
        uncertain.append("multi-node (Ray) TP: network NCCL buffers not modelled (+1 GiB margin)")
        margin += GiB
    if not facts["known"]:
        uncertain.append(f"GPU {gpu_name!r} not in the table: capability/SM count assumed")

    persistent = 0
    if d["non_kv_formula"] == "total_consumed":
        persistent = _persistent_runner_bytes(geometry, tokens, seqs, str(d["model_runner"]), tp)
        # The only >= 0.27 launch in the public logs (v1-044, 0.27.1 under a HAMi memory cap) has 0.6 GiB more
        # non-KV memory than these terms explain; until a plain launch confirms them, widen the margin.
        margin += TOTAL_CONSUMED_MARGIN
        uncertain.append("0.27+ total_consumed formula: one (virtualized) launch only, +0.6 GiB margin")

    n_pw = len(d["cudagraph_capture_sizes"])  # type: ignore[arg-type]
    n_full = len(d["full_cudagraph_sizes"])  # type: ignore[arg-type]
    cg_est, cg_margin = (0, 0)
    if not enforce_eager:  # computed for every release: the warm-up check needs it before 0.18 too
        cg_est, cg_margin = cudagraph_estimate_bytes(n_pw, n_full, cc, bool(facts["known"]))
    deduct = (
        bool(d["cudagraph_profiled_before_kv"])
        if cudagraph_estimate_on is None
        else (cudagraph_estimate_on and v >= (0, 18, 0))
    )
    cg_deducted = cg_est if deduct else 0
    if deduct:
        margin += cg_margin
        if d["model_runner"] == "v2":
            uncertain.append("Model Runner V2 CUDA-graph estimate assumed to follow the V1 runner's constants")
        if cg_margin > 0.3 * cg_est + 1:
            uncertain.append("CUDA-graph estimate for this GPU architecture not observed: margin up to 24 MiB/graph")

    non_kv = weights_bytes + act + non_torch + persistent
    available = requested - non_kv - cg_deducted
    per_token = kv_bytes_per_token(geometry, tp, kv_cache_dtype, dtype_bytes)
    block_bytes = int(d["block_size"]) * per_token  # type: ignore[arg-type]
    blocks = max(0, available) // block_bytes
    kv_tokens = blocks * int(d["block_size"])  # type: ignore[arg-type]
    # v1/core/kv_cache_utils.py check_enough_kv_cache_memory: cdiv(max_model_len, block) pages per layer.
    needed = -(-max_model_len // int(d["block_size"])) * block_bytes  # type: ignore[arg-type]

    # Sampler warm-up after the KV cache is allocated (gpu_model_runner.py _dummy_sampler_run raises
    # 'CUDA out of memory occurred when warming up sampler with N dummy requests'). After allocation the
    # activation reservation is free again, but graphs captured without a deduction (< 0.20) come out of
    # what is left outside the budget, next to the CUDA context and other processes.
    post_kv_need = (cg_est if not deduct else 0) + max(0, act_parts["sampler_phase"] - act)
    headroom = gpu_total_bytes - requested - CONTEXT_BYTES - other_process_bytes - post_kv_need
    reserve = OTHERS_RESERVE_CONSUMER if facts["consumer"] else OTHERS_RESERVE_DATACENTER
    if available <= 0 or blocks == 0:
        verdict = "no"
        reason = "No available memory for the cache blocks"
    elif available < needed:
        verdict = "no"
        reason = f"max_model_len {max_model_len} needs {needed / GiB:.2f} GiB KV"
    elif available - margin < needed:
        verdict = "risk"
        reason = (
            f"fits by the point estimate, not after the {margin / GiB:.2f} GiB margin for the uncertain "
            f"terms ({'; '.join(uncertain)})"
        )
    elif headroom < reserve:
        verdict = "risk"
        reason = (
            f"only {headroom / GiB:.2f} GiB outside the budget after context and CUDA graphs "
            f"(< {reserve / GiB:.2f} GiB reserve): sampler warm-up may OOM if other processes hold memory"
        )
    else:
        verdict = "fits"
        reason = ""
    return {
        "version": ".".join(map(str, v)),
        "requested": requested,
        "gpu_memory_utilization": util,
        "max_num_seqs": seqs,
        "max_num_batched_tokens": tokens,
        "weights": weights_bytes,
        "activation_peak": act,
        "activation_parts": act_parts,
        "non_torch": non_torch,
        "persistent": persistent,
        "cuda_graph_estimate": cg_est,
        "cuda_graph_deducted": cg_deducted,
        "cuda_graphs": (n_pw, n_full),
        "sampler": d["sampler"],
        "model_runner": d["model_runner"],
        "available_kv": available,
        "kv_bytes_per_token": per_token,
        "kv_blocks": blocks,
        "kv_tokens": kv_tokens,
        "usable_kv_tokens": max(0, blocks - 1) * int(d["block_size"]),  # type: ignore[arg-type]
        "max_len_needed": needed,
        "warmup_headroom": headroom,
        "warmup_reserve": reserve,
        "margin_bytes": margin,
        "available_kv_safe": available - margin,
        "uncertain": uncertain,
        "verdict": verdict,
        "reason": reason,
    }
