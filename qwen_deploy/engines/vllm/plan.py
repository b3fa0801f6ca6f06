"""vLLM candidates: every safetensors checkpoint × KV cache type on the machine's NVIDIA GPUs, sized by the
rules of the vLLM release that will run it (memory.py). One GPU per replica unless tensor parallelism is
needed to reach the context target, or asked for (--tensor-parallel-size, --data-parallel-size).

Contexts are planned from the KV blocks left after the margin for the terms a release's logs could not pin
down (memory.Sizing.safe_blocks): a plan that vLLM then refuses after minutes of loading is the failure this
tool exists to prevent. The utilization leaves what vLLM needs beside its budget once the cache is allocated
(CUDA graphs before 0.20, the sampler warm-up, the CUDA context), unless the user fixes it.
"""

from __future__ import annotations

import math
from dataclasses import replace

from qwen_deploy.candidates import Candidate, Request, decide_context, decode_speed, served_name, target
from qwen_deploy.engines.vllm import memory as vm
from qwen_deploy.engines.vllm import rules
from qwen_deploy.hardware.types import GPU, Hardware
from qwen_deploy.model.types import Artifact, ModelSpec
from qwen_deploy.units import format_size

# vLLM decode typically reaches most of a GPU's peak bandwidth (an assumption; BENCHMARKS.md).
GPU_DECODE_EFFICIENCY = 0.75
GPU_TYPICAL_BANDWIDTH_GBPS = 500.0

# A CUDA context, cuBLAS and NCCL take memory outside vLLM's budget, and vLLM refuses to start when free
# memory is below total × utilization (v1/worker/utils.py request_memory): 512 MiB is kept free beside it.
CUDA_CONTEXT_BYTES = 512 * 1024**2


def precision_on(artifact_precision: str, gpu: GPU) -> tuple[str, str, str | None]:
    """(precision label, --dtype, why it cannot run) for a vLLM artifact on this GPU (vLLM 0.33.0 rules)."""
    major, minor = gpu.cc
    cc = major + minor / 10
    dtype = "bfloat16" if cc >= 8.0 else "float16"
    if artifact_precision == "bf16":
        # dtype auto on CC < 8.0 falls back to float16 (config/model.py _resolve_auto_dtype).
        return ("bf16" if cc >= 8.0 else "fp16"), dtype, None
    if artifact_precision in ("fp8", "awq", "gptq"):
        # Fp8Config.get_min_capability() 75 (native W8A8 from 8.9, weight-only Marlin below); AWQ/GPTQ 75.
        if cc < 7.5:
            name = artifact_precision.upper()
            return artifact_precision, dtype, f"{name} needs compute capability 7.5 or newer; {gpu.name} has {cc}"
        return artifact_precision, dtype, None
    return artifact_precision, dtype, None


def fp8_kv_blocker(gpu: GPU) -> str | None:
    # fp8 KV needs an attention backend that takes it: FlashInfer from SM80, Triton from SM89, FA3 on SM90.
    # On SM75 (T4) no default backend does (research notes on vLLM 0.33.0 backends).
    major, _ = gpu.cc
    if major < 8:
        return f"an fp8 KV cache needs compute capability 8.0 or newer; {gpu.name} has {gpu.compute_capability}"
    return None


def engine_version(request: Request, engine: str) -> tuple[str, str]:
    """(vLLM version whose rules apply, where it came from: installed / --vllm-version / pinned)."""
    given = request.engine_versions.get(engine)
    if given:
        return given["version"], given.get("source", "given")
    return vm.PINNED_VERSION, "the release qwen-deploy pins"


