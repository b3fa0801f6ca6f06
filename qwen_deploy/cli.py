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


def _port_value(text: str | int, host: str = "127.0.0.1") -> int:
    """--port N, or 'auto': a port that is free now."""
    if isinstance(text, int):
        return text
    if text.strip().lower() == "auto":
        from qwen_deploy.client import free_port

        return free_port(host if _HOST_RE.match(host) else "127.0.0.1")
    if not text.strip().isdigit():
        raise UsageError(f"--port must be a number from 1 to 65535 or 'auto', not {text!r}.")
    return int(text)


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
        click.option(
            "--port", default="8000", show_default=True, help="Port the server will listen on ('auto': a free one)."
        ),
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
    port: int | str,
):
    """Resolve the options into hardware, model and request, and plan. Shared by plan (and up/render)."""
    from qwen_deploy import hardware as hw_mod
    from qwen_deploy import planner
    from qwen_deploy.model import resolve_model, with_cached_files

    port = _port_value(port, host)
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


# ----------------------------------------------------------------------------- up / status / logs / down

_PLAN_OPTION_NAMES = (
    "model_ref", "hardware_file", "gpus", "vram", "ram", "cpus", "no_gpu", "context", "min_context",
    "concurrency", "engine", "precision", "kv_cache_dtype", "gpu_memory_utilization", "prefer",
)  # fmt: skip


def _given(ctx: click.Context, name: str) -> bool:
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def _plan_for_up(ctx: click.Context, plan_file: str | None, model_file: str | None, options: dict[str, Any]):
    """(plan, host, port, replan) for `up`: from a plan file, or planned now with the plan options."""
    from dataclasses import replace

    from qwen_deploy import planner

    if plan_file:
        given = [n for n in _PLAN_OPTION_NAMES if _given(ctx, n)]
        if given:
            flags = ", ".join("--" + n.replace("_ref", "").replace("_file", "").replace("_", "-") for n in given)
            raise UsageError(f"a plan file fixes the model, hardware and request; drop {flags} or the plan file.")
        from qwen_deploy.planfile import load_plan

        result = load_plan(plan_file)
        args = result.choice.engine_args
        host = options["host"] if _given(ctx, "host") else str(args.get("host", "127.0.0.1"))
        port = _port_value(options["port"] if _given(ctx, "port") else str(args.get("port", 8000)), host)
        _check_host_port(host, port)
        result = replace(result, request=replace(result.request, host=host, port=port))
    else:
        if model_file:
            from pathlib import Path

            if not Path(model_file).expanduser().exists():
                raise UsageError(f"--model-file {model_file!r} does not exist.")
            if not options.get("model_ref"):
                options["model_ref"] = model_file
            elif model_file.lower().endswith(".gguf"):
                from qwen_deploy.model import spec_from_gguf

                options["engine"] = options.get("engine") or "llamacpp"
                options["precision"] = (
                    options.get("precision") or spec_from_gguf(Path(model_file).expanduser()).artifacts[0].precision
                )
        options["port"] = _port_value(options["port"], options["host"])
        result = build_plan(**options)
        host, port = result.request.host, result.request.port

    def replan(request: planner.Request) -> planner.Plan:
        return planner.plan(result.model, result.hardware, replace(request, host=host, port=port))

    return result, host, port, replan


