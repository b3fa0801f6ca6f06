"""The planner's vocabulary, shared by the planner and every engine: the Request (what the user asked for),
a Candidate (one way to serve the model, with its memory and why it fits or not), the Plan, and the rules
every engine applies the same way (the context target, choosing a context from the longest that fits, the
RAM budget). Pure.

A Candidate holds each fact once, in typed fields; its engine_args and command are derived from them by
its engine (engines.get(name)) whenever they are shown, launched or rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from qwen_deploy.hardware.types import Hardware
from qwen_deploy.memory import MemoryEstimate, decode_tokens_per_second
from qwen_deploy.model.types import Artifact, ModelSpec
from qwen_deploy.units import format_size

if TYPE_CHECKING:
    from qwen_deploy.engines.base import Engine

PLAN_SCHEMA = "qwen-deploy/plan/v1"

AUTO_CONTEXT_TARGET = 32768  # `--context auto` prefers candidates that reach 32K
DEFAULT_MIN_CONTEXT = 4096
# `--context auto` gives no context a person could not fill: its whole prefill within this (--max-fill-time).
DEFAULT_MAX_FILL_SECONDS = 600.0

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
# of a 4K-token conversation).
SPEED_CONTEXT = 4096

# RAM left to the operating system and other programs when planning for the CPU.
RAM_RESERVE_FRACTION = 0.10
RAM_RESERVE_MIN_BYTES = 1024**3


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
    gpu_layers: int | str = "auto"  # llama.cpp's -ngl: a number of layers, "all", or "auto" (the planner's)
    max_fill_time: float = DEFAULT_MAX_FILL_SECONDS  # seconds; `auto` contexts are prefilled within it
    tensor_parallel_size: int | None = None  # None: the planner chooses (tensor parallel only when needed)
    data_parallel_size: int | None = None  # replicas; None: as many as the GPUs allow
    # engine name -> {"version": "0.19.1", "source": "installed" | "--vllm-version" ...}: whose rules apply
    engine_versions: dict[str, dict[str, str]] = field(default_factory=dict)

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
            "gpu_layers": self.gpu_layers,
            "max_fill_time": self.max_fill_time,
            "tensor_parallel_size": self.tensor_parallel_size,
            "data_parallel_size": self.data_parallel_size,
            "engine_versions": {k: dict(v) for k, v in self.engine_versions.items()},
        }


@dataclass(frozen=True)
class Candidate:
    engine: str
    device: str  # gpu | cpu
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
    memory: MemoryEstimate
    decode_tokens_per_s: float
    served_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    # The engine's own knobs, typed (threads, batch sizes, flash attention, utilization ...): what its
    # engine_args are made from. Never mutated.
    settings: dict[str, Any] = field(default_factory=dict)
    meets_target: bool = False
    shortfall_bytes: int = 0  # how much more memory the requested context would need (0 when it fits)
    runnable: bool = True  # False: the engine cannot run this at all (no command)
    gpu_layers: str | None = None  # "k/n": layers on the GPU of the model's n (llama.cpp's -ngl; None: n/a)
    # Prefill speed for a SPEED_CONTEXT-token prompt and the seconds to prefill the whole context (None: not
    # modelled, as on GPUs, which prefill a 4B model's context in seconds).
    prefill_tokens_per_s: float | None = None
    fill_seconds: float | None = None
    parallel: int | None = None  # requests served at once (llama.cpp's slots); None: the engine batches freely

    @property
    def engine_impl(self) -> Engine:
        from qwen_deploy import engines

        return engines.get(self.engine)

    @property
    def engine_args(self) -> dict[str, Any]:
        """Flag -> value, exactly what the engine is given (derived from the fields)."""
        return self.engine_impl.engine_args(self) if self.runnable else {}

    @property
    def command(self) -> tuple[str, ...]:
        """argv, exactly what `up` runs."""
        return tuple(self.engine_impl.command(self)) if self.runnable else ()

    @property
    def model_ref(self) -> str:
        """What the engine is told to load: the local file/folder, else the artifact's remote name."""
        art = self.artifact
        if art.path:
            return art.path
        return f"hf://{art.repo}/{art.file}" if art.file else art.repo

    def at(self, model_path: str | None = None, host: str | None = None, port: int | None = None) -> Candidate:
        """The same candidate with the model's local path and/or the address this run binds."""
        art = replace(self.artifact, path=model_path) if model_path is not None else self.artifact
        return replace(self, artifact=art, host=self.host if host is None else host, port=port or self.port)

    @property
    def quality(self) -> int:
        return PRECISION_QUALITY.get(self.precision, 80) + KV_QUALITY.get(self.kv_cache_dtype, -2)

    def label(self) -> str:
        if self.gpu_layers and self.device == "gpu":
            gpus = f" · {self.gpu_layers} layers on GPU"
        else:
            gpus = f" ×{self.tensor_parallel_size * self.replicas} GPU" if self.device == "gpu" else ""
        return f"{self.engine} {self.precision} · KV {self.kv_cache_dtype}{gpus}"

    def to_dict(self) -> dict[str, Any]:
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
            "gpu_layers": self.gpu_layers,
            "fits": self.fits,
            "reason": self.reason,
            "memory": self.memory.to_dict(),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 1),
            "prefill_tokens_per_s": None if self.prefill_tokens_per_s is None else round(self.prefill_tokens_per_s, 1),
            "fill_seconds": None if self.fill_seconds is None else round(self.fill_seconds, 1),
            "parallel": self.parallel,
            "engine_args": self.engine_args,
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


