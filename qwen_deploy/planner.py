"""Candidates -> fit -> rank -> Plan. Pure: the same Hardware, ModelSpec and Request always give the same
plan, and nothing here reads files, the environment or the clock.

Every registered engine is asked for its candidates (engine × precision × KV type × device, each with its
memory, context, concurrency and a sentence saying why it fits or not); one policy orders them all. The
policy is documented in README.md ("How the planner chooses"). No engine is named here.
"""

from __future__ import annotations

import math
from dataclasses import replace

from qwen_deploy import engines
from qwen_deploy.candidates import (
    DEFAULT_MIN_CONTEXT,
    FOUR_BIT,
    PLAN_SCHEMA,
    SIXTEEN_BIT_KV,
    Candidate,
    Plan,
    Request,
    ram_budget,
)
from qwen_deploy.errors import UsageError
from qwen_deploy.hardware.types import Hardware
from qwen_deploy.model.types import ModelSpec
from qwen_deploy.units import format_size

__all__ = ["PLAN_SCHEMA", "Candidate", "Plan", "Request", "nothing_fits_message", "plan", "ram_budget"]


def _rank_key(c: Candidate, request: Request, longest_short: int = 0) -> tuple:
    """Smaller sorts first. See README 'How the planner chooses'. `longest_short`: the longest context among
    the fitting candidates that do not reach the target."""
    device = 0 if c.device == "gpu" else 1
    preference = c.engine_impl.preference(request)
    if request.context == "max":
        head: tuple = (not c.fits, preference, -c.context, device)
    else:
        # auto / N: candidates that reach the target first; among those that do not, every context at least
        # half the longest counts alike (a GPU's 10K at 89 tok/s before a CPU's 17K at 6, which takes ten
        # minutes to fill), shorter ones by their length.
        alike = c.meets_target or 2 * c.context >= longest_short
        head = (not c.fits, preference, not c.meets_target, not alike, 0 if alike else -c.context, device)
    spilled = _spilled(c)
    if request.prefer == "speed":
        tail: tuple = (-round(c.decode_tokens_per_s, 3), -c.quality)
    elif request.prefer == "quality" or (c.device == "gpu" and not spilled):
        # A GPU gets the highest precision that reaches the target, with every layer on the GPU before one
        # that leaves layers on the CPU (a quantized KV cache costs less than CPU layers).
        tail = (spilled, -c.quality, -round(c.decode_tokens_per_s, 3))
    else:
        # balanced on a CPU (and for the CPU's share of a split): decoding is memory-bound, so a 4-bit-class
        # quant first, then quality.
        tail = (spilled, c.precision not in FOUR_BIT, -c.quality)
    return (*head, *tail, c.tensor_parallel_size, -c.context, -c.shortfall_bytes if not c.fits else 0)


def _spilled(c: Candidate) -> bool:
    """Some of the model's layers stay on the CPU ('k/n' with k < n)."""
    if not c.gpu_layers or c.device != "gpu":
        return False
    on, _, of = c.gpu_layers.partition("/")
    return on != of


def _validate(request: Request, model: ModelSpec) -> None:
    if isinstance(request.context, bool) or not isinstance(request.context, (int, str)):
        raise UsageError(f"--context must be a number of tokens, 'auto' or 'max', not {request.context!r}.")
    if isinstance(request.context, int):
        if request.context < 1:
            raise UsageError("--context must be a positive number of tokens, 'auto' or 'max'.")
    elif request.context not in ("auto", "max"):
        raise UsageError(f"--context must be a number of tokens, 'auto' or 'max', not {request.context!r}.")
    if request.min_context is not None and (isinstance(request.min_context, bool) or request.min_context < 1):
        raise UsageError("--min-context must be at least 1 token.")
    if not (math.isfinite(request.concurrency) and 1 <= request.concurrency <= 100_000):
        raise UsageError("--concurrency must be a number of requests from 1 to 100000.")
    if request.min_context is not None and request.min_context > model.max_context:
        raise UsageError(
            f"--min-context {request.min_context:,} is beyond {model.id}'s limit of {model.max_context:,} tokens."
        )
    names = engines.names()
    if request.engine is not None and request.engine not in names:
        raise UsageError(f"--engine must be one of {', '.join(names)}, not {request.engine!r}.")
    if request.prefer not in ("balanced", "quality", "speed"):
        raise UsageError(f"--prefer must be balanced, quality or speed, not {request.prefer!r}.")
    layers = request.gpu_layers
    if not (layers in ("auto", "all") or (isinstance(layers, int) and not isinstance(layers, bool) and layers >= 0)):
        raise UsageError(f"--gpu-layers must be a number of layers, 'all' or 'auto', not {layers!r}.")
    util = request.gpu_memory_utilization
    if util is not None and not (math.isfinite(util) and 0 < util <= 1):
        raise UsageError("--gpu-memory-utilization must be a fraction in (0, 1], such as 0.9.")
    kv = request.kv_cache_dtype
    if kv:
        chosen = [engines.get(request.engine)] if request.engine else engines.all_engines()
        takers = [e for e in chosen if e.accepts_kv(kv)]
        if not takers:
            if request.engine:
                engine = chosen[0]
                raise UsageError(
                    f"--kv-cache-dtype {kv} is not a cache type {engine.label} takes; it takes "
                    f"{', '.join(engine.kv_types)}."
                )
            offered = sorted({t for e in engines.all_engines() for t in e.kv_types} | SIXTEEN_BIT_KV)
            raise UsageError(f"--kv-cache-dtype {kv!r} is not one qwen-deploy plans; use one of {', '.join(offered)}.")
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
    found: list[Candidate] = []
    for engine in engines.all_engines():
        if request.engine in (None, engine.name):
            found += engine.candidates(model, hardware, request)
    longest_short = max((c.context for c in found if c.fits and not c.meets_target), default=0)
    ranked = sorted(found, key=lambda c: _rank_key(c, request, longest_short))
    choice = ranked[0] if ranked and ranked[0].fits else None
    return Plan(model=model, hardware=hardware, request=request, choice=choice, candidates=tuple(ranked))


def nothing_fits_message(p: Plan) -> str:
    """One paragraph: why nothing fits, ending in 'To fix:' with the nearest candidates."""
    if not p.candidates:
        if p.request.engine:
            why = engines.get(p.request.engine).no_candidates(p.model, p.hardware)
            if why:
                return why
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
