"""`qwen-deploy bench` (streamed load at each concurrency level) and `verify` (the planned context really
serves: filled with the server's own tokenizer; exit 5 when it does not)."""

from __future__ import annotations

import sys

import click

from qwen_deploy.cli.options import Integer, Number, Text, endpoint_options, print_json
from qwen_deploy.errors import EXIT_VERIFY, UsageError
from qwen_deploy.values import int_text, show


def _levels(text: str) -> list[int]:
    try:
        return [int_text(part, "--concurrency", 1, 1024) for part in text.split(",") if part.strip()]
    except UsageError:
        raise UsageError(
            f"--concurrency takes comma-separated levels from 1 to 1024, such as 1,4,16, not {show(text)}."
        ) from None


@click.command()
@endpoint_options
@click.option("--concurrency", "levels", default="1,4,16", show_default=True, type=Text(200), help="Levels.")
@click.option("--requests", "n_requests", type=Integer(1, 100_000), help="Requests per level (default: 2 × level).")
@click.option("--prompt-tokens", type=Integer(1, 1 << 24), default=128, show_default=True, help="Prompt length.")
@click.option("--max-tokens", type=Integer(1, 1 << 20), default=64, show_default=True, help="Tokens per answer.")
@click.option("--timeout", type=Number(0, 10**6, lo_open=True), default=600.0, show_default=True, help="Per request.")
@click.option("json_", "--json", is_flag=True, help="Print the measurements as JSON.")
def bench(name, url, model, levels, n_requests, prompt_tokens, max_tokens, api_key_file, timeout, json_) -> None:
    """Stream requests at each concurrency level: time to first token, inter-token latency, tokens/s."""
    from qwen_deploy import bench as bench_mod

    concurrency = _levels(levels)
    bench_mod.check_bench_options(concurrency, prompt_tokens, max_tokens)
    target = bench_mod.resolve_target(name, url, model, api_key_file)
    show = bench_mod.progress_printer()
    result = bench_mod.run_bench(target, concurrency, n_requests, prompt_tokens, max_tokens, timeout, show)
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    if json_:
        print_json(result)
        return
    from qwen_deploy import report

    report.print_bench(result)


@click.command()
@endpoint_options
@click.option("--context", type=Integer(64, 1 << 30), help="Context to prove (default: the plan's, or vLLM's).")
@click.option("--needle", is_flag=True, help="Hide a code word at the start; the answer must contain it.")
@click.option("--margin", type=Number(0, 0.5, lo_open=True), default=0.02, show_default=True, help="How close to fill.")
@click.option("--timeout", type=Number(0, 10**6, lo_open=True), default=900.0, show_default=True, help="Seconds.")
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
        print_json(result)
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
        sys.exit(EXIT_VERIFY)
