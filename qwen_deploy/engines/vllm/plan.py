"""vLLM candidates: every safetensors checkpoint × KV cache type on the machine's GPUs, one GPU per replica
unless tensor parallelism is needed to reach the context target (vLLM 0.33.0's rules, engines/vllm/memory.py)."""

from __future__ import annotations

import math
from dataclasses import replace

from qwen_deploy.candidates import Candidate, Request, decide_context, decode_speed, served_name, target
from qwen_deploy.engines.vllm import memory as vm
from qwen_deploy.hardware.types import GPU, Hardware
from qwen_deploy.model.types import Artifact, ModelSpec
from qwen_deploy.units import format_size

# vLLM decode typically reaches most of a GPU's peak bandwidth (an assumption; BENCHMARKS.md).
GPU_DECODE_EFFICIENCY = 0.75
GPU_TYPICAL_BANDWIDTH_GBPS = 500.0

# A CUDA context, cuBLAS and NCCL take memory outside vLLM's budget, and vLLM refuses to start when free
# memory is below total × utilization (v1/worker/utils.py request_memory). Design notes: a few hundred MiB
# to ~1 GiB per process; we keep 512 MiB free beside the budget when choosing the fraction.
CUDA_CONTEXT_BYTES = 512 * 1024**2


def precision_on(artifact_precision: str, gpu: GPU) -> tuple[str, str, str | None]:
    """(precision label, --dtype, why it cannot run) for a vLLM artifact on this GPU (vLLM 0.33.0 rules)."""
    major, minor = gpu.cc
    cc = major + minor / 10
    dtype = "bfloat16" if cc >= 8.0 else "float16"
    if artifact_precision == "bf16":
        # dtype auto on CC < 8.0 falls back to float16 (config/model.py _resolve_auto_dtype).
        return ("bf16" if cc >= 8.0 else "fp16"), dtype, None
    if artifact_precision == "fp8":
        # Fp8Config.get_min_capability() 75: native W8A8 from 8.9, weight-only Marlin below.
        if cc < 7.5:
            return (
                "fp8",
                dtype,
                f"FP8 weights need compute capability 7.5 or newer; {gpu.name} has {gpu.compute_capability}",
            )
        return "fp8", dtype, None
    if artifact_precision == "awq":
        if cc < 7.5:
            return "awq", dtype, f"AWQ needs compute capability 7.5 or newer; {gpu.name} has {gpu.compute_capability}"
        return "awq", dtype, None
    return artifact_precision, dtype, None


def fp8_kv_blocker(gpu: GPU) -> str | None:
    # fp8 KV needs an attention backend that takes it: FlashInfer from SM80, Triton from SM89, FA3 on SM90.
    # On SM75 (T4) no default backend does (research notes on vLLM 0.33.0 backends).
    major, _ = gpu.cc
    if major < 8:
        return f"an fp8 KV cache needs compute capability 8.0 or newer; {gpu.name} has {gpu.compute_capability}"
    return None


def candidates(engine: str, kv_types: tuple[str, ...], model: ModelSpec, hw: Hardware, request: Request):
    gpus = [g for g in hw.gpus if g.backend == "cuda"]
    if not gpus:
        return []
    from qwen_deploy import engines

    impl = engines.get(engine)
    gpu = min(gpus, key=lambda g: g.cuda_total)  # plan every GPU as the smallest one
    n_gpus = len(gpus)
    total = gpu.cuda_total
    util = request.gpu_memory_utilization or vm.VLLM_GPU_MEMORY_UTILIZATION
    free = min(min(g.memory_free_bytes, g.cuda_total) for g in gpus)
    # vLLM refuses to start when free memory is below total × utilization (v1/worker/utils.py request_memory)
    fits_free = math.floor((free - CUDA_CONTEXT_BYTES) / total * 100) / 100 if total > 0 else 0.0
    busy: str | None = None
    free_limited = False
    if fits_free < util:
        if request.gpu_memory_utilization is None and fits_free >= 0.05:
            util, free_limited = fits_free, True  # lower the fraction so that vLLM can start
        else:
            busy = (
                f"only {format_size(free)} of {format_size(total)} GPU memory is free; vLLM needs "
                f"{util:.2f} of it ({format_size(int(total * util))}) free at start-up"
            )
    tps = [t for t in (1, 2, 4, 8) if t <= n_gpus and model.attention_heads % t == 0]
    goal = target(request, model)
    out = []
    for art in model.artifacts:
        if art.format != "safetensors":
            continue
        precision, dtype, blocker = precision_on(art.precision, gpu)
        if request.precision and request.precision not in (precision, art.precision):
            continue
        for kv in kv_types:
            if request.kv_cache_dtype and impl.kv_class(request.kv_cache_dtype) != kv:
                continue
            why_not = busy or blocker or (fp8_kv_blocker(gpu) if kv == "fp8" else None)
            options = []
            for tp in tps:
                cand = _candidate(engine, model, art, gpu, n_gpus, total, util, precision, dtype, kv, tp, request)
                if why_not:
                    cand = replace(cand, fits=False, meets_target=False, reason=f"cannot run: {why_not}")
                elif free_limited and cand.fits:
                    cand = replace(
                        cand,
                        reason=cand.reason
                        + f"; gpu_memory_utilization lowered to {util:.2f} because other processes use GPU memory",
                    )
                options.append(cand)
                if cand.fits and cand.max_context >= goal:
                    break  # tensor parallel only when one GPU (or fewer) cannot hold the target
            fitting = [c for c in options if c.fits]
            out.append(fitting[-1] if fitting else options[0])
    return out


