"""llama.cpp candidates: every GGUF artifact × KV cache type, each at the longest context its memory allows
(llama.cpp's own arithmetic, engines/llamacpp/memory.py). Shared by the engines built on llama.cpp."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from qwen_deploy import speed as sp
from qwen_deploy.candidates import (
    Candidate,
    Request,
    decide_context,
    fill_bounded,
    ram_budget,
    served_name,
    target,
    wanted_context,
)
from qwen_deploy.engines.llamacpp import memory as lm
from qwen_deploy.hardware.types import Hardware
from qwen_deploy.memory import DeviceMemory, MemoryEstimate, empty_estimate
from qwen_deploy.model.types import Artifact, ModelSpec
from qwen_deploy.units import format_size

OFFLOAD_BACKENDS = ("cuda", "metal")  # GPUs llama.cpp offloads layers to (gpu_plan.py)

DEFAULT_N_BATCH = 512
DEFAULT_N_UBATCH = 512


def tensors_of(model: ModelSpec, art: Artifact) -> tuple[tuple[str, str, int, int, int], ...]:
    """The GGUF's tensor table: exact when the file was read, else estimated from the geometry."""
    return art.tensors or lm.estimate_gguf_tensors(
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


def geometry(model: ModelSpec) -> dict[str, Any]:
    """The model's shape in the keywords llama.cpp's memory functions take (memory.py, llama_server/memory.py)."""
    return {
        "layers": model.layers,
        "swa_layers": len(model.sliding_window_layers),
        "kv_heads": model.kv_heads,
        "head_dim": model.head_dim,
        "value_head_dim": model.value_head_dim,
        "n_head": model.attention_heads,
        "n_embd": model.hidden_size,
        "n_ff": model.intermediate_size,
        "n_vocab": model.vocab_size,
        "n_swa": model.sliding_window,
        "tokenizer_merges": model.tokenizer_merges,
    }


def estimate(
    model: ModelSpec,
    weights_bytes: int,
    repack: tuple[int, int],
    budget: int,
    n_ctx: int,
    kv: str,
    flash_attn: bool = True,
) -> MemoryEstimate:
    """llama.cpp's memory for this model at n_ctx on the CPU; mmap only when nothing is repacked (no double
    weights)."""
    source, repacked = repack
    return lm.llamacpp_memory(
        **geometry(model),
        weights_bytes=weights_bytes,
        repacked_bytes=repacked,
        repacked_source_bytes=source,
        budget_bytes=budget,
        config=lm.LlamacppConfig(n_ctx=n_ctx, type_k=kv, type_v=kv, flash_attn=flash_attn, use_mmap=not repacked),
    )


def cpu_settings(hw: Hardware, use_mmap: bool) -> dict[str, Any]:
    """The CPU knobs every llama.cpp candidate sets explicitly (the servers' defaults differ)."""
    threads = max(1, hw.cpu.physical_cores)
    return {
        "n_batch": DEFAULT_N_BATCH,
        "n_ubatch": DEFAULT_N_UBATCH,
        "n_threads": threads,
        "n_threads_batch": max(threads, hw.cpu.logical_cores),
        "flash_attn": True,
        "use_mmap": use_mmap,
        "n_gpu_layers": 0,
    }


def unrunnable(engine: str, model: ModelSpec, art: Artifact, kv: str, request: Request, reason: str) -> Candidate:
    return Candidate(
        engine=engine,
        device="cpu",
        precision=art.precision,
        artifact=art,
        kv_cache_dtype=kv,
        context=wanted_context(request),
        max_context=0,
        concurrency=0.0,
        tensor_parallel_size=1,
        replicas=1,
        fits=False,
        reason=reason,
        memory=empty_estimate(art.weights_bytes),
        decode_tokens_per_s=0.0,
        served_name=served_name(model),
        host=request.host,
        port=request.port,
        runnable=False,
    )


def cpu_candidates(
    engine: str, kv_types: tuple[str, ...], model: ModelSpec, hw: Hardware, request: Request, build=None
) -> list[Candidate]:
    """One candidate per GGUF artifact and KV type, on the CPU: `build(engine, model, art, hw, budget, repack,
    kv, request)` makes each (llama-cpp-python's server by default; llama-server passes its own)."""
    from qwen_deploy import engines

    build = build or _cpu_candidate
    budget = ram_budget(hw)
    impl = engines.get(engine)
    out = []
    for art in model.artifacts:
        if art.format != "gguf" or (request.precision and request.precision != art.precision):
            continue
        repack = lm.llamacpp_repack(tensors_of(model, art), hw.cpu.flags)
        for kv in kv_types:
            if request.kv_cache_dtype and impl.kv_class(request.kv_cache_dtype) != kv:
                continue
            out.append(build(engine, model, art, hw, budget, repack, kv, request))
    return out


def cpu_device(est: MemoryEstimate, budget: int, compute_part: str) -> DeviceMemory:
    """The one device of a CPU plan: `compute_part` names the compute buffer's part (llama-cpp-python counts
    what stays resident, llama-server the whole reserve); a prompt cache, where the engine has one, is other."""
    p = est.parts
    return DeviceMemory(
        name="CPU",
        model_bytes=est.weights_bytes,
        kv_bytes=est.kv_cache_bytes,
        compute_bytes=p[compute_part] + p["work_buffer_bytes"],
        budget_bytes=budget,
        other_bytes=p["output_buffer_bytes"] + p["process_bytes"] + p["tokenizer_merges_bytes"]
        + p.get("prompt_cache_bytes", 0),
    )  # fmt: skip


def cpu_candidate(
    engine: str, model: ModelSpec, art: Artifact, kv: str, request: Request, rates: sp.Rates, est: MemoryEstimate,
    cpu: DeviceMemory, *, context: int, max_context: int, fits: bool, reason: str, shortfall: int, slots: int,
    settings: dict,
) -> Candidate:  # fmt: skip
    """A CPU candidate of either llama.cpp server: its memory on the one device, its speeds at this context."""
    return Candidate(
        engine=engine,
        device="cpu",
        precision=art.precision,
        artifact=art,
        kv_cache_dtype=kv,
        context=context,
        max_context=max_context,
        concurrency=float(slots) if fits else 0.0,
        tensor_parallel_size=1,
        replicas=1,
        fits=fits,
        reason=reason,
        memory=replace(est, devices=(cpu,)),
        decode_tokens_per_s=sp.decode_tokens_per_s(model, art, kv, rates, min(context, sp.SPEED_CONTEXT)),
        prefill_tokens_per_s=sp.prefill_tokens_per_s(model, rates, context),
        fill_seconds=sp.fill_seconds(model, rates, context),
        parallel=slots,
        served_name=served_name(model),
        host=request.host,
        port=request.port,
        settings=settings,
        meets_target=fits and context >= target(request, model),
        shortfall_bytes=shortfall,
        gpu_layers=f"0/{model.layers + 1}",
    )


def _cpu_candidate(
    engine: str,
    model: ModelSpec,
    art: Artifact,
    hw: Hardware,
    budget: int,
    repack: tuple[int, int],
    kv: str,
    request: Request,
) -> Candidate:
    def at(n_ctx: int) -> MemoryEstimate:
        return estimate(model, art.weights_bytes, repack, budget, n_ctx, kv)

    try:
        at(lm.LLAMACPP_CTX_PAD)
    except ValueError as exc:  # e.g. a quantized cache whose rows are not whole blocks for this model
        return unrunnable(engine, model, art, kv, request, f"cannot run: {exc}")
    # the model's limit, padded the way llama.cpp pads n_ctx (at least one 256-token step)
    pad = lm.LLAMACPP_CTX_PAD
    limit = max(pad, (model.max_context // pad) * pad)
    memory_max = min(model.max_context, lm.llamacpp_max_context(lambda n: at(n).total_bytes <= budget, limit))
    rates = sp.cpu_rates(hw, art.precision, kv)
    max_context, fill_note = fill_bounded(request, model, memory_max, rates, pad)
    est_max = at(max(max_context, pad))
    context, fits, reason, shortfall = decide_context(request, model, max_context, est_max.kv_bytes_per_token)
    est = at(min(context, limit)) if context else est_max
    if request.concurrency > 1:
        fits, shortfall = False, 0
        reason = (
            "llama-cpp-python's server answers one request at a time; "
            f"--concurrency {request.concurrency:g} needs a server with parallel slots or a GPU engine"
        )
    elif fits:
        repacked = est.parts["repacked_weights_bytes"]
        reason = (
            f"fits: {format_size(est.weights_bytes)} weights"
            + (f" ({format_size(repacked)} repacked for this CPU, read without mmap)" if repacked else " (mmap)")
            + f" + {format_size(est.kv_cache_bytes)} KV + {format_size(est.overhead_bytes)} buffers/process "
            f"in {format_size(budget)} of RAM" + fill_note
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
    cpu = cpu_device(est, budget, "compute_resident_bytes")
    settings = {**cpu_settings(hw, use_mmap=not repack[1]), "chat_template": model.chat_template}
    return cpu_candidate(
        engine, model, art, kv, request, rates, est, cpu, context=context, max_context=max_context, fits=fits,
        reason=reason, shortfall=shortfall, slots=1, settings=settings,
    )  # fmt: skip
