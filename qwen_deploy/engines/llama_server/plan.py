"""llama-server candidates on the CPU: every GGUF artifact × KV cache type, with `--parallel` slots sized from
--concurrency, each slot a KV stream of its own holding the plan's whole context (memory.py).

Slots: ceil(--concurrency) of them, `--ctx-size` = slots × context, `--no-kv-unified`: each request gets
exactly the planned context and no request can take another's room; the compute buffer and the attention
cost follow one slot's context, not all of them together (a unified cache would let one request grow to
the total, and the mask and attention of every ubatch would span every slot's cells).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from qwen_deploy import speed
from qwen_deploy.candidates import (
    Candidate,
    Request,
    decide_context,
    fill_bounded,
)
from qwen_deploy.engines.llama_server import memory as sm
from qwen_deploy.engines.llamacpp import memory as lm
from qwen_deploy.engines.llamacpp import plan as llamacpp_plan
from qwen_deploy.engines.llamacpp.plan import cpu_settings, geometry, unrunnable
from qwen_deploy.hardware.types import Hardware
from qwen_deploy.memory import MemoryEstimate
from qwen_deploy.model.types import Artifact, ModelSpec
from qwen_deploy.units import format_size

PAD = lm.LLAMACPP_CTX_PAD


def slots_for(request: Request) -> int:
    """--parallel: one slot per request the plan must serve at once (2.5 requests need 3 slots)."""
    return max(1, math.ceil(request.concurrency - 1e-9))


def estimate(model: ModelSpec, art: Artifact, repack: tuple[int, int], budget: int, context: int, slots: int,
             kv: str, settings: dict[str, Any]) -> MemoryEstimate:  # fmt: skip
    """llama-server's RAM with `slots` slots of `context` tokens each (--ctx-size slots × context)."""
    source, repacked = repack
    return sm.llama_server_memory(
        **geometry(model),
        weights_bytes=art.weights_bytes,
        repacked_bytes=repacked,
        repacked_source_bytes=source,
        budget_bytes=budget,
        config=sm.ServerConfig(
            n_ctx=slots * lm.pad_context(context),
            n_parallel=slots,
            kv_unified=False,
            type_k=kv,
            type_v=kv,
            n_batch=settings["n_batch"],
            n_ubatch=settings["n_ubatch"],
            flash_attn=settings["flash_attn"],
            use_mmap=settings["use_mmap"],
            cache_ram_mib=settings["cache_ram_mib"],
        ),
    )


def settings_for(hw: Hardware, repack: tuple[int, int], slots: int, chat_template: bool) -> dict[str, Any]:
    return {
        **cpu_settings(hw, use_mmap=not repack[1]),
        "parallel": slots,
        "kv_unified": False,
        "cache_ram_mib": 0,  # the prompt cache (8 GiB by default) would hold copies of finished requests' KV
        "chat_template": chat_template,
    }


def cpu_candidates(engine: str, kv_types: tuple[str, ...], model: ModelSpec, hw: Hardware, request: Request):
    return llamacpp_plan.cpu_candidates(engine, kv_types, model, hw, request, build=_candidate)


