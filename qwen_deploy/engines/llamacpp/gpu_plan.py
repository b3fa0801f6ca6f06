"""llama.cpp candidates on a GPU: CUDA (full or partial offload) and Apple Silicon (Metal), each with its
per-device memory by llama.cpp's own rules (offload.py) and its budgets: a CUDA GPU's free memory, the
Metal working set less a margin, and the machine's RAM for what stays on the host (on a Mac the Metal
buffers are RAM too).

Policy (README "How the planner chooses"): all layers on the GPU with the longest context that fits there;
only when even the shortest useful context does not fit fully offloaded are layers spilled to the CPU (the
most that still fit). A quantized KV cache is its own candidate, so a full offload with 8-bit KV can win over
spilling layers. `--gpu-layers N|all|auto` pins the split.
"""

from __future__ import annotations

from typing import Any

from qwen_deploy import speed as sp
from qwen_deploy.candidates import (
    SPEED_CONTEXT,
    Candidate,
    Request,
    decide_context,
    ram_budget,
    served_name,
    target,
    wanted_context,
)
from qwen_deploy.engines.llamacpp import memory as lm
from qwen_deploy.engines.llamacpp import offload
from qwen_deploy.engines.llamacpp.plan import OFFLOAD_BACKENDS, cpu_settings
from qwen_deploy.hardware.types import GPU, Hardware
from qwen_deploy.memory import DeviceMemory, MemoryEstimate, empty_estimate
from qwen_deploy.model.types import Artifact, ModelSpec
from qwen_deploy.units import MiB, format_size

# The Metal working set is shared with the window server and other GPU clients of the Mac: plan within it
# less this margin (an allowance, not a measurement).
METAL_MARGIN_BYTES = 512 * MiB
# llama.cpp's CUDA backend is built for compute capability 5.0 and newer (ggml-cuda CMake architectures);
# an older card cannot run its kernels.
CUDA_MIN_CAPABILITY = (5, 0)
# Decode reads the weights (and the live KV) once per token: this share of peak bandwidth on a GPU (an
# assumption, like vLLM's; BENCHMARKS.md), and the CPU's effective bandwidth for the layers left there.
GPU_DECODE_EFFICIENCY = 0.7


def geometry(model: ModelSpec) -> offload.Geometry:
    arch = model.architecture.lower()
    return offload.Geometry(
        layers=model.layers,
        hidden=model.hidden_size,
        intermediate=model.intermediate_size,
        attention_heads=model.attention_heads,
        kv_heads=model.kv_heads,
        head_dim=model.head_dim,
        vocab=model.vocab_size,
        tied=model.tied_embeddings,
        qk_norm=arch.startswith("qwen3"),
        qkv_bias=arch.startswith("qwen2"),
        value_head_dim=model.value_head_dim,
    )


def tensors(model: ModelSpec, art: Artifact) -> list[tuple[str, str, int, int, int]]:
    """The GGUF's tensors: its own table when the file was read; else llama-quantize's type mix for the
    precision (the output and attn_v/ffn_down layers it gives more bits), scaled to the file's size."""
    if art.tensors:
        return list(art.tensors)
    if art.precision in offload.FTYPE_DEFAULT:
        return offload.scaled_tensors(geometry(model), art.precision, art.weights_bytes)
    from qwen_deploy.engines.llamacpp.plan import tensors_of

    return list(tensors_of(model, art))


def _budgets(gpus: list[GPU]) -> dict[str, int]:
    if gpus[0].backend == "metal":
        return {"MTL0": max(0, gpus[0].memory_total_bytes - METAL_MARGIN_BYTES)}
    return {f"CUDA{i}": offload.cuda_budget_bytes(min(g.memory_free_bytes, g.cuda_total)) for i, g in enumerate(gpus)}


def _blocker(gpus: list[GPU]) -> str | None:
    gpu = gpus[0]
    if gpu.backend == "cuda" and gpu.cc < CUDA_MIN_CAPABILITY:
        return (
            f"llama.cpp's CUDA backend needs compute capability {CUDA_MIN_CAPABILITY[0]}.{CUDA_MIN_CAPABILITY[1]} "
            f"or newer; {gpu.name} has {gpu.compute_capability}"
        )
    return None


