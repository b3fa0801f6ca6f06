"""The command line: Click only. Parse options, call the library, print (rich table or --json), map errors
to exit codes (0 ok · 1 error · 2 usage · 3 nothing fits).

Heavy modules (rich, yaml, pynvml, gguf/numpy) are imported inside the commands that use them, so
`qwen-deploy --help` and `plan --json` start fast.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from qwen_deploy import __version__
from qwen_deploy.errors import EXIT_ERROR, EXIT_USAGE, NothingFitsError, QwenDeployError, UsageError

_HOST_RE = re.compile(r"^[A-Za-z0-9.:\-\[\]]{1,253}$")


def _context_value(text: str) -> int | str:
    """'auto', 'max', '32768', '32K' / '32k' (× 1024)."""
    value = text.strip().lower()
    if value in ("auto", "max"):
        return value
    match = re.fullmatch(r"(\d+)(k?)", value)
    if not match:
        raise UsageError(f"--context must be a number of tokens (32768 or 32K), 'auto' or 'max', not {text!r}.")
    tokens = int(match.group(1)) * (1024 if match.group(2) else 1)
    if tokens < 1:
        raise UsageError("--context must be at least 1 token.")
    return tokens


def _check_host_port(host: str, port: int) -> None:
    if not _HOST_RE.match(host):
        raise UsageError(f"--host {host!r} is not a host name or IP address.")
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is outside 1-65535.")


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qwen-deploy")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Plan and serve Qwen3-4B-Instruct-2507 (and other dense GQA models) at the best configuration this
    machine, or a described one, allows."""
    ctx.obj = {"debug": debug}


# ----------------------------------------------------------------------------- probe


@cli.command()
@click.option("json_", "--json", is_flag=True, help="Print the hardware file (schema qwen-deploy/hardware/v1).")
@click.option("--measure", is_flag=True, help="Also measure memory bandwidth (a second or two).")
def probe(json_: bool, measure: bool) -> None:
    """Show this machine's GPUs, CPU, RAM (cgroup limits applied) and free disk."""
    from qwen_deploy.hardware import probe as probe_hardware

    hw = probe_hardware(measure=measure)
    if json_:
        _print_json(hw.to_dict())
        return
    from qwen_deploy import report

    report.print_hardware(hw)


# ----------------------------------------------------------------------------- plan