@cli.command()
@click.argument("plan_file", required=False, metavar="[PLAN.yaml]")
@_plan_options
@click.option("--model-file", metavar="PATH", help="Use this local GGUF file / model folder instead of downloading.")
@click.option("--api-key-file", metavar="FILE", help="Require this API key (one line); passed via the environment.")
@click.option("--name", help="Name of this server (default: the model's name).")
@click.option("--detach", is_flag=True, help="Return once the server is ready and leave it running.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Give up if not ready by then (default: from size).")
@click.option("--dry-run", is_flag=True, help="Print the plan and the exact command; start nothing.")
@click.option("--memory-limit", metavar="SIZE", help="Cap the engine's address space (RLIMIT_AS), e.g. 6GiB.")
@click.option("--max-retries", type=click.IntRange(0, 10), default=3, show_default=True, help="Step-downs on OOM.")
@click.option("--no-fallback", is_flag=True, help="Do not step down to a smaller candidate when memory runs out.")
@click.option("json_", "--json", is_flag=True, help="With --dry-run: print the plan and command as JSON.")
@click.pass_context
def up(
    ctx: click.Context,
    plan_file: str | None,
    model_file: str | None,
    api_key_file: str | None,
    name: str | None,
    detach: bool,
    timeout: float | None,
    dry_run: bool,
    memory_limit: str | None,
    max_retries: int,
    no_fallback: bool,
    json_: bool,
    **options: Any,
) -> None:
    """Start the best candidate (or PLAN.yaml's choice); ready means it answered a real chat completion."""
    from qwen_deploy import state
    from qwen_deploy.units import parse_size

    if timeout is not None and not timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds.")
    limit = parse_size(memory_limit) if memory_limit else None
    if limit is not None and limit < 64 * 1024**2:
        raise UsageError("--memory-limit below 64MiB cannot run any engine.")
    if name:
        state.check_name(name)
    result, host, port, replan = _plan_for_up(ctx, plan_file, model_file, options)
    if result.choice is None:
        from qwen_deploy import report
        from qwen_deploy.planner import nothing_fits_message

        report.print_plan(result)
        raise NothingFitsError(nothing_fits_message(result))
    if dry_run:
        _dry_run(result, model_file, host, port, name, api_key_file, json_)
        return
    from qwen_deploy import launch

    opts = launch.UpOptions(
        name=name,
        host=host,
        port=port,
        api_key_file=api_key_file,
        detach=detach,
        timeout_s=timeout,
        memory_limit_bytes=limit,
        max_retries=max_retries,
        fallback=not no_fallback,
        model_file=model_file,
    )
    code = launch.up(result, opts, replan)
    if code:
        sys.exit(code)


def _dry_run(result, model_file, host, port, name, api_key_file, json_: bool) -> None:
    import shlex
    from pathlib import Path

    from qwen_deploy import state
    from qwen_deploy.launch import build_argv

    choice = result.choice
    model = choice.engine_args.get("model")
    if model_file:
        model = str(Path(model_file).expanduser().resolve())
    argv = list(build_argv(choice, str(model), host, port))
    env = (
        {"API_KEY" if choice.engine == "llamacpp" else "VLLM_API_KEY": "<from " + api_key_file + ">"}
        if api_key_file
        else {}
    )
    data = {
        "name": name or state.default_name(choice.served_name),
        "command": argv,
        "environment": env,
        "plan": result.to_dict(),
    }
    if json_:
        _print_json(data)
        return
    from qwen_deploy import report

    report.print_plan(result)
    click.echo(f"name: {data['name']}")
    for key, value in env.items():
        click.echo(f"environment: {key}={value}")
    click.echo("command: " + shlex.join(argv))


def _alive(pid: int | None) -> bool:
    from qwen_deploy.procs import process_start_ticks

    return pid is not None and process_start_ticks(pid) is not None


def _pick(name: str | None, records: list, what: str):
    if name:
        for record in records:
            if record.name == name:
                return record
        raise QwenDeployError(f"no server named {name!r} is running; `qwen-deploy status` lists them.")
    if len(records) == 1:
        return records[0]
    if not records:
        raise QwenDeployError("no server started by qwen-deploy is running.")
    raise UsageError(
        f"{len(records)} servers are running ({', '.join(r.name for r in records)}); name the one to {what}."
    )