def gpu_candidates(engine: str, kv_types: tuple[str, ...], model: ModelSpec, hw: Hardware, request: Request):
    """One candidate per GGUF artifact and KV type on the machine's GPU(s) (none on a machine without)."""
    from qwen_deploy import engines

    gpus = [g for g in hw.gpus if g.backend in OFFLOAD_BACKENDS]
    if not gpus or request.gpu_layers == 0:
        return []
    impl = engines.get(engine)
    out = []
    for art in model.artifacts:
        if art.format != "gguf" or (request.precision and request.precision != art.precision):
            continue
        table = tensors(model, art)
        for kv in kv_types:
            if request.kv_cache_dtype and impl.kv_class(request.kv_cache_dtype) != kv:
                continue
            first = _candidate(engine, model, art, table, hw, gpus, kv, request)
            out.append(first)
            goal = target(request, model)
            if request.gpu_layers == "auto" and first.runnable and first.max_context < goal:
                # all layers on the GPU do not reach the context target: also the split that does (the
                # ranking takes a full offload first when one reaches it)
                split = _candidate(engine, model, art, table, hw, gpus, kv, request, reach=goal)
                if split.fits and split.gpu_layers != first.gpu_layers and split.context >= goal:
                    out.append(split)
    return out


class _Sizer:
    """Breakdowns of one artifact × KV type on the machine, at any -ngl and n_ctx, with the budgets."""

    def __init__(self, model: ModelSpec, table, hw: Hardware, gpus: list[GPU], kv: str):
        self.model, self.table, self.kv = model, table, kv
        self.geometry = geometry(model)
        self.backend = gpus[0].backend
        self.n_gpus = len(gpus) if self.backend == "cuda" else 1
        self.budgets = _budgets(gpus)
        self.ram = ram_budget(hw)
        self.host_extra = lm.LLAMACPP_PROCESS_BYTES + model.tokenizer_merges * lm.LLAMACPP_BYTES_PER_MERGE

    def breakdown(self, ngl: int, n_ctx: int) -> dict[str, dict[str, int]]:
        return offload.device_breakdown(
            geometry=self.geometry,
            tensors=self.table,
            n_gpu_layers=ngl,
            n_ctx=n_ctx,
            type_k=self.kv,
            type_v=self.kv,
            flash_attn=True,
            n_ubatch=512,
            n_batch=512,
            backend=self.backend,
            n_gpus=self.n_gpus,
            budgets=self.budgets,
        )

    def host_total(self, b: dict[str, dict[str, int]]) -> int:
        """RAM it takes: the host's buffers and the process, and on a Mac the Metal buffers too (unified)."""
        host = b.get("CPU", {}).get("total_bytes", 0) + self.host_extra
        return host + (b["MTL0"]["total_bytes"] if "MTL0" in b else 0)

    def fits(self, ngl: int, n_ctx: int) -> bool:
        b = self.breakdown(ngl, n_ctx)
        return offload.fits(b) and self.host_total(b) <= self.ram

    def max_context(self, ngl: int) -> int:
        pad = lm.LLAMACPP_CTX_PAD
        limit = max(pad, (self.model.max_context // pad) * pad)
        return min(self.model.max_context, lm.llamacpp_max_context(lambda n: self.fits(ngl, n), limit))

    def most_layers(self, n_ctx: int) -> int:
        """The largest -ngl that fits at n_ctx (GPU memory grows with it), or 0."""
        lo, hi = 0, self.geometry.layers + 1
        if not self.fits(1, n_ctx):
            return 0
        lo = 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits(mid, n_ctx):
                lo = mid
            else:
                hi = mid - 1
        return lo


def _choose_layers(sizer: _Sizer, request: Request, model: ModelSpec, reach: int | None) -> tuple[int, int, str]:
    """(-ngl, longest context at it, why this split) for the request's --gpu-layers; `reach`: the most layers
    with which that context fits (a split that reaches the context target)."""
    full = model.layers + 1
    minimum = request.min_context or 1
    asked = request.gpu_layers
    if reach is not None:
        ngl = sizer.most_layers(reach)
        return (
            ngl,
            sizer.max_context(ngl) if ngl else 0,
            (f"{full - ngl} of {full} layers stay on the CPU so that {reach:,} tokens fit; all on the GPU hold fewer"),
        )
    if asked == "all" or asked == full:
        return full, sizer.max_context(full), "all layers on the GPU (--gpu-layers)"
    if isinstance(asked, int):
        return asked, sizer.max_context(asked), f"{asked} of {full} layers on the GPU (--gpu-layers)"
    full_ctx = sizer.max_context(full)
    if full_ctx >= minimum:
        return full, full_ctx, "all layers on the GPU"
    wanted = min(request.context if isinstance(request.context, int) else minimum, model.max_context)
    ngl = sizer.most_layers(wanted)
    if ngl == 0:
        return 0, 0, "not even one layer fits"
    return (
        ngl,
        sizer.max_context(ngl),
        (f"{full - ngl} of {full} layers stay on the CPU: fully offloaded not even {minimum:,} tokens fit"),
    )


def _speed(sizer: _Sizer, b: dict[str, dict[str, int]], gpu: GPU, hw: Hardware, ngl: int) -> float:
    """Decode tokens/s: the GPU reads its layers' weights and KV at its bandwidth, the CPU the rest."""
    layers = sizer.geometry.layers
    per_layer_token = offload.kv_layer_bytes(sizer.geometry, 1, 1, sizer.kv, sizer.kv)  # one token, one layer
    on_gpu = min(layers, max(0, ngl - 1))  # -ngl k: the output layer, then k - 1 repeating layers
    gpu_bytes = sum(d["model_bytes"] for k, d in b.items() if k != "CPU" and not k.startswith("_"))
    gpu_bytes += per_layer_token * on_gpu * SPEED_CONTEXT
    cpu_bytes = b.get("CPU", {}).get("model_bytes", 0) + per_layer_token * (layers - on_gpu) * SPEED_CONTEXT
    cpu_bytes -= _embedding_bytes(sizer.table)  # the token embedding: one row read per token, not all of it
    gpu_bw = (gpu.memory_bandwidth_gbps or 300.0) * 1e9 * GPU_DECODE_EFFICIENCY
    cpu_bw = sp.cpu_decode_bandwidth(hw)
    seconds = gpu_bytes / gpu_bw + max(0, cpu_bytes) / cpu_bw
    return 1.0 / seconds if seconds > 0 else 0.0


def _embedding_bytes(table) -> int:
    return next((t[4] for t in table if t[0] == "token_embd.weight"), 0)


def _estimate(sizer: _Sizer, b: dict[str, dict[str, int]], n_ctx: int, ngl: int) -> MemoryEstimate:
    devices = []
    for name, d in b.items():
        if name.startswith("_"):
            continue
        other = d["output_bytes"] + d["overhead_bytes"] + (sizer.host_extra if name == "CPU" else 0)
        budget = sizer.budgets.get(name, sizer.ram if name == "CPU" else 0)
        devices.append(DeviceMemory(name, d["model_bytes"], d["kv_bytes"], d["compute_bytes"], budget, other))
    devices.sort(key=lambda d: (d.name == "CPU", d.name))
    model_bytes = sum(d.model_bytes for d in devices)
    kv = sum(d.kv_bytes for d in devices)
    total = sum(d.total_bytes for d in devices)
    cells = offload.padded_ctx(n_ctx)[0]
    first = devices[0]
    return MemoryEstimate(
        budget_bytes=first.budget_bytes,
        weights_bytes=model_bytes,
        kv_bytes_per_token=kv // cells if cells else 0,
        kv_cache_bytes=kv,
        overhead_bytes=total - model_bytes - kv,
        total_bytes=total,
        kv_capacity_tokens=cells,
        parts={f"{d.name.lower()}_total_bytes": d.total_bytes for d in devices},
        counts={"n_ctx_padded": cells, "n_gpu_layers": ngl},
        devices=tuple(devices),
    )


def _candidate(engine: str, model: ModelSpec, art: Artifact, table, hw: Hardware, gpus: list[GPU], kv: str,
               request: Request, reach: int | None = None) -> Candidate:  # fmt: skip
    sizer = _Sizer(model, table, hw, gpus, kv)
    full = model.layers + 1
    blocker = _blocker(gpus)

    def unrunnable(reason: str) -> Candidate:
        return _make(engine, model, art, kv, request, 0, wanted_context(request), 0, False, reason,
                     empty_estimate(art.weights_bytes), 0.0, 0, runnable=False)  # fmt: skip

    if blocker:
        return unrunnable(f"cannot run: {blocker}")
    if isinstance(request.gpu_layers, int) and not 0 <= request.gpu_layers <= full:
        return unrunnable(f"cannot run: --gpu-layers must be from 0 to {full} for this model's {model.layers} layers")
    try:
        sizer.breakdown(full, lm.LLAMACPP_CTX_PAD)
    except ValueError as exc:  # a quantized cache whose rows are not whole blocks for this model
        return unrunnable(f"cannot run: {exc}")
    ngl, max_context, why = _choose_layers(sizer, request, model, reach)
    gpu_name = "Metal" if sizer.backend == "metal" else gpus[0].name
    if ngl == 0:
        one = sizer.breakdown(1, max(lm.LLAMACPP_CTX_PAD, request.min_context or 1))
        budget = min(sizer.budgets.values())
        need = max(d["total_bytes"] for k, d in one.items() if k not in ("CPU", "_buffers"))
        return _make(engine, model, art, kv, request, 0, wanted_context(request), 0, False,
                     f"does not fit: not even the output layer fits on {gpu_name}: it needs {format_size(need)} of its "
                     f"{format_size(budget)} budget; this GPU cannot help this model: run it on the CPU (--no-gpu)",
                     _estimate(sizer, one, request.min_context or 1, 1), 0.0, 0)  # fmt: skip
    at = max(max_context, lm.LLAMACPP_CTX_PAD)
    est_max = _estimate(sizer, sizer.breakdown(ngl, at), at, ngl)
    context, fits, reason, shortfall = decide_context(request, model, max_context, est_max.kv_bytes_per_token)
    b = sizer.breakdown(ngl, min(max(context, 1), max(lm.LLAMACPP_CTX_PAD, model.max_context)))
    est = _estimate(sizer, b, context, ngl)
    label = offload.gpu_layers_label(model.layers, ngl)
    if request.concurrency > 1:
        fits, shortfall = False, 0
        reason = (
            "llama-cpp-python's server answers one request at a time; "
            f"--concurrency {request.concurrency:g} needs a server with parallel slots or vLLM"
        )
    elif fits:
        parts = [
            f"{d.name} {format_size(d.total_bytes)} of {format_size(d.budget_bytes)} "
            f"({format_size(d.model_bytes)} weights + {format_size(d.kv_bytes)} KV + "
            f"{format_size(d.compute_bytes + d.other_bytes)} buffers)"
            for d in est.devices
        ]
        reason = f"fits: {label} layers on {gpu_name} ({why}); " + "; ".join(parts)
        if sizer.backend == "metal":
            reason += (
                f"; Metal budget = the working set {format_size(gpus[0].memory_total_bytes)} − "
                f"{format_size(METAL_MARGIN_BYTES)}, and RAM holds both sides"
            )
        elif ngl == full and max_context < target(request, model):
            reason += "; a longer context would spill layers to the CPU (slower): this keeps them all on the GPU"
    elif max_context == 0:
        reason = f"does not fit: {label} layers on {gpu_name} at {context:,} tokens exceed the budgets ({why})"
    speed = _speed(sizer, b, gpus[0], hw, ngl)
    return _make(engine, model, art, kv, request, ngl, context, max_context, fits, reason, est, speed, shortfall,
                 hw=hw)  # fmt: skip


def _make(engine: str, model: ModelSpec, art: Artifact, kv: str, request: Request, ngl: int, context: int,
          max_context: int, fits: bool, reason: str, est: MemoryEstimate, speed: float, shortfall: int,
          runnable: bool = True, hw: Hardware | None = None) -> Candidate:  # fmt: skip
    settings: dict[str, Any] = {}
    if hw is not None:
        settings = {**cpu_settings(hw, use_mmap=True), "n_gpu_layers": ngl, "chat_template": model.chat_template}
    return Candidate(
        engine=engine,
        device="gpu",
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
        decode_tokens_per_s=speed,
        parallel=1,
        served_name=served_name(model),
        host=request.host,
        port=request.port,
        settings=settings,
        meets_target=fits and context >= target(request, model),
        shortfall_bytes=shortfall,
        runnable=runnable and hw is not None,
        gpu_layers=offload.gpu_layers_label(model.layers, ngl),
    )
