"""`qwen-deploy up`: plan (or read PLAN.yaml), fetch the model, start the engine, wait until it has served a
real completion; `--dry-run` shows the exact command and environment instead."""

from __future__ import annotations

import sys
from typing import Any

import click

from qwen_deploy.cli.options import (
    Integer,
    Number,
    ServerName,
    Text,
    check_exposure,
    plan_for_up,
    plan_options,
    print_json,
    require_choice,
)
from qwen_deploy.errors import UsageError


@click.command()
@click.argument("plan_file", required=False, metavar="[PLAN.yaml]")
@plan_options
@click.option("--model-file", type=Text(), metavar="PATH", help="Use this local GGUF file / model folder.")
@click.option("--api-key-file", type=Text(), metavar="FILE", help="Require this API key (one line); given via env.")
@click.option("--insecure-no-api-key", is_flag=True, help="Allow a non-loopback --host without an API key.")
@click.option("--name", type=ServerName(), help="Name of this server (default: the model's name).")
@click.option("--detach", is_flag=True, help="Return once the server is ready and leave it running.")
@click.option("--timeout", type=Number(0, 10**7, lo_open=True), metavar="SECONDS", help="Give up if not ready by then.")
@click.option("--dry-run", is_flag=True, help="Print the plan and the exact command; start nothing.")
@click.option("--memory-limit", type=Text(64), metavar="SIZE", help="Cap the engine's address space (RLIMIT_AS).")
@click.option("--max-retries", type=Integer(0, 10), default=3, show_default=True, help="Step-downs on OOM.")
@click.option("--no-fallback", is_flag=True, help="Do not step down to a smaller candidate when memory runs out.")
@click.option("json_", "--json", is_flag=True, help="With --dry-run: print the plan and command as JSON.")
@click.pass_context
def up(
    ctx: click.Context,
    plan_file: str | None,
    model_file: str | None,
    api_key_file: str | None,
    insecure_no_api_key: bool,
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

    limit = parse_size(memory_limit) if memory_limit is not None else None
    if limit is not None and limit < 64 * 1024**2:
        raise UsageError("--memory-limit below 64MiB cannot run any engine.")
    if name:
        state.check_name(name)
    if api_key_file is not None:
        from qwen_deploy.client import read_api_key

        read_api_key(api_key_file)  # a bad key file is refused now, not after the model is downloaded
    result, host, port, replan = plan_for_up(ctx, plan_file, model_file, options)
    check_exposure(host, api_key_file is not None, insecure_no_api_key)
    if result.choice is None:
        from qwen_deploy import report

        report.print_plan(result)
        require_choice(result)
    if dry_run:
        _dry_run(result, model_file, name, api_key_file, json_)
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


def _dry_run(result, model_file, name, api_key_file, json_: bool) -> None:
    import shlex
    from pathlib import Path

    from qwen_deploy import state
    from qwen_deploy.client import describe_bind

    choice = result.choice
    if model_file:
        choice = choice.at(model_path=str(Path(model_file).expanduser().resolve()))
    argv = list(choice.command)
    env = {choice.engine_impl.api_key_env: "<from " + api_key_file + ">"} if api_key_file else {}
    data = {
        "name": name or state.default_name(choice.served_name),
        "command": argv,
        "environment": env,
        "bind": describe_bind(choice.host, choice.port),
        "plan": result.to_dict(),
    }
    if json_:
        print_json(data)
        return
    from qwen_deploy import report

    report.print_plan(result)
    click.echo(f"name: {data['name']}")
    click.echo(f"listens on: {data['bind']}")
    for key, value in env.items():
        click.echo(f"environment: {key}={value}")
    click.echo("command: " + shlex.join(argv))
