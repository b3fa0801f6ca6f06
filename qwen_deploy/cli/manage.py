"""`status`, `logs`, `down` and `wait`: the servers `up` started, from their state records (state.py). A bad
record is one sentence on stderr and is left alone; nothing is signalled that is not provably ours."""

from __future__ import annotations

import click

from qwen_deploy.cli.options import Number, ServerName, Text, print_json
from qwen_deploy.errors import QwenDeployError, UsageError


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


def _say_bad(bad: list[str]) -> None:
    for sentence in bad:
        click.echo(f"warning: {sentence}", err=True)


@click.command()
@click.option("json_", "--json", is_flag=True, help="Print as JSON.")
def status(json_: bool) -> None:
    """Servers started by `up`: state, pid, URL, bind; records of processes that are gone are removed."""
    from qwen_deploy import state

    with state.locked():
        stale = state.reap_stale()
    records, bad = state.scan()
    rows = [state.status_row(record) for record in records]
    if json_:
        print_json({"servers": rows, "stale_removed": [r.name for r in stale], "bad_records": bad})
        return
    _say_bad(bad)
    for record in stale:
        click.echo(f"{record.name}: stale record removed (pid {record.pid} is gone)", err=True)
    if not rows:
        click.echo("no servers running")
        return
    from qwen_deploy import report

    report.print_status(rows)


@click.command()
@click.argument("name", required=False, type=ServerName())
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the server stops.")
@click.option("-n", "--lines", type=click.IntRange(0, 1_000_000), default=50, show_default=True, help="Lines to show.")
def logs(name: str | None, follow: bool, lines: int) -> None:
    """The engine's log of a server started by `up` (kept after it stops)."""
    import time
    from pathlib import Path

    from qwen_deploy import state

    if name:
        state.check_name(name)
    else:
        folder = state.state_dir() / "logs"
        names = sorted(p.stem for p in folder.glob("*.log") if state.NAME_RE.match(p.stem)) if folder.is_dir() else []
        running = [r.name for r in state.records()]
        choices = running or names
        if len(choices) != 1:
            raise UsageError("name the server: " + (", ".join(choices) if choices else "there are no logs yet") + ".")
        name = choices[0]
    path = state.log_path(name)
    if not Path(path).is_file() or Path(path).is_symlink():
        raise QwenDeployError(f"no log for {name!r} ({path}).")
    with open(path, "rb") as handle:
        size = path.stat().st_size
        handle.seek(max(0, size - 64 * 1024**2))  # the last 64 MiB is more than any tail asks for
        text = handle.read().decode(errors="replace").splitlines()
        for line in text[-lines:] if lines else []:
            click.echo(line)
        if not follow:
            return
        quiet_since = None  # between attempts of an OOM step-down there is briefly no record
        try:
            while True:
                chunk = handle.read(1024**2)
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


@click.command()
@click.argument("name", required=False, type=ServerName())
@click.option("--all", "all_", is_flag=True, help="Stop every server started by `up`.")
@click.option("--timeout", type=Number(0, 3600), default=15.0, show_default=True, help="Seconds before SIGKILL.")
def down(name: str | None, all_: bool, timeout: float) -> None:
    """Stop a server started by `up` (SIGTERM to its process group, then SIGKILL) and free its port."""
    from qwen_deploy import state
    from qwen_deploy.procs import stop_owned

    if name and all_:
        raise UsageError("pass a NAME or --all, not both.")
    if name:
        state.check_name(name)
    with state.locked():
        for record in state.reap_stale():
            if all_ or name in (None, record.name):
                click.echo(f"{record.name}: was not running (pid {record.pid} is gone); stale record removed.")
                if name == record.name:
                    return
        records, bad = state.scan()
        _say_bad(bad)
        targets = records if all_ else ([_pick(name, records, "stop")] if records or name else [])
        for record in targets:
            state.update(record, state="stopping")
    if not targets:
        click.echo("no servers running")
        return
    for record in targets:
        how = stop_owned(record.owned, grace=timeout)
        state.remove_if(record.name, record.pid)
        click.echo(f"{record.name}: {how} (pid {record.pid}, port {record.port} free)")


@click.command()
@click.option("--name", type=ServerName(), help="A server started by `up` (its URL, model and API key file).")
@click.option("--url", type=Text(2048), help="Any OpenAI-compatible server: http://HOST:PORT.")
@click.option("--model", "served_name", type=Text(256), help="The served model name to expect (default: the first).")
@click.option(
    "--api-key-file",
    type=Text(),
    metavar="FILE",
    help="Key to send (default: $QWEN_DEPLOY_API_KEY, $VLLM_API_KEY, $API_KEY).",
)
@click.option("--timeout", type=Number(0, 10**7, lo_open=True), default=600.0, show_default=True, help="Seconds.")
def wait(name: str | None, url: str | None, served_name: str | None, api_key_file: str | None, timeout: float) -> None:
    """Wait until a server answers a real one-token chat completion (the readiness check of `up`)."""
    from qwen_deploy import state
    from qwen_deploy.client import env_api_key, read_api_key
    from qwen_deploy.readiness import Progress, wait_url

    if bool(name) == bool(url):
        raise UsageError("pass --name NAME or --url URL.")
    if name:
        record = _pick(state.check_name(name), state.records(), "wait for")
        url, served_name = record.url, served_name or record.served_name
        api_key_file = api_key_file or record.api_key_file
    key = read_api_key(api_key_file) if api_key_file else env_api_key()
    took = wait_url(str(url), served_name, key, timeout, Progress())
    click.echo(f"{url} serves{' ' + repr(served_name) if served_name else ''} (ready after {took:.1f} s)")