def _plan_options(func):
    options = [
        click.option(
            "--model",
            "model_ref",
            metavar="NAME|DIR|FILE.gguf",
            help="A built-in profile (see `models`), a Hugging Face folder, or a GGUF file.",
        ),
        click.option("--hardware", "hardware_file", metavar="FILE", help="Plan for the machine in this hardware file."),
        click.option(
            "--gpu",
            "gpus",
            multiple=True,
            metavar="NAME",
            help="Plan for catalog GPUs instead of this machine's ('RTX 4090', '2xL4'; repeatable).",
        ),
        click.option("--vram", metavar="SIZE", help="GPU memory (24GiB); a generic GPU when no --gpu is given."),
        click.option("--ram", metavar="SIZE", help="Plan for this much RAM (32GiB)."),
        click.option("--cpus", type=int, metavar="N", help="Plan for N CPU cores."),
        click.option("--no-gpu", is_flag=True, help="Plan without GPUs."),
        click.option(
            "--context",
            default="auto",
            show_default=True,
            metavar="N|auto|max",
            help="Context: exactly N tokens, auto (best candidate reaching 32K), or max (longest first).",
        ),
        click.option("--min-context", type=int, help="Shortest useful context (default 4096, or the model's limit)."),
        click.option(
            "--concurrency",
            type=float,
            default=1.0,
            show_default=True,
            help="Full-length requests the KV cache must hold at once.",
        ),
        click.option("--engine", type=click.Choice(["vllm", "llamacpp"]), help="Only this engine."),
        click.option("--precision", help="Only this weight precision (bf16, fp8, awq, q4_k_m, q8_0, ...)."),
        click.option("--kv-cache-dtype", help="Only this KV cache type (auto/f16, fp8, q8_0, q4_0)."),
        click.option("--gpu-memory-utilization", type=float, help="vLLM's fraction of GPU memory (default 0.92)."),
        click.option(
            "--prefer",
            type=click.Choice(["balanced", "quality", "speed"]),
            default="balanced",
            show_default=True,
            help="Trade-off between precision and decode speed.",
        ),
        click.option("--host", default="127.0.0.1", show_default=True, help="Address the server will bind."),
        click.option("--port", type=int, default=8000, show_default=True, help="Port the server will listen on."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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
    port: int,
):
    """Resolve the options into hardware, model and request, and plan. Shared by plan (and up/render)."""
    from qwen_deploy import hardware as hw_mod
    from qwen_deploy import planner
    from qwen_deploy.model import resolve_model, with_cached_files

    _check_host_port(host, port)
    base = hw_mod.load_hardware(hardware_file) if hardware_file else hw_mod.probe()
    hw = hw_mod.simulate(base, gpus=gpus, vram=vram, ram=ram, cpus=cpus, no_gpu=no_gpu)
    model = with_cached_files(resolve_model(model_ref), hw_mod.models_dir())
    request = planner.Request(
        context=_context_value(context),
        min_context=min_context,
        concurrency=concurrency,
        engine=engine,
        precision=precision.lower() if precision else None,
        kv_cache_dtype=kv_cache_dtype.lower() if kv_cache_dtype else None,
        gpu_memory_utilization=gpu_memory_utilization,
        prefer=prefer,
        host=host,
        port=port,
    )
    return planner.plan(model, hw, request)


@cli.command()
@_plan_options
@click.option("json_", "--json", is_flag=True, help="Print the plan as JSON (schema qwen-deploy/plan/v1).")
@click.option("-o", "--output", metavar="FILE", help="Also write the plan to FILE (YAML, or JSON for .json).")
def plan(json_: bool, output: str | None, **options: Any) -> None:
    """What fits, ranked, with the memory arithmetic shown; the best choice first."""
    result = build_plan(**options)
    data = result.to_dict()
    if output:
        from qwen_deploy.resources import write_atomic

        if output.lower().endswith(".json"):
            text = json.dumps(data, indent=2) + "\n"
        else:
            import yaml

            text = yaml.safe_dump(data, sort_keys=False, width=120)
        write_atomic(output, text)
        click.echo(f"wrote {output}", err=True)
    if json_:
        _print_json(data)
    else:
        from qwen_deploy import report

        report.print_plan(result)
    if result.choice is None:
        from qwen_deploy.planner import nothing_fits_message

        raise NothingFitsError(nothing_fits_message(result))


# ----------------------------------------------------------------------------- models


@cli.command()
@click.option("json_", "--json", is_flag=True, help="Print as JSON.")
def models(json_: bool) -> None:
    """List the built-in model profiles."""
    from qwen_deploy.memory import kv_bytes_per_token
    from qwen_deploy.model import load_profile, profile_names

    rows = []
    for name in profile_names():
        spec = load_profile(name)
        rows.append(
            {
                "name": name,
                "id": spec.id,
                "layers": spec.layers,
                "kv_heads": spec.kv_heads,
                "head_dim": spec.head_dim,
                "max_context": spec.max_context,
                "kv_bytes_per_token_16bit": kv_bytes_per_token(spec.layers, spec.kv_heads, spec.head_dim, "f16"),
                "precisions": [f"{a.engine}:{a.precision}" for a in spec.artifacts],
            }
        )
    if json_:
        _print_json(rows)
        return
    from qwen_deploy import report

    report.print_models(rows)


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; library errors become one sentence on stderr and a documented exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="qwen-deploy", standalone_mode=False)
    except NothingFitsError as exc:
        click.echo(str(exc), err=True)
        sys.exit(exc.exit_code)
    except QwenDeployError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_ERROR)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(EXIT_ERROR)
    except Exception as exc:  # a bug: say so in one line; --debug shows the traceback
        if debug:
            raise
        click.echo(
            f"Error: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback).", err=True
        )
        sys.exit(EXIT_ERROR)
