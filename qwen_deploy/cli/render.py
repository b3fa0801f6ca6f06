"""`qwen-deploy render KIND`: deployment files from the plan (or PLAN.yaml); starts nothing."""

from __future__ import annotations

from typing import Any

import click

from qwen_deploy.cli.options import Integer, ServerName, Text, plan_for_up, plan_options, require_choice


@click.command()
@click.argument("kind", type=click.Choice(["systemd", "compose", "k8s", "helm-values", "all"]))
@click.argument("plan_file", required=False, metavar="[PLAN.yaml]")
@plan_options
@click.option("--model-file", type=Text(), metavar="PATH", help="A local GGUF file / model folder the files use.")
@click.option("-o", "--output", "output_dir", type=Text(), metavar="DIR", help="Write the files into DIR.")
@click.option("--name", type=ServerName(), help="Service name (default: the model's name).")
@click.option("--replicas", type=Integer(1, 1000), help="Kubernetes / Helm replicas (default: the plan's).")
@click.option("--user", "user_unit", is_flag=True, help="A systemd user unit (systemctl --user).")
@click.option("--ui", "with_ui", is_flag=True, help="Also the chat page (`qwen-deploy ui`) as a service beside it.")
@click.option("--ui-port", type=Integer(1, 65535), default=8501, show_default=True, help="Port of the chat page.")
@click.option("--insecure-no-api-key", is_flag=True, help="A non-loopback --host may start without a key file.")
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
    insecure_no_api_key: bool,
    **options: Any,
) -> None:
    """Write a systemd unit, docker-compose file, Kubernetes manifests or production-stack Helm values from
    the plan (or PLAN.yaml). Starts nothing."""
    from pathlib import Path

    from qwen_deploy import render as render_mod
    from qwen_deploy import state

    result, host, port, _ = plan_for_up(ctx, plan_file, model_file, options)
    require_choice(result)
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
        insecure_no_api_key=insecure_no_api_key,
    )
    files, warnings = render_mod.render(result, kind, opts)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if not output_dir:
        for i, (file_name, text) in enumerate(files.items()):
            if len(files) > 1:
                click.echo(("\n" if i else "") + f"# ===== {file_name} =====")
            click.echo(text, nl=False)
        return
    from qwen_deploy.resources import write_files_atomic

    targets = {Path(output_dir) / file_name: text for file_name, text in files.items()}
    write_files_atomic(targets)  # all of them, or none
    for target in targets:
        click.echo(f"wrote {target}", err=True)
