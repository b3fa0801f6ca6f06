"""Candidates -> fit -> rank -> Plan. Pure: the same Hardware, ModelSpec and Request always give the same
plan, and nothing here reads files, the environment or the clock.

Every engine × precision × KV type × device the hardware could run is evaluated with the memory model;
each gets a context, a concurrency, a sentence saying why it fits or not, and the exact command. The
policy that orders them is documented in README.md ("How the planner chooses").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from qwen_deploy import memory
from qwen_deploy.engines import llamacpp, vllm
from qwen_deploy.errors import UsageError
from qwen_deploy.hardware import GPU, Hardware
from qwen_deploy.model import Artifact, ModelSpec
from qwen_deploy.units import format_size

PLAN_SCHEMA = "qwen-deploy/plan/v1"

AUTO_CONTEXT_TARGET = 32768  # `--context auto` prefers candidates that reach 32K (issue: plan core)
DEFAULT_MIN_CONTEXT = 4096

# Quality order of weight precisions (higher is closer to the BF16 original). Published perplexity and
# benchmark deltas put 8-bit formats within noise of BF16, 6-bit just below, 4-bit a visible step down.
PRECISION_QUALITY = {
    "bf16": 100,
    "fp16": 100,
    "f16": 100,
    "q8_0": 98,
    "fp8": 97,
    "q6_k": 96,
    "q5_k_m": 94,
    "awq": 91,
    "q4_k_m": 90,
    "q4_0": 86,
}
FOUR_BIT = frozenset({"q4_k_m", "q4_0", "awq"})
# KV cache precision: 16-bit is lossless, 8-bit close to it, 4-bit a measurable loss at long context.
KV_QUALITY = {"auto": 0, "f16": 0, "bf16": 0, "fp16": 0, "fp8": -1, "q8_0": -1, "q4_0": -4}
SIXTEEN_BIT_KV = frozenset({"auto", "f16", "bf16", "fp16"})

# Decode speed: single-stream tokens/s = bandwidth × efficiency / bytes read per token (weights + the KV
# of a 4K-token conversation). Efficiencies are assumptions: vLLM decode typically reaches most of a GPU's
# peak bandwidth; the CPU figure is an effective one already (measured or typical).
GPU_DECODE_EFFICIENCY = 0.75
CPU_DECODE_EFFICIENCY = 1.0
CPU_TYPICAL_BANDWIDTH_GBPS = 40.0  # dual-channel DDR4/DDR5 desktop, effective; `probe --measure` replaces it
SPEED_CONTEXT = 4096

# A CUDA context, cuBLAS and NCCL take memory outside vLLM's budget, and vLLM refuses to start when free
# memory is below total × utilization (v1/worker/utils.py request_memory). Design notes: a few hundred MiB
# to ~1 GiB per process; we keep 512 MiB free beside the budget when choosing the fraction.
CUDA_CONTEXT_BYTES = 512 * 1024**2

# RAM left to the operating system and other programs when planning for llama.cpp.
RAM_RESERVE_FRACTION = 0.10
RAM_RESERVE_MIN_BYTES = 1024**3

# The CUDA total of a GPU whose driver-reserved memory we do not know: NVML total minus 1.5% (the median
# gap between nvidia-smi's total and torch's total_memory in the catalog's sources).
CUDA_RESERVED_FRACTION = 0.015


@dataclass(frozen=True)
class Request:
    context: int | str = "auto"  # an int, "auto" or "max"
    min_context: int | None = None  # None: 4096, or the model's limit when that is shorter
    concurrency: float = 1.0
    engine: str | None = None
    precision: str | None = None
    kv_cache_dtype: str | None = None
    gpu_memory_utilization: float | None = None
    prefer: str = "balanced"  # balanced | quality | speed
    host: str = "127.0.0.1"
    port: int = 8000

    def to_dict(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "min_context": self.min_context,
            "concurrency": self.concurrency,
            "engine": self.engine,
            "precision": self.precision,
            "kv_cache_dtype": self.kv_cache_dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "prefer": self.prefer,
            "host": self.host,
            "port": self.port,
        }


@dataclass(frozen=True)
class Candidate:
    engine: str
    device: str
    precision: str
    artifact: Artifact
    kv_cache_dtype: str
    context: int
    max_context: int
    concurrency: float
    tensor_parallel_size: int
    replicas: int
    fits: bool
    reason: str
    memory: memory.MemoryEstimate
    engine_args: dict[str, Any]
    command: tuple[str, ...]
    decode_tokens_per_s: float
    meets_target: bool = False
    shortfall_bytes: int = 0  # how much more memory the requested context would need (0 when it fits)

    @property
    def quality(self) -> int:
        return PRECISION_QUALITY.get(self.precision, 80) + KV_QUALITY.get(self.kv_cache_dtype, -2)

    @property
    def served_name(self) -> str:
        """The model name the engine serves (llama-cpp-python's alias, vLLM's served-model-name)."""
        return str(self.engine_args.get("model_alias") or self.engine_args.get("served-model-name") or "model")

    def label(self) -> str:
        gpus = f" ×{self.tensor_parallel_size * self.replicas} GPU" if self.device == "gpu" else ""
        return f"{self.engine} {self.precision} · KV {self.kv_cache_dtype}{gpus}"

    def to_dict(self) -> dict[str, Any]:
        mem = self.memory.to_dict()
        return {
            "engine": self.engine,
            "device": self.device,
            "precision": self.precision,
            "artifact": self.artifact.to_dict(),
            "kv_cache_dtype": self.kv_cache_dtype,
            "context": self.context,
            "max_context": self.max_context,
            "concurrency": round(self.concurrency, 2),
            "tensor_parallel_size": self.tensor_parallel_size,
            "replicas": self.replicas,
            "fits": self.fits,
            "reason": self.reason,
            "memory": mem,
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 1),
            "engine_args": dict(self.engine_args),
            "command": list(self.command),
        }


@dataclass(frozen=True)
class Plan:
    model: ModelSpec
    hardware: Hardware
    request: Request
    choice: Candidate | None
    candidates: tuple[Candidate, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "model": self.model.to_dict(),
            "hardware": self.hardware.to_dict(),
            "request": self.request.to_dict(),
            "choice": self.choice.to_dict() if self.choice else None,
            "candidates": [c.to_dict() for c in self.candidates],
        }


# ----------------------------------------------------------------------------- helpers


def cuda_total(gpu: GPU) -> int:
    if gpu.cuda_total_bytes:
        return gpu.cuda_total_bytes
    return int(gpu.memory_total_bytes * (1 - CUDA_RESERVED_FRACTION))


def ram_budget(hw: Hardware) -> int:
    """RAM llama.cpp may plan on: the total (cgroup limit applied) minus a reserve for the system.

    The plan is for the machine, not for this second: memory that other programs hold now drifts from run
    to run, so it does not move the budget (`probe --json > hw.json; plan --hardware hw.json` equals
    `plan`); a candidate that needs more than is available now says so in its reason.
    """
    total = hw.memory.total_bytes
    reserve = max(RAM_RESERVE_MIN_BYTES, int(total * RAM_RESERVE_FRACTION))
    return max(0, total - reserve)


def _vllm_precision(artifact_precision: str, gpu: GPU) -> tuple[str, str, str | None]:
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


def _fp8_kv_blocker(gpu: GPU) -> str | None:
    # fp8 KV needs an attention backend that takes it: FlashInfer from SM80, Triton from SM89, FA3 on SM90.
    # On SM75 (T4) no default backend does (research notes on vLLM 0.33.0 backends).
    major, _ = gpu.cc
    if major < 8:
        return f"an fp8 KV cache needs compute capability 8.0 or newer; {gpu.name} has {gpu.compute_capability}"
    return None


def _decode_speed(bandwidth_gbps: float, efficiency: float, weights: int, kv_per_token: int, context: int) -> float:
    return memory.decode_tokens_per_second(
        bandwidth_gbps, weights + kv_per_token * min(context, SPEED_CONTEXT), efficiency
    )


def _target(request: Request, model: ModelSpec) -> int:
    """The context a candidate must reach to count as meeting the request."""
    if isinstance(request.context, int):
        return request.context
    if request.context == "auto":
        return min(AUTO_CONTEXT_TARGET, model.max_context)
    return request.min_context


def _served_name(model: ModelSpec) -> str:
    return model.name or model.id.rsplit("/", 1)[-1].lower()


# ----------------------------------------------------------------------------- vLLM candidates


def _vllm_candidates(model: ModelSpec, hw: Hardware, request: Request) -> list[Candidate]:
    if not hw.gpus:
        return []
    gpu = min(hw.gpus, key=cuda_total)  # plan every GPU as the smallest one
    n_gpus = len(hw.gpus)
    total = cuda_total(gpu)
    default_util = memory.VLLM_GPU_MEMORY_UTILIZATION
    util = request.gpu_memory_utilization or default_util
    free = min(min(g.memory_free_bytes, cuda_total(g)) for g in hw.gpus)
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
    target = _target(request, model)
    out = []
    for art in model.artifacts:
        if art.engine != "vllm":
            continue
        precision, dtype, blocker = _vllm_precision(art.precision, gpu)
        if request.precision and request.precision not in (precision, art.precision):
            continue
        for kv in vllm.KV_TYPES:
            if request.kv_cache_dtype and _kv_class(request.kv_cache_dtype, "vllm") != kv:
                continue
            why_not = busy or blocker or (_fp8_kv_blocker(gpu) if kv == "fp8" else None)
            options = []
            for tp in tps:
                cand = _vllm_candidate(model, art, gpu, n_gpus, total, util, precision, dtype, kv, tp, request)
                if why_not:
                    cand = replace(cand, fits=False, meets_target=False, reason=f"cannot run: {why_not}")
                elif free_limited and cand.fits:
                    cand = replace(
                        cand,
                        reason=cand.reason
                        + f"; gpu_memory_utilization lowered to {util:.2f} because other processes use GPU memory",
                    )
                options.append(cand)
                if cand.fits and cand.max_context >= target:
                    break  # tensor parallel only when one GPU (or fewer) cannot hold the target
            fitting = [c for c in options if c.fits]
            out.append(fitting[-1] if fitting else options[0])
    return out


def _vllm_candidate(
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
    est = memory.vllm_memory(
        layers=model.layers,
        kv_heads=model.kv_heads,
        head_dim=model.head_dim,
        value_head_dim=model.value_head_dim,
        hidden=model.hidden_size,
        intermediate=model.intermediate_size,
        vocab=model.vocab_size,
        max_position=model.max_context,
        checkpoint_bytes=art.weights_bytes,
        config=memory.VllmConfig(
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
    capacity = int(usable / per_replica) * memory.VLLM_BLOCK_SIZE
    max_context = min(model.max_context, capacity)
    context, fits, reason, shortfall = _decide_context(
        request, model, max_context, est, per_token=est.kv_bytes_per_token
    )
    if est.parts["available_kv_bytes"] <= 0:
        fits = False
        reason = (
            f"no room for a KV cache: {format_size(est.weights_bytes)} weights + "
            f"{format_size(est.overhead_bytes)} activations/graphs exceed the "
            f"{format_size(est.budget_bytes)} budget ({util:.2f} of {format_size(total)})"
        )
        shortfall = -est.parts["available_kv_bytes"] + est.kv_bytes_per_token * max(request.min_context, 1)
    elif fits:
        reason = (
            f"fits: {format_size(est.weights_bytes)} weights + {format_size(est.overhead_bytes)} activations/graphs "
            f"+ {format_size(est.kv_cache_bytes)} KV ({est.kv_capacity_tokens:,} tokens) in "
            f"{format_size(est.budget_bytes)} ({util:.2f} of {format_size(total)}"
            + (f" per GPU, tensor parallel {tp}" if tp > 1 else "")
            + (f", {replicas} replicas" if replicas > 1 else "")
            + ")"
        )
    args = vllm.engine_args(
        model=art.path or art.repo,
        served_name=_served_name(model),
        max_model_len=context,
        gpu_memory_utilization=util,
        kv_cache_dtype=kv,
        dtype=dtype,
        tensor_parallel_size=tp,
        data_parallel_size=replicas,
        max_num_seqs=est.counts["max_num_seqs"],
        max_num_batched_tokens=est.counts["max_num_batched_tokens"],
        quantization=art.quantization,
        host=request.host,
        port=request.port,
    )
    bandwidth = gpu.memory_bandwidth_gbps or 500.0
    speed = _decode_speed(
        bandwidth * tp, GPU_DECODE_EFFICIENCY, est.weights_bytes * tp, est.kv_bytes_per_token * tp, context
    )
    concurrency = memory.vllm_concurrency(est.kv_capacity_tokens, context) if fits else 0.0
    return Candidate(
        engine="vllm",
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
        engine_args=args,
        command=tuple(vllm.command(args)),
        decode_tokens_per_s=speed,
        meets_target=fits and context >= _target(request, model),
        shortfall_bytes=shortfall,
    )


def _decide_context(
    request: Request, model: ModelSpec, max_context: int, est: memory.MemoryEstimate, per_token: int
) -> tuple[int, bool, str, int]:
    """(context, fits, reason if it does not fit, bytes short) from the longest context that fits."""
    if isinstance(request.context, int):
        wanted = request.context
        if wanted > model.max_context:
            return wanted, False, f"{wanted:,} tokens is beyond the model's limit of {model.max_context:,}", 0
        if max_context >= wanted:
            return wanted, True, "", 0
        short = (wanted - max_context) * per_token * request.concurrency
        return wanted, False, _too_small(wanted, max_context, request, per_token), max(0, int(short))
    if max_context >= request.min_context:
        return max_context, True, "", 0
    short = (request.min_context - max_context) * per_token * request.concurrency
    return (
        request.min_context,
        False,
        _too_small(request.min_context, max_context, request, per_token),
        max(0, int(short)),
    )


def _too_small(wanted: int, max_context: int, request: Request, per_token: int) -> str:
    users = f" × {request.concurrency:g} requests" if request.concurrency != 1 else ""
    need = format_size(wanted * per_token * request.concurrency)
    if max_context <= 0:
        return f"does not fit: {wanted:,} tokens{users} need {need} of KV and no memory is left after the weights"
    return f"does not fit: {wanted:,} tokens{users} need {need} of KV; the memory left holds {max_context:,} tokens"


def _kv_class(kv: str, engine: str) -> str:
    """Map a user's --kv-cache-dtype onto an engine's own names (16-bit means auto/f16)."""
    if kv in SIXTEEN_BIT_KV:
        return "auto" if engine == "vllm" else "f16"
    return kv


# ----------------------------------------------------------------------------- llama.cpp candidates


def _llamacpp_candidates(model: ModelSpec, hw: Hardware, request: Request) -> list[Candidate]:
    budget = ram_budget(hw)
    out = []
    for art in model.artifacts:
        if art.engine != "llamacpp":
            continue
        if request.precision and request.precision != art.precision:
            continue
        tensors = art.tensors or memory.estimate_gguf_tensors(
            layers=model.layers,
            hidden=model.hidden_size,
            intermediate=model.intermediate_size,
            attention_heads=model.attention_heads,
            kv_heads=model.kv_heads,
            head_dim=model.head_dim,
            vocab=model.vocab_size,
            tied=model.tied_embeddings,
            precision=art.precision,
            file_bytes=art.weights_bytes,
        )
        repack = memory.llamacpp_repack(tensors, hw.cpu.flags)
        for kv in llamacpp.KV_TYPES:
            if request.kv_cache_dtype and _kv_class(request.kv_cache_dtype, "llamacpp") != kv:
                continue
            out.append(_llamacpp_candidate(model, art, hw, budget, repack, kv, request))
    return out


def llamacpp_estimate(
    model: ModelSpec,
    weights_bytes: int,
    repack: tuple[int, int],
    budget: int,
    n_ctx: int,
    kv: str,
    flash_attn: bool = True,
) -> memory.MemoryEstimate:
    """llama.cpp's memory for this model at n_ctx; mmap only when nothing is repacked (no double weights)."""
    source, repacked = repack
    return memory.llamacpp_memory(
        layers=model.layers,
        swa_layers=len(model.sliding_window_layers),
        kv_heads=model.kv_heads,
        head_dim=model.head_dim,
        value_head_dim=model.value_head_dim,
        n_head=model.attention_heads,
        n_embd=model.hidden_size,
        n_ff=model.intermediate_size,
        n_vocab=model.vocab_size,
        weights_bytes=weights_bytes,
        repacked_bytes=repacked,
        repacked_source_bytes=source,
        budget_bytes=budget,
        n_swa=model.sliding_window,
        tokenizer_merges=model.tokenizer_merges,
        config=memory.LlamacppConfig(n_ctx=n_ctx, type_k=kv, type_v=kv, flash_attn=flash_attn, use_mmap=not repacked),
    )


