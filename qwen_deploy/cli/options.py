"""What the commands share: option types that refuse what the library would choke on (non-ASCII digits,
NaN, infinity, 5,000-digit numbers, empty strings), the planning options and their resolution into a plan,
the endpoint options, the exposure check, and JSON output."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from qwen_deploy import values
from qwen_deploy.errors import NothingFitsError, UsageError


class Integer(click.ParamType):
    """A whole number in ASCII digits, in [lo, hi] (Click's INT also takes '٣', '+3' and ' 3 ')."""

    name = "integer"

    def __init__(self, lo: int = 0, hi: int = values.MAX_COUNT):
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return values.integer(value, _flag(param), self.lo, self.hi)
        try:
            return values.int_text(value, _flag(param), self.lo, self.hi)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class Number(click.ParamType):
    """A decimal number, finite, in [lo, hi] ((lo, hi] with lo_open): no 'nan', 'inf' or '1e999'."""

    name = "number"

    def __init__(self, lo: float = 0.0, hi: float = 1e9, lo_open: bool = False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return values.number(value, _flag(param), self.lo, self.hi, self.lo_open)
        try:
            return values.float_text(value, _flag(param), self.lo, self.hi, self.lo_open)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class Text(click.ParamType):
    """One printable line (no control characters), not empty, at most max_len characters."""

    name = "text"

    def __init__(self, max_len: int = 4096):
        self.max_len = max_len

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return values.text(value, _flag(param), self.max_len)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class ServerName(click.ParamType):
    """A server's name (values.server_name): checked as the command line is read, so a bad one is a usage error
    (exit 2) whether or not any server is running."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        where = "NAME" if isinstance(param, click.Argument) else _flag(param)
        try:
            return values.server_name(values.text(value, where, 63), where)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


def _flag(param: click.Parameter | None) -> str:
    return ("--" + param.name.replace("_", "-")) if param is not None and param.name else "the value"


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, allow_nan=False))


def context_value(text: str) -> int | str:
    """'auto', 'max', '32768', '32K' / '32k' (× 1024)."""
    value = text.strip().lower()
    if value in ("auto", "max"):
        return value
    match = re.fullmatch(r"([0-9]{1,10})(k?)", value)
    if not match:
        raise UsageError(
            f"--context must be a number of tokens (32768 or 32K), 'auto' or 'max', not {values.show(text)}."
        )
    tokens = int(match.group(1)) * (1024 if match.group(2) else 1)
    if not 1 <= tokens <= 1 << 30:
        raise UsageError("--context must be from 1 token to 2^30 tokens.")
    return tokens


def gpu_layers_value(text: str) -> int | str:
    """--gpu-layers: 'auto', 'all' or a number of layers (0: none, the CPU alone)."""
    value = str(text).strip().lower()
    if value in ("auto", "all"):
        return value
    return values.int_text(value, "--gpu-layers (a number of layers, 'all' or 'auto')", 0, 100_000)


def check_host_port(host: str, port: int) -> None:
    values.host(host)
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is outside 1-65535.")


def port_value(text: str | int, host: str = "127.0.0.1") -> int:
    """--port N, or 'auto': a port that is free now."""
    if isinstance(text, int):
        return text
    if text.strip().lower() == "auto":
        from qwen_deploy.client import free_port

        try:
            values.host(host)
            return free_port(host)
        except OSError:
            raise UsageError(f"--host {host} is not an address of this machine (no free port found there).") from None
    return values.int_text(text, "--port", 1, 65535)


def check_exposure(host: str, has_key: bool, insecure: bool) -> None:
    """A server reachable from other machines needs an API key (or the user's explicit word that it does not)."""
    from qwen_deploy.client import describe_bind, is_loopback

    if is_loopback(host) or has_key or insecure:
        return
    raise UsageError(
        f"--host {host} would serve on {describe_bind(host, 0).removesuffix(', port 0').removesuffix(' port 0')}, "
        "reachable from other machines, with no API key. To fix: pass --api-key-file FILE (a file holding one key), "
        "keep the default --host 127.0.0.1, or pass --insecure-no-api-key if anyone who can reach it may use it."
    )


class _EngineChoice(click.Choice):
    """--engine's choices, read from the registry when a value is checked (so an engine registered after
    this module was imported is a choice too)."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self):  # type: ignore[override]
        from qwen_deploy import engines

        return tuple(engines.names())

    @choices.setter
    def choices(self, value) -> None:
        pass


def engine_choice() -> click.Choice:
    return _EngineChoice()


def plan_options(func):
    options = [
        click.option(
            "--model",
            "model_ref",
            type=Text(),
            metavar="NAME|DIR|FILE.gguf",
            help="A built-in profile (see `models`), a Hugging Face folder, or a GGUF file.",
        ),
        click.option(
            "--hardware",
            "hardware_file",
            type=Text(),
            metavar="FILE",
            help="Plan for the machine in this hardware file.",
        ),
        click.option(
            "--gpu",
            "gpus",
            multiple=True,
            type=Text(200),
            metavar="NAME",
            help="Plan for catalog GPUs instead of this machine's ('RTX 4090', '2xL4'; repeatable; see `gpus`).",
        ),
        click.option("--vram", type=Text(64), metavar="SIZE", help="GPU memory (24GiB); a generic GPU with no --gpu."),
        click.option("--ram", type=Text(64), metavar="SIZE", help="Plan for this much RAM (32GiB)."),
        click.option("--cpus", type=Integer(1, 100_000), metavar="N", help="Plan for N CPU cores."),
        click.option("--no-gpu", is_flag=True, help="Plan without GPUs."),
        click.option(
            "--context",
            default="auto",
            show_default=True,
            type=Text(32),
            metavar="N|auto|max",
            help="Context: exactly N tokens, auto (best candidate reaching 32K), or max (longest first).",
        ),
        click.option(
            "--min-context",
            type=Integer(1, 1 << 30),
            help="Shortest useful context (default 4096, or the model's limit).",
        ),
        click.option(
            "--concurrency",
            type=Number(1, 100_000),
            default=1.0,
            show_default=True,
            help="Full-length requests the KV cache must hold at once.",
        ),
        click.option("--engine", type=engine_choice(), help="Only this engine."),
        click.option(
            "--precision", type=Text(32), help="Only this weight precision (bf16, fp8, awq, q4_k_m, q8_0, ...)."
        ),
        click.option("--kv-cache-dtype", type=Text(32), help="Only this KV cache type (auto/f16, fp8, q8_0, q4_0)."),
        click.option(
            "--gpu-memory-utilization",
            type=Number(0, 1, lo_open=True),
            help="vLLM's fraction of GPU memory (default 0.92).",
        ),
        click.option(
            "--prefer",
            type=click.Choice(["balanced", "quality", "speed"]),
            default="balanced",
            show_default=True,
            help="Trade-off between precision and decode speed.",
        ),
        click.option(
            "--gpu-layers",
            default="auto",
            show_default=True,
            type=Text(16),
            metavar="N|all|auto",
            help="llama.cpp layers on the GPU (auto: all that fit, or the split that reaches the context).",
        ),
        click.option(
            "--max-fill-time",
            type=Number(0, 1e7, lo_open=True),
            default=600.0,
            show_default=True,
            metavar="SECONDS",
            help="With --context auto, no context whose whole prompt takes longer than this to prefill.",
        ),
        click.option(
            "--tensor-parallel-size", type=Integer(1, 64), help="GPUs one replica spans (default: as few as fit)."
        ),
        click.option("--data-parallel-size", type=Integer(1, 64), help="Replicas (default: as many as GPUs allow)."),
        click.option(
            "--host", default="127.0.0.1", show_default=True, type=Text(253), help="Address the server binds."
        ),
        click.option(
            "--port", default="8000", show_default=True, type=Text(16), help="Port it listens on ('auto': a free one)."
        ),
    ]
    from qwen_deploy import engines

    for engine, flag in engines.version_flags().items():
        options.append(
            click.option(
                f"--{flag}",
                "engine_version_" + engine,
                type=Text(32),
                metavar="X.Y",
                help=f"Plan with this {engines.label(engine)} release's memory rules (default: the installed one).",
            )
        )
    for option in reversed(options):
        func = option(func)
    return func


def engine_versions(options: dict[str, Any]) -> dict[str, dict[str, str]]:
    """engine -> {version, source}: --ENGINE-version when given, else the installed package's version (for
    the engines whose memory rules depend on it; popped from `options`)."""
    from qwen_deploy import engines

    out = {}
    for engine, flag in engines.version_flags().items():
        given = options.pop("engine_version_" + engine, None)
        if given:
            if not re.fullmatch(r"[0-9]{1,3}\.[0-9]{1,3}(\.[0-9]{1,4}){0,2}", given.strip()):
                raise UsageError(f"--{flag} must be a release number such as 0.19 or 0.19.1, not {values.show(given)}.")
            out[engine] = {"version": given.strip(), "source": f"--{flag}"}
        elif (found := engines.installed_version(engine)) is not None:
            out[engine] = {"version": found, "source": "installed"}
    return out


PLAN_OPTION_NAMES = (
    "model_ref", "hardware_file", "gpus", "vram", "ram", "cpus", "no_gpu", "context", "min_context",
    "concurrency", "engine", "precision", "kv_cache_dtype", "gpu_memory_utilization", "prefer",
    "tensor_parallel_size", "data_parallel_size", "gpu_layers", "max_fill_time",
)  # fmt: skip


def build_plan(
    model_ref: str | None,
    hardware_file: str | None,
    gpus: tuple[str, ...],
    vram: str | None,
    ram: str | None,
    cpus: int | None,
    no_gpu: bool,
    context: str,
    min_context: int | None,
    concurrency: float,
    engine: str | None,
    precision: str | None,
    kv_cache_dtype: str | None,
    gpu_memory_utilization: float | None,
    prefer: str,
    host: str,
    port: int | str,
    tensor_parallel_size: int | None = None,
    data_parallel_size: int | None = None,
    gpu_layers: str = "auto",
    max_fill_time: float = 600.0,
    artifact_format: str | None = None,
    **versions: Any,
):
    """Resolve the options into hardware, model and request, and plan. Shared by plan, up and render.
    artifact_format: plan only the model's artifacts of that format (`up --model-file FILE.gguf`)."""
    from dataclasses import replace

    from qwen_deploy import planner
    from qwen_deploy.hardware.catalog import simulate
    from qwen_deploy.model.resolve import resolve_model, with_cached_files
    from qwen_deploy.paths import models_dir

    port = port_value(port, host)
    check_host_port(host, port)
    if hardware_file:
        from qwen_deploy.hardware.files import load_hardware

        base = load_hardware(hardware_file)
    else:
        from qwen_deploy.hardware.probe import probe

        base = probe()
    hw = simulate(base, gpus=gpus, vram=vram, ram=ram, cpus=cpus, no_gpu=no_gpu)
    model = with_cached_files(resolve_model(model_ref), models_dir())
    if artifact_format:
        model = replace(model, artifacts=tuple(a for a in model.artifacts if a.format == artifact_format))
    request = planner.Request(
        context=context_value(context),
        min_context=min_context,
        concurrency=concurrency,
        engine=engine,
        precision=precision.lower() if precision else None,
        kv_cache_dtype=kv_cache_dtype.lower() if kv_cache_dtype else None,
        gpu_memory_utilization=gpu_memory_utilization,
        prefer=prefer,
        host=host,
        port=port,
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
        gpu_layers=gpu_layers_value(gpu_layers),
        max_fill_time=max_fill_time,
        engine_versions=engine_versions(versions),
    )
    return planner.plan(model, hw, request)


def require_choice(result) -> None:
    """A plan with nothing that fits is exit 3 with the planner's 'To fix:' paragraph."""
    if result.choice is None:
        from qwen_deploy.planner import nothing_fits_message

        raise NothingFitsError(nothing_fits_message(result))


def given(ctx: click.Context, name: str) -> bool:
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def plan_for_up(ctx: click.Context, plan_file: str | None, model_file: str | None, options: dict[str, Any]):
    """(plan, host, port, replan) for `up` and `render`: from a plan file, or planned now."""
    from dataclasses import replace

    from qwen_deploy import planner

    if plan_file:
        given_names = [n for n in PLAN_OPTION_NAMES if given(ctx, n)]
        given_names += [n for n in options if n.startswith("engine_version_") and options[n] is not None]
        if given_names:
            flags = ", ".join("--" + n.replace("_ref", "").replace("_file", "").replace("_", "-") for n in given_names)
            raise UsageError(f"a plan file fixes the model, hardware and request; drop {flags} or the plan file.")
        from qwen_deploy.planfile import load_plan

        result = load_plan(plan_file)
        host = options["host"] if given(ctx, "host") else result.choice.host
        port = port_value(options["port"] if given(ctx, "port") else result.choice.port, host)
        check_host_port(host, port)
        result = replace(
            result, request=replace(result.request, host=host, port=port), choice=result.choice.at(host=host, port=port)
        )
    else:
        if model_file:
            from pathlib import Path

            from qwen_deploy.resources import regular_file

            path = Path(model_file).expanduser()
            if not path.is_dir():
                regular_file(path, "--model-file", max_bytes=None)
            if not options.get("model_ref"):
                options["model_ref"] = model_file
            elif model_file.lower().endswith(".gguf"):
                from qwen_deploy.model.gguf import spec_from_gguf

                art = spec_from_gguf(path).artifacts[0]
                options["precision"] = options.get("precision") or art.precision
                options["artifact_format"] = art.format
        options["port"] = port_value(options["port"], options["host"])
        result = build_plan(**options)
        host, port = result.request.host, result.request.port

    def replan(request: planner.Request) -> planner.Plan:
        return planner.plan(result.model, result.hardware, replace(request, host=host, port=port))

    return result, host, port, replan


def endpoint_options(func):
    """--name / --url / --model / --api-key-file: which server bench, verify and ui talk to."""
    options = [
        click.option(
            "--name", type=ServerName(), help="A server started by `up` (its URL, model, key, context and plan)."
        ),
        click.option("--url", type=Text(2048), help="Any OpenAI-compatible server: http://HOST:PORT."),
        click.option(
            "--model", type=Text(256), help="The model to ask for (default: the served one / the first listed)."
        ),
        click.option(
            "--api-key-file",
            type=Text(),
            metavar="FILE",
            help="Key to send (default: the one `up` used, or $QWEN_DEPLOY_API_KEY / $API_KEY / $VLLM_API_KEY).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