@cli.command()
@click.option("json_", "--json", is_flag=True, help="Print as JSON.")
def status(json_: bool) -> None:
    """Servers started by `up`: state, pid, URL; records of processes that are gone are reported and removed."""
    import time

    from qwen_deploy import state
    from qwen_deploy.client import Endpoint, HTTPFailure
    from qwen_deploy.engines import module

    with state.locked():
        stale = state.reap_stale()
    rows = []
    for record in state.records():
        answering = False
        try:
            Endpoint(record.url).get(module(record.engine).READY_PATH, timeout=1.0)
            answering = True
        except HTTPFailure as exc:
            answering = exc.status == 401  # it answers; it wants the key
        if record.state == "starting" and answering and not _alive(record.up_pid):
            # its `up` died while it loaded (kill -9); it has come up since: record what is true now
            record = state.update(record, state="ready", ready_at=time.time())
        row = record.to_dict()
        row.update(answering=answering, uptime_s=round(time.time() - record.started_at, 1))
        rows.append(row)
    if json_:
        _print_json({"servers": rows, "stale_removed": [r.name for r in stale]})
        return
    for record in stale:
        click.echo(f"{record.name}: stale record removed (pid {record.pid} is gone)", err=True)
    if not rows:
        click.echo("no servers running")
        return
    from qwen_deploy import report

    report.print_status(rows)


@cli.command()
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the server stops.")
@click.option("-n", "--lines", type=click.IntRange(0), default=50, show_default=True, help="Lines to show.")
def logs(name: str | None, follow: bool, lines: int) -> None:
    """The engine's log of a server started by `up` (kept after it stops)."""
    import time
    from pathlib import Path

    from qwen_deploy import state

    if name:
        state.check_name(name)
        path = state.log_path(name)
    else:
        folder = state.log_path("x").parent
        names = sorted(p.stem for p in folder.glob("*.log")) if folder.is_dir() else []
        running = [r.name for r in state.records()]
        choices = running or names
        if len(choices) != 1:
            raise UsageError("name the server: " + (", ".join(choices) if choices else "there are no logs yet") + ".")
        path = state.log_path(choices[0])
        name = choices[0]
    if not Path(path).is_file():
        raise QwenDeployError(f"no log for {name!r} ({path}).")
    with open(path, "rb") as handle:
        data = handle.read()
        text = data.decode(errors="replace").splitlines()
        for line in text[-lines:] if lines else []:
            click.echo(line)
        if not follow:
            return
        quiet_since = None  # between attempts of an OOM step-down there is briefly no record
        try:
            while True:
                chunk = handle.read()
                if chunk:
                    click.echo(chunk.decode(errors="replace"), nl=False)
                    continue
                record = state.read(name)
                if record is not None and record.alive():
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > 2.0:
                    break
                time.sleep(0.2)
            click.echo(handle.read().decode(errors="replace"), nl=False)  # the last lines it wrote
        except KeyboardInterrupt:
            pass


@cli.command()
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Stop every server started by `up`.")
@click.option("--timeout", type=float, default=15.0, show_default=True, help="Seconds between SIGTERM and SIGKILL.")
def down(name: str | None, all_: bool, timeout: float) -> None:
    """Stop a server started by `up` (SIGTERM to its process group, then SIGKILL) and free its port."""
    from qwen_deploy import state
    from qwen_deploy.procs import stop_group

    if name and all_:
        raise UsageError("pass a NAME or --all, not both.")
    with state.locked():
        for record in state.reap_stale():
            if all_ or name in (None, record.name):
                click.echo(f"{record.name}: was not running (pid {record.pid} is gone); stale record removed.")
                if name == record.name:
                    return
        records = state.records()
        targets = records if all_ else ([_pick(name, records, "stop")] if records or name else [])
        for record in targets:
            state.update(record, state="stopping")
    if not targets:
        click.echo("no servers running")
        return
    for record in targets:
        how = stop_group(record.pid, grace=timeout) if record.alive() or record.orphans_alive() else "already gone"
        state.remove_if(record.name, record.pid)
        click.echo(f"{record.name}: {how} (pid {record.pid}, port {record.port} free)")


