"""`qwen-deploy ui`: the Chainlit chat page over an endpoint (the supervisor is ui.serve_page)."""

from __future__ import annotations

import click

from qwen_deploy.cli.options import Integer, Number, Text, endpoint_options, port_value
from qwen_deploy.errors import QwenDeployError, UsageError


@click.command()
@endpoint_options
@click.option("--host", default="127.0.0.1", show_default=True, type=Text(253), help="Address the page binds.")
@click.option("--port", default="8501", show_default=True, type=Text(16), help="Port of the page ('auto': a free one).")
@click.option("--system-prompt", type=Text(100_000), metavar="TEXT|@FILE", help="The system prompt.")
@click.option("--max-tokens", type=Integer(1, 1 << 20), default=512, show_default=True, help="Longest answer.")
@click.option("--context", type=Integer(1, 1 << 30), help="Context to keep the history in (default: the plan's).")
@click.option("--json-answers", is_flag=True, help="Ask for JSON answers (JSON mode), validate and show them as JSON.")
@click.option("--temperature", type=Number(0, 2), default=0.7, show_default=True, help="Sampling temperature.")
@click.option("--insecure-no-api-key", is_flag=True, help="Allow a non-loopback --host (the page has no login).")
def ui(
    name, url, model, host, port, system_prompt, max_tokens, context, json_answers, temperature, api_key_file,
    insecure_no_api_key,
) -> None:  # fmt: skip
    """A Chainlit chat page over the endpoint: streamed answers, history kept within the context."""
    import importlib.util

    from qwen_deploy import bench as bench_mod
    from qwen_deploy import ui as ui_mod
    from qwen_deploy.cli.options import check_host_port
    from qwen_deploy.client import describe_bind, is_loopback
    from qwen_deploy.paths import ui_dir

    if importlib.util.find_spec("chainlit") is None or importlib.util.find_spec("openai") is None:
        raise QwenDeployError("the chat page needs Chainlit and the OpenAI client: pip install 'qwen-deploy[ui]'.")
    port = port_value(port, host)
    check_host_port(host, port)
    if not is_loopback(host) and not insecure_no_api_key:
        raise UsageError(
            f"--host {host} would put the chat page on {describe_bind(host, port)}, reachable from other machines; "
            "the page has no login, so anyone reaching it could use the model (and its API key). To fix: keep "
            "--host 127.0.0.1 (and reach it through an SSH tunnel), or pass --insecure-no-api-key."
        )
    target = bench_mod.resolve_target(name, url, model, api_key_file)
    window = context or target.context
    if window and max_tokens >= window:
        raise UsageError(f"--max-tokens {max_tokens} leaves no room in a {window}-token context.")
    if not window:
        click.echo("warning: the server does not say its context length; the page keeps the history within 4,096 "
                   "tokens (pass --context N).", err=True)  # fmt: skip
    settings = ui_mod.UISettings(
        url=target.base,
        model=target.model,
        engine=target.engine,
        context=window,
        api_key_file=target.api_key_file,  # the one given, or the one `up` used
        system_prompt=ui_mod.system_prompt_arg(system_prompt, json_answers),
        max_tokens=max_tokens,
        json_mode=json_answers,
        title="qwen-deploy",
        temperature=temperature,
    )
    ui_mod.serve_page(settings, host, port, ui_dir(name or f"port-{port}"))