def _candidate(
    engine: str,
    model: ModelSpec,
    art: Artifact,
    gpu: GPU,
    n_gpus: int,
    total: int,
    util: float,
    precision: str,
    dtype: str,
    kv: str,
    tp: int,
    request: Request,
) -> Candidate:
    est = vm.vllm_memory(
        layers=model.layers,
        kv_heads=model.kv_heads,
        head_dim=model.head_dim,
        value_head_dim=model.value_head_dim,
        hidden=model.hidden_size,
        intermediate=model.intermediate_size,
        vocab=model.vocab_size,
        max_position=model.max_context,
        checkpoint_bytes=art.weights_bytes,
        config=vm.VllmConfig(
            gpu_total_bytes=total,
            nvml_total_bytes=gpu.memory_total_bytes,
            gpu_name=gpu.name,
            gpu_memory_utilization=util,
            tp=tp,
            kv_cache_dtype=kv,
        ),
    )
    replicas = n_gpus // tp
    blocks = est.counts["kv_blocks"]
    usable = max(0, blocks - 1)  # BlockPool holds one null block back (v1/core/block_pool.py)
    # data-parallel replicas share the requests; each holds at least one full-length request
    per_replica = max(1.0, request.concurrency / replicas)
    capacity = int(usable / per_replica) * vm.VLLM_BLOCK_SIZE
    max_context = min(model.max_context, capacity)
    context, fits, reason, shortfall = decide_context(request, model, max_context, est.kv_bytes_per_token)
    if est.parts["available_kv_bytes"] <= 0:
        fits = False
        reason = (
            f"no room for a KV cache: {format_size(est.weights_bytes)} weights + "
            f"{format_size(est.overhead_bytes)} activations/graphs exceed the "
            f"{format_size(est.budget_bytes)} budget ({util:.2f} of {format_size(total)})"
        )
        shortfall = -est.parts["available_kv_bytes"] + est.kv_bytes_per_token * max(request.min_context or 1, 1)
    elif fits:
        reason = (
            f"fits: {format_size(est.weights_bytes)} weights + {format_size(est.overhead_bytes)} activations/graphs "
            f"+ {format_size(est.kv_cache_bytes)} KV ({est.kv_capacity_tokens:,} tokens) in "
            f"{format_size(est.budget_bytes)} ({util:.2f} of {format_size(total)}"
            + (f" per GPU, tensor parallel {tp}" if tp > 1 else "")
            + (f", {replicas} replicas" if replicas > 1 else "")
            + ")"
        )
    bandwidth = gpu.memory_bandwidth_gbps or GPU_TYPICAL_BANDWIDTH_GBPS
    speed = decode_speed(
        bandwidth * tp, GPU_DECODE_EFFICIENCY, est.weights_bytes * tp, est.kv_bytes_per_token * tp, context
    )
    concurrency = vm.vllm_concurrency(est.kv_capacity_tokens, context) if fits else 0.0
    return Candidate(
        engine=engine,
        device="gpu",
        precision=precision,
        artifact=art,
        kv_cache_dtype=kv,
        context=context,
        max_context=max_context,
        concurrency=concurrency * replicas,
        tensor_parallel_size=tp,
        replicas=replicas,
        fits=fits,
        reason=reason,
        memory=est,
        decode_tokens_per_s=speed,
        served_name=served_name(model),
        host=request.host,
        port=request.port,
        settings={
            "gpu_memory_utilization": util,
            "dtype": dtype,
            # The batch limits are pinned to the values the memory model assumed, so the engine's activation
            # profile is the one the plan computed.
            "max_num_seqs": est.counts["max_num_seqs"],
            "max_num_batched_tokens": est.counts["max_num_batched_tokens"],
            "quantization": art.quantization,
        },
        meets_target=fits and context >= target(request, model),
        shortfall_bytes=shortfall,
    )