# ----------------------------------------------------------------------------- rules every engine shares


def served_name(model: ModelSpec) -> str:
    return model.name or model.id.rsplit("/", 1)[-1].lower()


def target(request: Request, model: ModelSpec) -> int:
    """The context a candidate must reach to count as meeting the request."""
    if isinstance(request.context, int):
        return request.context
    if request.context == "auto":
        return min(AUTO_CONTEXT_TARGET, model.max_context)
    return request.min_context or 1


def wanted_context(request: Request) -> int:
    """The context a candidate that cannot run is shown with: the one asked for, else the minimum."""
    return request.context if isinstance(request.context, int) else (request.min_context or 1)


def decide_context(request: Request, model: ModelSpec, max_context: int, per_token: int) -> tuple[int, bool, str, int]:
    """(context, fits, reason if it does not fit, bytes short) from the longest context that fits."""
    if isinstance(request.context, int):
        wanted = request.context
        if wanted > model.max_context:
            return wanted, False, f"{wanted:,} tokens is beyond the model's limit of {model.max_context:,}", 0
        if max_context >= wanted:
            return wanted, True, "", 0
        short = (wanted - max_context) * per_token * request.concurrency
        return wanted, False, too_small(wanted, max_context, request, per_token), max(0, int(short))
    minimum = request.min_context or 1
    if max_context >= minimum:
        return max_context, True, "", 0
    short = (minimum - max_context) * per_token * request.concurrency
    return minimum, False, too_small(minimum, max_context, request, per_token), max(0, int(short))


def fill_bounded(request: Request, model: ModelSpec, memory_max: int, rates: Any, step: int) -> tuple[int, str]:
    """(the longest context to plan, a note for the reason): with `--context auto`, no longer than what is
    prefilled within --max-fill-time (never below --min-context); `max` and an exact N are not bounded.
    The candidate then competes with that context: among those that do not reach the 32K target, the
    longest wins, so a GPU's longer context beats a CPU's that could not be filled."""
    if request.context != "auto" or rates is None or memory_max <= 0:
        return memory_max, ""
    from qwen_deploy import speed

    fillable = speed.longest_fillable(model, rates, request.max_fill_time) // step * step
    floor = min(memory_max, request.min_context or min(DEFAULT_MIN_CONTEXT, model.max_context))
    if fillable >= memory_max:
        return memory_max, ""
    bounded = max(fillable, floor)
    if fillable < floor:
        note = f"; even {bounded:,} tokens take longer than {request.max_fill_time:g} s to prefill here"
    else:
        note = (
            f"; {bounded:,} tokens, not the {memory_max:,} that fit: a longer prompt would take more than "
            f"{request.max_fill_time:g} s to prefill (--max-fill-time; --context max for the longest)"
        )
    return bounded, note


def too_small(wanted: int, max_context: int, request: Request, per_token: int) -> str:
    users = f" × {request.concurrency:g} requests" if request.concurrency != 1 else ""
    need = format_size(wanted * per_token * request.concurrency)
    if max_context <= 0:
        return f"does not fit: {wanted:,} tokens{users} need {need} of KV and no memory is left after the weights"
    return f"does not fit: {wanted:,} tokens{users} need {need} of KV; the memory left holds {max_context:,} tokens"


def ram_budget(hw: Hardware) -> int:
    """RAM an engine on the CPU may plan on: the total (cgroup limit applied) minus a reserve for the system.

    The plan is for the machine, not for this second: memory that other programs hold now drifts from run
    to run, so it does not move the budget (`probe --json > hw.json; plan --hardware hw.json` equals
    `plan`); a candidate that needs more than is available now says so in its reason.
    """
    total = hw.memory.total_bytes
    reserve = max(RAM_RESERVE_MIN_BYTES, int(total * RAM_RESERVE_FRACTION))
    return max(0, total - reserve)


def decode_speed(bandwidth_gbps: float, efficiency: float, weights: int, kv_per_token: int, context: int) -> float:
    return decode_tokens_per_second(bandwidth_gbps, weights + kv_per_token * min(context, SPEED_CONTEXT), efficiency)


def kv_class(kv: str, sixteen_bit_name: str) -> str:
    """A user's --kv-cache-dtype in an engine's own names (16-bit means that engine's 16-bit type)."""
    return sixteen_bit_name if kv in SIXTEEN_BIT_KV else kv