def max_slot_context(model: ModelSpec, art: Artifact, repack, budget: int, slots: int, kv: str, settings) -> int:
    """The longest context per slot (a multiple of 256, within the model's limit) whose memory fits."""
    limit = max(PAD, (model.max_context // PAD) * PAD)

    def fits(n: int) -> bool:
        return estimate(model, art, repack, budget, n, slots, kv, settings).total_bytes <= budget

    return min(model.max_context, lm.llamacpp_max_context(fits, limit))


def _candidate(engine: str, model: ModelSpec, art: Artifact, hw: Hardware, budget: int, repack: tuple[int, int],
               kv: str, request: Request) -> Candidate:  # fmt: skip
    slots = slots_for(request)
    settings = settings_for(hw, repack, slots, model.chat_template)
    try:
        estimate(model, art, repack, budget, PAD, 1, kv, settings)
    except ValueError as exc:
        return unrunnable(engine, model, art, kv, request, f"cannot run: {exc}")
    rates = speed.cpu_rates(hw, art.precision, kv)
    memory_max = max_slot_context(model, art, repack, budget, slots, kv, settings)
    max_context, fill_note = fill_bounded(request, model, memory_max, rates, PAD)
    per_token = estimate(model, art, repack, budget, max(max_context, PAD), 1, kv, settings).kv_bytes_per_token
    context, fits, reason, shortfall = decide_context(request, model, max_context, per_token * slots)
    limit = max(PAD, (model.max_context // PAD) * PAD)
    est = estimate(model, art, repack, budget, min(max(context, PAD), limit), slots, kv, settings)
    if fits:
        shared = f"{slots} slots of {context:,} tokens each" if slots > 1 else f"1 slot of {context:,} tokens"
        reason = (
            f"fits: {shared}; {format_size(est.weights_bytes)} weights + {format_size(est.kv_cache_bytes)} KV + "
            f"{format_size(est.overhead_bytes)} buffers/process in {format_size(budget)} of RAM" + fill_note
        )
        if est.total_bytes > hw.memory.available_bytes:
            reason += f"; only {format_size(hw.memory.available_bytes)} is free now"
    elif slots > 1 and memory_max > 0:
        most = _most_slots(model, art, repack, budget, context, kv, settings, slots)
        reason = (
            f"does not fit: {slots} slots × {context:,} tokens = {slots * context:,} tokens of KV cache need "
            f"{format_size(est.total_bytes)} in all, more than the {format_size(budget)} RAM budget; "
            + (
                f"at most {most} slot{'s' if most != 1 else ''} of {context:,} tokens fit{'s' if most == 1 else ''}"
                if most
                else f"not one slot of {context:,} tokens fits"
            )
        )
        shortfall = max(0, est.total_bytes - budget)
    elif memory_max == 0:
        reason = (
            f"does not fit: {format_size(est.total_bytes)} at {slots} × {context:,} tokens exceeds the "
            f"{format_size(budget)} RAM budget"
        )
        shortfall = max(0, est.total_bytes - budget)
    cpu = llamacpp_plan.cpu_device(est, budget, "compute_buffer_bytes")
    return llamacpp_plan.cpu_candidate(
        engine, model, art, kv, request, rates, est, cpu, context=context, max_context=max_context, fits=fits,
        reason=reason, shortfall=shortfall, slots=slots, settings=settings,
    )  # fmt: skip


def _most_slots(model, art, repack, budget, context, kv, settings, slots) -> int:
    for n in range(slots - 1, 0, -1):
        if estimate(model, art, repack, budget, context, n, kv, settings).total_bytes <= budget:
            return n
    return 0


def from_llamacpp(c: Candidate, model: ModelSpec) -> Candidate:
    """A llama-cpp-python CPU candidate as llama-server would run it (one slot, the same context, KV type,
    threads, batch sizes and weights loading), with llama-server's own memory: what a container of llama.cpp's
    server image runs for that plan. The model buffers are the same llama.cpp's (c.memory.weights_bytes)."""
    s = c.settings
    settings = {**s, "parallel": 1, "kv_unified": False, "cache_ram_mib": 0}
    config = sm.ServerConfig(
        n_ctx=lm.pad_context(c.context),
        n_parallel=1,
        type_k=c.kv_cache_dtype,
        type_v=c.kv_cache_dtype,
        n_batch=s["n_batch"],
        n_ubatch=s["n_ubatch"],
        flash_attn=s["flash_attn"],
        cache_ram_mib=0,
    )
    est = sm.llama_server_memory(
        **geometry(model),
        weights_bytes=c.memory.weights_bytes,  # already the loaded buffers (repacked, mmap or not)
        budget_bytes=c.memory.budget_bytes,
        config=config,
    )
    return replace(c, engine="llama-server", settings=settings, memory=est, parallel=1, concurrency=1.0)