def _unrunnable_llamacpp(
    model: ModelSpec, art: Artifact, hw: Hardware, kv: str, request: Request, reason: str
) -> Candidate:
    empty = memory.MemoryEstimate(0, art.weights_bytes, 0, 0, 0, art.weights_bytes, 0)
    wanted = request.context if isinstance(request.context, int) else request.min_context
    return Candidate(
        engine="llamacpp",
        device="cpu",
        precision=art.precision,
        artifact=art,
        kv_cache_dtype=kv,
        context=wanted,
        max_context=0,
        concurrency=0.0,
        tensor_parallel_size=1,
        replicas=1,
        fits=False,
        reason=reason,
        memory=empty,
        engine_args={},
        command=(),
        decode_tokens_per_s=0.0,
    )


def _llamacpp_candidate(
    model: ModelSpec, art: Artifact, hw: Hardware, budget: int, repack: tuple[int, int], kv: str, request: Request
) -> Candidate:
    def estimate(n_ctx: int) -> memory.MemoryEstimate:
        return llamacpp_estimate(model, art.weights_bytes, repack, budget, n_ctx, kv)

    try:
        estimate(memory.LLAMACPP_CTX_PAD)
    except ValueError as exc:  # e.g. a quantized cache whose rows are not whole blocks for this model
        return _unrunnable_llamacpp(model, art, hw, kv, request, f"cannot run: {exc}")
    # the model's limit, padded the way llama.cpp pads n_ctx (at least one 256-token step)
    limit = max(memory.LLAMACPP_CTX_PAD, (model.max_context // memory.LLAMACPP_CTX_PAD) * memory.LLAMACPP_CTX_PAD)
    max_context = min(
        model.max_context, memory.llamacpp_max_context(lambda n: estimate(n).total_bytes <= budget, limit)
    )
    est_max = estimate(max(max_context, memory.LLAMACPP_CTX_PAD))
    context, fits, reason, shortfall = _decide_context(request, model, max_context, est_max, est_max.kv_bytes_per_token)
    est = estimate(min(context, limit)) if context else est_max
    if request.concurrency > 1:
        fits, shortfall = False, 0
        reason = (
            "llama-cpp-python's server answers one request at a time; "
            f"--concurrency {request.concurrency:g} needs vLLM on a GPU"
        )
    elif fits:
        repacked = est.parts["repacked_weights_bytes"]
        reason = (
            f"fits: {format_size(est.weights_bytes)} weights"
            + (f" ({format_size(repacked)} repacked for this CPU, read without mmap)" if repacked else " (mmap)")
            + f" + {format_size(est.kv_cache_bytes)} KV + {format_size(est.overhead_bytes)} buffers/process "
            f"in {format_size(budget)} of RAM"
        )
        if est.total_bytes > hw.memory.available_bytes:
            reason += (
                f"; only {format_size(hw.memory.available_bytes)} is free now: close other programs or plan a "
                "shorter --context"
            )
    elif max_context == 0 and context <= model.max_context:
        reason = (
            f"does not fit: {format_size(est.total_bytes)} at {context:,} tokens "
            f"exceeds the {format_size(budget)} RAM budget"
        )
        shortfall = max(0, est.total_bytes - budget)
    threads = max(1, hw.cpu.physical_cores)
    args = llamacpp.engine_args(
        # not downloaded yet: an hf:// reference that `up` resolves after downloading
        model_path=art.path or f"hf://{art.repo}/{art.file}",
        alias=_served_name(model),
        n_ctx=context,
        type_k=kv,
        type_v=kv,
        threads=threads,
        threads_batch=max(threads, hw.cpu.logical_cores),
        host=request.host,
        port=request.port,
        use_mmap=not repack[1],
        chat_template=model.chat_template,
    )
    bandwidth = hw.cpu.memory_bandwidth_gbps or CPU_TYPICAL_BANDWIDTH_GBPS
    speed = _decode_speed(bandwidth, CPU_DECODE_EFFICIENCY, art.weights_bytes, est.kv_bytes_per_token, context)
    return Candidate(
        engine="llamacpp",
        device="cpu",
        precision=art.precision,
        artifact=art,
        kv_cache_dtype=kv,
        context=context,
        max_context=max_context,
        concurrency=1.0 if fits else 0.0,
        tensor_parallel_size=1,
        replicas=1,
        fits=fits,
        reason=reason,
        memory=est,
        engine_args=args,
        command=tuple(llamacpp.command(args)),
        decode_tokens_per_s=speed,
        meets_target=fits and context >= _target(request, model),
        shortfall_bytes=shortfall,
    )


# ----------------------------------------------------------------------------- ranking


def _rank_key(c: Candidate, request: Request) -> tuple:
    """Smaller sorts first. See README 'How the planner chooses'."""
    device = 0 if c.device == "gpu" else 1
    if request.context == "max":
        head: tuple = (not c.fits, -c.context, device)
    else:
        # auto / N: candidates that reach the target first; among those that do not, the longest context.
        head = (not c.fits, not c.meets_target, -c.context if not c.meets_target else 0, device)
    if request.prefer == "speed":
        tail: tuple = (-round(c.decode_tokens_per_s, 3), -c.quality)
    elif request.prefer == "quality" or c.device == "gpu":
        # A GPU gets the highest precision that reaches the target.
        tail = (-c.quality, -round(c.decode_tokens_per_s, 3))
    else:
        # balanced on a CPU: decoding is memory-bound, so a 4-bit-class quant first, then quality.
        tail = (c.precision not in FOUR_BIT, -c.quality)
    return (*head, *tail, c.tensor_parallel_size, -c.context, -c.shortfall_bytes if not c.fits else 0)


def _validate(request: Request, model: ModelSpec) -> None:
    if isinstance(request.context, int):
        if request.context < 1:
            raise UsageError("--context must be a positive number of tokens, 'auto' or 'max'.")
    elif request.context not in ("auto", "max"):
        raise UsageError(f"--context must be a number of tokens, 'auto' or 'max', not {request.context!r}.")
    if request.min_context is not None and request.min_context < 1:
        raise UsageError("--min-context must be at least 1 token.")
    if not (math.isfinite(request.concurrency) and 1 <= request.concurrency <= 100_000):
        raise UsageError("--concurrency must be a number of requests from 1 to 100000.")
    if request.min_context is not None and request.min_context > model.max_context:
        raise UsageError(
            f"--min-context {request.min_context:,} is beyond {model.id}'s limit of {model.max_context:,} tokens."
        )
    if request.engine not in (None, "vllm", "llamacpp"):
        raise UsageError(f"--engine must be vllm or llamacpp, not {request.engine!r}.")
    if request.prefer not in ("balanced", "quality", "speed"):
        raise UsageError(f"--prefer must be balanced, quality or speed, not {request.prefer!r}.")
    util = request.gpu_memory_utilization
    if util is not None and not 0 < util <= 1:
        raise UsageError("--gpu-memory-utilization must be a fraction in (0, 1], such as 0.9.")
    if request.kv_cache_dtype and request.kv_cache_dtype not in {*vllm.KV_TYPES, *llamacpp.KV_TYPES, *SIXTEEN_BIT_KV}:
        raise UsageError(
            f"--kv-cache-dtype {request.kv_cache_dtype!r} is not one qwen-deploy plans; use auto/f16, fp8 (vLLM), "
            "q8_0 or q4_0 (llama.cpp)."
        )
    if request.kv_cache_dtype == "fp8" and request.engine == "llamacpp":
        raise UsageError("--kv-cache-dtype fp8 is a vLLM cache type; llama.cpp takes f16, q8_0 or q4_0.")
    if request.kv_cache_dtype in ("q8_0", "q4_0") and request.engine == "vllm":
        raise UsageError(
            f"--kv-cache-dtype {request.kv_cache_dtype} is a llama.cpp cache type; vLLM takes auto or fp8."
        )
    if request.precision:
        known = {a.precision for a in model.artifacts} | (
            {"fp16"} if any(a.precision == "bf16" for a in model.artifacts) else set()
        )
        if request.precision not in known:
            raise UsageError(
                f"--precision {request.precision!r} is not available for {model.id}; "
                f"choose one of: {', '.join(sorted(known))}."
            )


def plan(model: ModelSpec, hardware: Hardware, request: Request | None = None) -> Plan:
    """Evaluate every candidate and rank them; choice is None when nothing fits."""
    request = request or Request()
    _validate(request, model)
    if request.min_context is None:
        request = replace(request, min_context=min(DEFAULT_MIN_CONTEXT, model.max_context))
    candidates: list[Candidate] = []
    if request.engine in (None, "vllm"):
        candidates += _vllm_candidates(model, hardware, request)
    if request.engine in (None, "llamacpp"):
        candidates += _llamacpp_candidates(model, hardware, request)
    ranked = sorted(candidates, key=lambda c: _rank_key(c, request))
    choice = ranked[0] if ranked and ranked[0].fits else None
    return Plan(model=model, hardware=hardware, request=request, choice=choice, candidates=tuple(ranked))


def nothing_fits_message(p: Plan) -> str:
    """One paragraph: why nothing fits, ending in 'To fix:' with the nearest candidates."""
    if not p.candidates:
        if not p.hardware.gpus and p.request.engine == "vllm":
            return (
                "Nothing fits: vLLM needs an NVIDIA GPU and none was found. "
                "To fix: drop --engine vllm, or describe a GPU with --gpu NAME."
            )
        return (
            f"Nothing fits: {p.model.id} has no artifact for the requested engine/precision on this hardware. "
            "To fix: drop --engine/--precision, or pass --model with a GGUF file or HF folder."
        )
    nearest = sorted((c for c in p.candidates if c.shortfall_bytes > 0), key=lambda c: c.shortfall_bytes)[:3] or list(
        p.candidates[:3]
    )
    lines = [f"Nothing fits {p.model.id} on this hardware."]
    hints = []
    for c in nearest:
        more = f" (needs {format_size(c.shortfall_bytes)} more)" if c.shortfall_bytes else ""
        hints.append(f"{c.label()}: {c.reason}{more}")
    lines.append("Nearest: " + "; ".join(hints) + ".")
    fixes = []
    if isinstance(p.request.context, int) or (p.request.min_context or 0) > 1024:
        fixes.append("a shorter --context/--min-context")
    if p.request.concurrency > 1:
        fixes.append("a lower --concurrency")
    if p.request.kv_cache_dtype not in ("q4_0",):
        fixes.append("a smaller KV cache (--kv-cache-dtype q8_0 or q4_0 on CPU, fp8 on GPU)")
    fixes.append("more memory (--ram/--vram, or a bigger GPU with --gpu NAME)")
    lines.append("To fix: try " + ", or ".join(fixes) + ".")
    return " ".join(lines)
