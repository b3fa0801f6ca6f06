"""The Engine interface: everything qwen-deploy knows about one engine, asked of one object.

The planner asks each registered engine for its candidates and ranks them by one policy; the launcher asks
the candidate's engine for the argv, environment, readiness path, log stages and diagnoses; the renderer asks
it for the container image and flags; a plan file's edited engine_args are read back by the engine that
wrote them. Adding an engine is one package with one `ENGINE = MyEngine()` (docs/architecture.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen_deploy import values
from qwen_deploy.candidates import SIXTEEN_BIT_KV, Candidate, Request
from qwen_deploy.errors import QwenDeployError, UsageError
from qwen_deploy.hardware.types import Hardware
from qwen_deploy.model.types import ModelSpec

# Head-room over the plan's total for memory limits (containers, MemoryMax=): the plan is the predicted peak
# (BENCHMARKS.md: never below the measured peak, at most ~20% above), a limit needs slack for page cache and
# allocator growth.
MEMORY_LIMIT_FACTOR = 1.25


@dataclass(frozen=True)
class Container:
    """How a container image runs a candidate (compose and Kubernetes): the args after the image's
    entrypoint, bound to all interfaces inside the container on `port`."""

    image: str
    args: list[str]
    port: int
    uid: int
    key_var: str  # the environment variable the server reads its API key from
    gpus: int = 0  # GPUs to reserve (0: none)
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    read_only_root: bool = True
    cpu: str = "4"
    memory_request_bytes: int | None = None  # None: not modelled (the engine's host memory)
    memory_limit_bytes: int | None = None
    host_memory_gib: int = 4  # for GPU engines: RAM to ask for beside the GPU
    shm: bool = False  # shares tensors through /dev/shm between processes (ipc: host)
    model_mount: str = "/models"  # where the model or its download cache is mounted
    downloads: bool = True  # fetches the model itself at first start


class Engine(ABC):
    """One engine. Subclasses set the class attributes and implement the abstract methods."""

    name: str = ""  # as --engine and plan files spell it
    label: str = ""  # for people
    formats: tuple[str, ...] = ()  # artifact formats it loads (model.types.FORMATS)
    kv_types: tuple[str, ...] = ()  # KV cache types it plans, highest precision first
    sixteen_bit_kv: str = "f16"  # its name for a 16-bit cache
    context_step: int = 1  # contexts are rounded to this (the OOM step-down halves in these steps)
    ready_path: str = "/health"  # answers once the engine serves (with the model listed on /v1/models)
    api_key_env: str = ""  # the variable its server reads the API key from (never argv)
    stages: tuple[tuple[str, str], ...] = ()  # (log pattern, stage) in the order it starts up
    diagnoses: tuple[tuple[str, str], ...] = ()  # (log pattern, kind) for a failed start; first match wins
    install_hint: str = ""  # the sentence that says how to install it
    start_seconds: float = 30.0  # its own start-up beyond reading the weights (for timeouts)
    package: str | None = None  # its Python distribution, when it is one (its version decides its rules)
    version_flag: str | None = None  # the CLI option that names that version ('vllm-version')

    # ------------------------------------------------------------------ planning

    @abstractmethod
    def candidates(self, model: ModelSpec, hardware: Hardware, request: Request) -> list[Candidate]:
        """Every way this engine could serve the model on this hardware, each with its memory and reason."""

    def accepts_kv(self, kv: str) -> bool:
        return self.kv_class(kv) in self.kv_types

    def kv_class(self, kv: str) -> str:
        """A user's --kv-cache-dtype in this engine's own names."""
        return self.sixteen_bit_kv if kv in SIXTEEN_BIT_KV else kv

    def preference(self, request: Request) -> int:
        """Rank among fitting candidates before anything else (lower first; 0 for most engines): how an engine
        that serves the same request differently steps back (planner._rank_key)."""
        return 0

    def no_candidates(self, model: ModelSpec, hardware: Hardware) -> str | None:
        """Why this engine offers nothing here (None: it offered candidates, or has no special reason)."""
        return None

    # ------------------------------------------------------------------ running

    @abstractmethod
    def engine_args(self, c: Candidate) -> dict[str, Any]:
        """Flag -> value, in the order the command passes them, from the candidate's fields."""

    @abstractmethod
    def command(self, c: Candidate, python: str | None = None) -> list[str]:
        """argv for the candidate; `python` is the interpreter of the environment qwen-deploy runs in (the
        engine's own script or module is looked up beside it)."""

    @abstractmethod
    def apply_args(self, c: Candidate, args: dict[str, Any], where: str, model: ModelSpec) -> Candidate:
        """`c` with a plan file's (possibly edited) engine_args read back into its fields. Every value is
        checked as strictly as the CLI checks its own options (the context within the model's limit);
        unknown flags are refused."""

    def environment(self, base: dict[str, str], api_key: str | None) -> dict[str, str]:
        """The engine's environment: `base` without the key variable, plus the key when given."""
        env = {k: v for k, v in base.items() if k != self.api_key_env}
        if api_key:
            env[self.api_key_env] = api_key
        return env

    def check_installed(self, c: Candidate) -> None:
        """Raise QwenDeployError saying how to install the engine when it is missing."""
        import shutil

        argv0 = self.command(c)[0]
        if shutil.which(argv0) is None and not Path(argv0).is_file():
            raise QwenDeployError(
                f"{self.label} is not installed ({argv0!r} was not found). To fix: {self.install_hint}"
            )

    def parse_memory_log(self, text: str) -> dict[str, Any]:
        """The memory figures the engine printed at start-up (bytes)."""
        return {}

    def expected_load_seconds(self, c: Candidate) -> float:
        """A generous guess of the time to ready: the weights from a cold disk at 200 MB/s plus start-up."""
        return c.memory.weights_bytes / 200e6 + self.start_seconds

    def describe_serving(self, context: int, concurrency: float, kv_capacity_tokens: int) -> str:
        """One sentence on how a plan serves requests at once (bench's footnote)."""
        return (
            f"the KV cache holds {kv_capacity_tokens:,} tokens = {concurrency} requests of the full "
            f"{context:,}-token context at once"
        )

    # ------------------------------------------------------------------ deployment files

    @abstractmethod
    def container(
        self, c: Candidate, model_file: str | None, all_replicas: bool = True, *, model: ModelSpec | None = None
    ) -> Container:
        """The container that serves `c` (compose, Kubernetes). model_file: where the model is inside the
        container (None: the engine downloads it into the cache volume); all_replicas: one container runs
        every replica (compose), else one per pod (Kubernetes); model: the plan's model (for an engine whose
        container runs another server than `up` does and must size it again)."""

    def unit_settings(self, c: Candidate, user_unit: bool) -> dict[str, Any]:
        """Switches for its systemd unit (templates/systemd.service.j2): cache_env (variables that put the
        engine's caches in the unit's CacheDirectory=, %C specifiers allowed), writes_hf_cache (a user unit's
        engine writes the user's own Hugging Face cache), downloads (it fetches the model at its first
        start), memory_max (the plan's total is the process's memory, so MemoryMax= can hold it)."""
        return {"cache_env": {}, "writes_hf_cache": False, "downloads": False, "memory_max": c.device == "cpu"}

    def check_artifact(self, c: Candidate) -> None:  # noqa: B027 (most engines accept any artifact)
        """Refuse a model reference that cannot go into a deployment file (a UsageError)."""

    helm_template: Path | None = None  # a Helm values template it owns (None: no chart serves it)

    def helm_values(self, c: Candidate) -> dict[str, Any]:
        """The context of its helm_template."""
        raise UsageError(
            f"the vLLM production-stack chart serves vLLM; this plan runs {self.label}. Render `k8s` instead."
        )