@cli.command()
@click.option("--name", help="A server started by `up` (its URL, model and API key file).")
@click.option("--url", help="Any OpenAI-compatible server: http://HOST:PORT.")
@click.option("--model", "served_name", help="The served model name to expect (default: the first listed).")
@click.option(
    "--api-key-file", metavar="FILE", help="Key to send (default: $QWEN_DEPLOY_API_KEY, $VLLM_API_KEY, $API_KEY)."
)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait.")
def wait(name: str | None, url: str | None, served_name: str | None, api_key_file: str | None, timeout: float) -> None:
    """Wait until a server answers a real one-token chat completion (the readiness check of `up`)."""

    from qwen_deploy import launch, state

    if bool(name) == bool(url):
        raise UsageError("pass --name NAME or --url URL.")
    if not timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds.")
    if name:
        record = _pick(state.check_name(name), state.records(), "wait for")
        url, served_name = record.url, served_name or record.served_name
        api_key_file = api_key_file or record.api_key_file
    from qwen_deploy.client import env_api_key

    key = launch.read_api_key(api_key_file) if api_key_file else env_api_key()
    took = launch.wait_url(str(url), served_name, key, timeout, launch.Progress())
    click.echo(f"{url} serves{' ' + repr(served_name) if served_name else ''} (ready after {took:.1f} s)")


# ----------------------------------------------------------------------------- render


@cli.command()
@click.argument("kind", type=click.Choice(["systemd", "compose", "k8s", "helm-values", "all"]))
@click.argument("plan_file", required=False, metavar="[PLAN.yaml]")
@_plan_options
@click.option("--model-file", metavar="PATH", help="A local GGUF file / model folder the files should use.")
@click.option("-o", "--output", "output_dir", metavar="DIR", help="Write the files into DIR (default: print them).")
@click.option("--name", help="Service name (default: the model's name).")
@click.option("--replicas", type=int, help="Kubernetes / Helm replicas (default: the plan's).")
@click.option(
    "--user", "user_unit", is_flag=True, help="A systemd user unit (systemctl --user) instead of a system one."
)
@click.option("--ui", "with_ui", is_flag=True, help="Also the chat page (`qwen-deploy ui`) as a service beside it.")
@click.option("--ui-port", type=int, default=8501, show_default=True, help="Port of the chat page.")
@click.pass_context
def render(
    ctx: click.Context,
    kind: str,
    plan_file: str | None,
    model_file: str | None,
    output_dir: str | None,
    name: str | None,
    replicas: int | None,
    user_unit: bool,
    with_ui: bool,
    ui_port: int,
    **options: Any,
) -> None:
    """Write a systemd unit, docker-compose file, Kubernetes manifests or production-stack Helm values from
    the plan (or PLAN.yaml). Starts nothing."""
    from pathlib import Path

    from qwen_deploy import render as render_mod
    from qwen_deploy import state

    result, host, port, _ = _plan_for_up(ctx, plan_file, model_file, options)
    if result.choice is None:
        from qwen_deploy.planner import nothing_fits_message

        raise NothingFitsError(nothing_fits_message(result))
    opts = render_mod.RenderOptions(
        name=state.check_name(name) if name else state.default_name(result.choice.served_name),
        host=host,
        port=port,
        replicas=replicas,
        user_unit=user_unit,
        model_path=str(Path(model_file).expanduser().resolve()) if model_file else None,
        ui=with_ui,
        ui_port=ui_port,
        source_dir=render_mod.source_checkout(),
    )
    _check_host_port(host, ui_port)
    files, warnings = render_mod.render(result, kind, opts)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if not output_dir:
        for i, (file_name, text) in enumerate(files.items()):
            if len(files) > 1:
                click.echo(("\n" if i else "") + f"# ===== {file_name} =====")
            click.echo(text, nl=False)
        return
    from qwen_deploy.resources import write_atomic

    for file_name, text in files.items():
        target = Path(output_dir) / file_name
        write_atomic(target, text)
        click.echo(f"wrote {target}", err=True)


# ----------------------------------------------------------------------------- bench / verify