def _layouts(request: Request, n_gpus: int, heads: int) -> tuple[list[tuple[int, int]], str | None]:
    """(tensor parallel, replicas) layouts to try, smallest first, or why the requested one cannot run."""
    tp_pin, dp_pin = request.tensor_parallel_size, request.data_parallel_size
    if tp_pin or dp_pin:
        tp = tp_pin or 1
        dp = dp_pin or max(1, n_gpus // tp)
        if tp * dp > n_gpus:
            return [(tp, dp)], f"tensor parallel {tp} × {dp} replicas needs {tp * dp} GPUs; this machine has {n_gpus}"
        if heads % tp:
            return [(tp, dp)], f"tensor parallel {tp} does not divide the model's {heads} attention heads"
        return [(tp, dp)], None
    tps = [t for t in (1, 2, 4, 8) if t <= n_gpus and heads % t == 0] or [1]
    return [(t, n_gpus // t) for t in tps], None


def candidates(engine: str, kv_types: tuple[str, ...], model: ModelSpec, hw: Hardware, request: Request):
    gpus = [g for g in hw.gpus if g.backend == "cuda"]
    if not gpus:
        return []
    from qwen_deploy import engines

    impl = engines.get(engine)
    version, source = engine_version(request, engine)
    try:
        rules.modelled(version)
    except (rules.NotModelled, ValueError) as exc:
        from qwen_deploy.errors import UsageError

        raise UsageError(f"vLLM {version} ({source}): {exc}. To fix: pass --vllm-version 0.10 or newer.") from None
    gpu = min(gpus, key=lambda g: g.cuda_total)  # plan every GPU as the smallest one
    layouts, layout_blocker = _layouts(request, len(gpus), model.attention_heads)
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
            why_not = layout_blocker or blocker or (fp8_kv_blocker(gpu) if kv == "fp8" else None)
            options = []
            for tp, replicas in layouts:
                cand = _candidate(engine, model, art, gpus, gpu, (version, source), precision, dtype, kv, tp,
                                  replicas, request)  # fmt: skip
                if why_not:
                    cand = replace(cand, fits=False, meets_target=False, reason=f"cannot run: {why_not}")
                options.append(cand)
                if cand.fits and cand.max_context >= goal:
                    break  # tensor parallel only when one GPU (or fewer) cannot hold the target
            fitting = [c for c in options if c.fits]
            out.append(fitting[-1] if fitting else options[0])
    return out


def _utilization(request: Request, gpus: list[GPU], total: int, default: float) -> tuple[float, str | None]:
    """(the utilization to plan with, why it is not the default) from what other processes leave free."""
    util = request.gpu_memory_utilization or default
    free = min(min(g.memory_free_bytes, g.cuda_total) for g in gpus)
    # vLLM refuses to start when free memory is below total × utilization (v1/worker/utils.py request_memory)
    fits_free = math.floor((free - CUDA_CONTEXT_BYTES) / total * 100) / 100 if total > 0 else 0.0
    if fits_free >= util:
        return util, None
    if request.gpu_memory_utilization is None and fits_free >= 0.05:
        return fits_free, f"gpu_memory_utilization lowered to {fits_free:.2f} because other processes use GPU memory"
    return util, (
        f"busy: only {format_size(free)} of {format_size(total)} GPU memory is free; vLLM needs "
        f"{util:.2f} of it ({format_size(int(total * util))}) free at start-up"
    )


def _not_modelled(engine, model, art, precision, kv, tp, replicas, request, why: str) -> Candidate:  # noqa: ANN001
    from qwen_deploy.candidates import wanted_context
    from qwen_deploy.memory import empty_estimate

    return Candidate(
        engine=engine, device="gpu", precision=precision, artifact=art, kv_cache_dtype=kv,
        context=wanted_context(request), max_context=0, concurrency=0.0, tensor_parallel_size=tp,
        replicas=replicas, fits=False, reason=f"cannot plan: vLLM's memory for this checkpoint is not modelled ({why})",
        memory=empty_estimate(art.weights_bytes), decode_tokens_per_s=0.0, served_name=served_name(model),
        host=request.host, port=request.port, runnable=False,
    )  # fmt: skip


def _candidate(
    engine: str,
    model: ModelSpec,
    art: Artifact,
    gpus: list[GPU],
    gpu: GPU,
    version: tuple[str, str],
    precision: str,
    dtype: str,
    kv: str,
    tp: int,
    replicas: int,
    request: Request,
) -> Candidate:
    total = gpu.cuda_total
    default_util = float(
        rules.defaults(version[0], total, gpu.name, nvml_total_bytes=gpu.memory_total_bytes, capability=gpu.cc)[
            "gpu_memory_utilization"
        ]
    )
    util, util_note = _utilization(request, gpus, total, default_util)
    try:
        sizing = vm.size(version[0], model, art, gpu, total=total, util=util, tp=tp, kv_cache_dtype=kv, n_gpus=tp)
    except (rules.NotModelled, ValueError) as exc:
        return _not_modelled(engine, model, art, precision, kv, tp, replicas, request, f"{exc}")
    notes = [util_note] if util_note and not util_note.startswith("busy") else []
    room = vm.warmup_utilization(sizing.terms, total)
    if request.gpu_memory_utilization is None and util_note is None and room < util:
        # leave the sampler warm-up (and graphs, context) its memory beside the budget, as long as the
        # shortest useful context still fits there; else keep the default and say the risk
        lower = vm.size(version[0], model, art, gpu, total=total, util=room, tp=tp, kv_cache_dtype=kv, n_gpus=tp)
        if (lower.safe_blocks - 1) * vm.VLLM_BLOCK_SIZE >= (request.min_context or 1) * max(1.0, request.concurrency):
            util, sizing = room, lower
            notes.append(
                f"gpu_memory_utilization {util:.2f}, not {default_util}: leaves "
                f"{format_size(int(sizing.terms['warmup_reserve']))} beside the budget for the CUDA context, "
                "graphs and the sampler warm-up (a 24 GB card at 0.9 can fail that warm-up)"
            )
    if int(sizing.terms["warmup_headroom"]) < int(sizing.terms["warmup_reserve"]):
        notes.append(
            f"risk: only {format_size(int(sizing.terms['warmup_headroom']))} stays outside the budget for the CUDA "
            "context, graphs and the sampler warm-up; it can fail if other processes hold GPU memory"
        )
    if sizing.terms["uncertain"]:
        notes.append(
            f"{format_size(int(sizing.terms['margin_bytes']))} kept back for terms vLLM {version[0]}'s public logs "
            f"do not pin down ({'; '.join(sizing.terms['uncertain'])})"
        )
    est = sizing.estimate
    usable = max(0, sizing.safe_blocks - 1)  # BlockPool holds one null block back (v1/core/block_pool.py)
    # data-parallel replicas share the requests; each holds at least one full-length request
    per_replica = max(1.0, request.concurrency / replicas)
    capacity = int(usable / per_replica) * vm.VLLM_BLOCK_SIZE
    max_context = min(model.max_context, capacity)
    context, fits, reason, shortfall = decide_context(request, model, max_context, est.kv_bytes_per_token)
    rules_used = f"vLLM {version[0]} rules ({version[1]})"
    if util_note and util_note.startswith("busy"):
        fits, reason, shortfall = False, f"cannot run: {util_note[6:]}", 0
    elif est.parts["available_kv_bytes"] <= 0 or sizing.safe_blocks <= 1:
        fits = False
        reason = (
            f"no room for a KV cache: {format_size(est.weights_bytes)} weights + "
            f"{format_size(est.overhead_bytes)} activations/graphs exceed the "
            f"{format_size(est.budget_bytes)} budget ({util:.2f} of {format_size(total)}); {rules_used}"
        )
        shortfall = -est.parts["available_kv_bytes"] + est.kv_bytes_per_token * max(request.min_context or 1, 1)
    elif fits:
        reason = (
            f"fits: {format_size(est.weights_bytes)} weights + {format_size(est.overhead_bytes)} activations/graphs "
            f"+ {format_size(est.kv_cache_bytes)} KV ({est.kv_capacity_tokens:,} tokens) in "
            f"{format_size(est.budget_bytes)} ({util:.2f} of {format_size(total)}"
            + (f" per GPU, tensor parallel {tp}" if tp > 1 else "")
            + (f", {replicas} replicas" if replicas > 1 else "")
            + f"); {rules_used}"
            + "".join(f"; {n}" for n in notes)
        )
    bandwidth = gpu.memory_bandwidth_gbps or GPU_TYPICAL_BANDWIDTH_GBPS
    speed = decode_speed(
        bandwidth * tp, GPU_DECODE_EFFICIENCY, est.weights_bytes * tp, est.kv_bytes_per_token * tp, context
    )
    concurrency = vm.vllm_concurrency(usable * vm.VLLM_BLOCK_SIZE, context) if fits else 0.0
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
            "vllm_version": version[0],
        },
        meets_target=fits and context >= target(request, model),
        shortfall_bytes=shortfall,
    )