class ArgReader:
    """Reads a plan file's engine_args for apply_args: each getter checks one flag's type and range and
    returns it (or the default when the file left it out); `done()` refuses flags nobody asked for."""

    def __init__(self, args: Any, where: str):
        self.args = values.mapping(args, f"{where}: choice.engine_args")
        self.where = f"{where}: choice.engine_args"
        self.seen: set[str] = set()

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        return self.args.get(key)

    def integer(self, key: str, default: int, lo: int = 1, hi: int = values.MAX_COUNT) -> int:
        value = self._get(key)
        return default if value is None else values.integer(value, f"{self.where}.{key}", lo, hi)

    def number(self, key: str, default: float, lo: float = 0.0, hi: float = 1e18, lo_open: bool = False) -> float:
        value = self._get(key)
        return default if value is None else values.number(value, f"{self.where}.{key}", lo, hi, lo_open)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise UsageError(f"{self.where}.{key} must be true or false, not {values.show(value)}.")
        return value

    def choice(self, key: str, default: Any, options: dict[Any, Any] | tuple[Any, ...]) -> Any:
        """One of `options` (a tuple of values, or a mapping of accepted value -> what it means)."""
        value = self._get(key)
        if value is None:
            return default
        accepted = options if isinstance(options, dict) else {o: o for o in options}
        if isinstance(value, (bool, list, dict)) or value not in accepted:
            shown = ", ".join(str(o) for o in accepted)
            raise UsageError(f"{self.where}.{key} must be one of {shown}, not {values.show(value)}.")
        return accepted[value]

    def text(self, key: str, default: str, max_len: int = 4096) -> str:
        value = self._get(key)
        if value is None:
            return default
        value = values.text(value, f"{self.where}.{key}", max_len)
        if value.startswith("-"):
            raise UsageError(f"{self.where}.{key} must not start with '-' ({values.show(value)} reads as a flag).")
        return value

    def gguf_file(self, key: str, c: Candidate) -> str:
        """A GGUF model reference: the plan's own, an hf:// one, or a regular file that exists."""
        ref = self.text(key, c.model_ref)
        if ref != c.model_ref and not ref.startswith("hf://"):
            from qwen_deploy.resources import regular_file

            regular_file(ref, f"{self.where}.{key}", max_bytes=None)
        return ref

    def done(self) -> None:
        unknown = sorted(str(k) for k in set(self.args) - self.seen)
        if unknown:
            raise UsageError(f"{self.where} has flags qwen-deploy does not pass: {', '.join(unknown)}.")