def _levels(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--concurrency takes comma-separated numbers such as 1,4,16, not {text!r}.") from None


def _endpoint_options(func):
    """--name / --url / --model / --api-key-file: which server bench, verify and ui talk to."""
    options = [
        click.option("--name", help="A server started by `up` (its URL, model, key, context and plan)."),
        click.option("--url", help="Any OpenAI-compatible server: http://HOST:PORT."),
        click.option("--model", help="The model to ask for (default: the served one / the first listed)."),
        click.option(
            "--api-key-file",
            metavar="FILE",
            help="Key to send (default: the one `up` used, or $QWEN_DEPLOY_API_KEY / $API_KEY / $VLLM_API_KEY).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command()
@_endpoint_options
@click.option("--concurrency", "levels", default="1,4,16", show_default=True, help="Concurrency levels.")
@click.option("--requests", "n_requests", type=int, help="Requests per level (default: 2 × concurrency, at least 4).")
@click.option("--prompt-tokens", type=int, default=128, show_default=True, help="Prompt length in tokens.")
@click.option("--max-tokens", type=int, default=64, show_default=True, help="Tokens to generate per request.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds per request.")
@click.option("json_", "--json", is_flag=True, help="Print the measurements as JSON.")
def bench(name, url, model, levels, n_requests, prompt_tokens, max_tokens, api_key_file, timeout, json_) -> None:
    """Stream requests at each concurrency level: time to first token, inter-token latency, tokens/s."""
    from qwen_deploy import bench as bench_mod

    if n_requests is not None and n_requests < 1:
        raise UsageError("--requests must be at least 1.")
    concurrency = _levels(levels)
    bench_mod.check_bench_options(concurrency, prompt_tokens, max_tokens)
    target = bench_mod.resolve_target(name, url, model, api_key_file)
    show = bench_mod.progress_printer()
    result = bench_mod.run_bench(target, concurrency, n_requests, prompt_tokens, max_tokens, timeout, show)
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    if json_:
        _print_json(result)
        return
    from qwen_deploy import report

    report.print_bench(result)


@cli.command()
@_endpoint_options
@click.option("--context", type=int, help="Context to prove (default: the plan's, or what vLLM reports).")
@click.option("--needle", is_flag=True, help="Hide a code word at the start; the answer must contain it.")
@click.option("--margin", type=float, default=0.02, show_default=True, help="How close to the context to fill.")
@click.option("--timeout", type=float, default=900.0, show_default=True, help="Seconds for the long request.")
@click.option("json_", "--json", is_flag=True, help="Print the result as JSON.")
def verify(name, url, model, context, needle, margin, api_key_file, timeout, json_) -> None:
    """Prove the context serves: fill it (counted by the server's tokenizer) and get an answer. Exit 0 pass, 5 fail."""
    from qwen_deploy import bench as bench_mod

    target = bench_mod.resolve_target(name, url, model, api_key_file)
    context = context or target.context
    if not context:
        raise UsageError(f"{target.base} does not say its context length: pass --context N.")
    say = (lambda message: click.echo(message, err=True)) if not json_ else (lambda message: None)
    result = bench_mod.run_verify(target, context, needle=needle, margin=margin, timeout_s=timeout, say=say)
    if json_:
        _print_json(result)
    else:
        verdict = "PASS" if result["passed"] else "FAIL"
        detail = (
            f"{result['prompt_tokens']:,} prompt tokens + 16 for the answer = {result.get('fill', 0):.1%} "
            f"of {context:,}"
            if "fill" in result
            else f"the server refused {result['prompt_tokens']:,} prompt tokens: {result.get('error')}"
        )
        click.echo(f"{verdict}: {target.base} ({target.model}), context {context:,}: {detail}")
        if result.get("answer") is not None:
            click.echo(f"answer: {result['answer']!r}")
        if needle:
            found = (result.get("checks") or {}).get("needle_found")
            click.echo(f"needle {result['needle']!r}: {'found' if found else 'not found'} in the answer")
    if not result["passed"]:
        sys.exit(bench_mod.EXIT_FAILED)


# ----------------------------------------------------------------------------- ui


@cli.command()
@_endpoint_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the page binds.")
@click.option("--port", default="8501", show_default=True, help="Port of the page ('auto': a free one).")
@click.option("--system-prompt", metavar="TEXT|@FILE", help="The system prompt (default: a short helpful one).")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Longest answer, in tokens.")
@click.option("--context", type=int, help="Context to keep the history in (default: the plan's / vLLM's).")
@click.option("--json-answers", is_flag=True, help="Ask for JSON answers (JSON mode), validate and show them as JSON.")
@click.option("--temperature", type=float, default=0.7, show_default=True, help="Sampling temperature.")
def ui(
    name, url, model, host, port, system_prompt, max_tokens, context, json_answers, temperature, api_key_file
) -> None:
    """A Chainlit chat page over the endpoint: streamed answers, history kept within the context."""
    import importlib.util
    import os
    import signal
    import subprocess
    import time

    from qwen_deploy import bench as bench_mod
    from qwen_deploy import state
    from qwen_deploy import ui as ui_mod
    from qwen_deploy.client import port_open
    from qwen_deploy.launch import check_port_free
    from qwen_deploy.procs import stop_group

    if importlib.util.find_spec("chainlit") is None or importlib.util.find_spec("openai") is None:
        raise QwenDeployError("the chat page needs Chainlit and the OpenAI client: pip install 'qwen-deploy[ui]'.")
    port = _port_value(port, host)
    _check_host_port(host, port)
    if max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1.")
    if not 0 <= temperature <= 2:
        raise UsageError("--temperature must be from 0 to 2.")
    target = bench_mod.resolve_target(name, url, model, api_key_file)
    if (context or target.context) and max_tokens >= (context or target.context):
        raise UsageError(f"--max-tokens {max_tokens} leaves no room in a {context or target.context}-token context.")
    if not (context or target.context):
        click.echo("warning: the server does not say its context length; the page keeps the history within 4,096 "
                   "tokens (pass --context N).", err=True)  # fmt: skip
    settings = ui_mod.UISettings(
        url=target.base,
        model=target.model,
        engine=target.engine,
        context=context or target.context,
        api_key_file=target.api_key_file,  # the one given, or the one `up` used
        system_prompt=ui_mod.system_prompt_arg(system_prompt, json_answers),
        max_tokens=max_tokens,
        json_mode=json_answers,
        title="qwen-deploy",
        temperature=temperature,
    )
    folder = state.state_dir() / "ui" / (name or f"port-{port}")
    app = ui_mod.write_project(folder, settings, host, port)
    check_port_free(host, port)
    env = dict(os.environ, CHAINLIT_APP_ROOT=str(folder), **{ui_mod.CONFIG_ENV: str(folder / "settings.json")})
    log = folder / "chainlit.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ui_mod.chainlit_command(app, host, port), cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        deadline = time.monotonic() + 120
        while not port_open("127.0.0.1" if host in ("0.0.0.0", "::") else host, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise QwenDeployError(f"the chat page did not start (log {log}):\n{tail}")
            time.sleep(0.1)
        click.echo(f"chat page for {ui_mod.header_text(settings)} at http://{host}:{port} (Ctrl-C stops it)", err=True)
        click.echo(f"http://{host}:{port}")
        code = proc.wait()
        if code:
            raise QwenDeployError(f"the chat page stopped with exit code {code} (log {log}).")
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        stop_group(proc.pid, proc=proc)


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
    except BaseException as exc:  # launch.Interrupted: a stop signal outside up's own handling
        if type(exc).__name__ != "Interrupted":
            raise
        sys.exit(128 + exc.signum)


def run() -> None:
    """The `qwen-deploy` command (and `python -m qwen_deploy`): main(), then a quick exit.

    The interpreter's teardown (freeing every module and object: ~10 ms, about what planning takes) buys a
    one-shot command nothing, so it is skipped: the atexit handlers still run and stdout/stderr are flushed,
    then os._exit. With other threads alive the normal exit runs (it waits for them)."""
    import os

    try:
        main()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        if sys.stderr is not None:
            sys.stderr.write(f"{code}\n")
        code = EXIT_ERROR
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        sys.exit(code)
    import atexit
    import contextlib

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: started with that descriptor closed
            with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`): nothing more can be said
                stream.flush()
    os._exit(code)
