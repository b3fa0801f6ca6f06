"""The command line: a Click group whose commands are registered lazily (vLLM's CLI_COMMANDS pattern).

Importing this package loads Click and nothing of the library; `qwen-deploy --help` lists the commands from
the table below without importing them, and running one imports only its module. Library errors become one
sentence on stderr and a documented exit code (errors.py): 0 ok · 1 error · 2 usage · 3 nothing fits ·
4 engine failed · 5 verify failed · 128+N stopped by signal N.
"""

from __future__ import annotations

import importlib
import sys

import click

from qwen_deploy import __version__
from qwen_deploy.errors import EXIT_ERROR, EXIT_USAGE, Interrupted, NothingFitsError, QwenDeployError

# name -> (module, function, one-line help): the help is here so that `--help` imports no command.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "probe": ("qwen_deploy.cli.probe", "probe", "Show this machine's GPUs, CPU, RAM (cgroup limits applied) and disk."),
    "plan": ("qwen_deploy.cli.plan", "plan", "What fits, ranked, with the memory arithmetic shown."),
    "models": ("qwen_deploy.cli.plan", "models", "List the built-in model profiles."),
    "gpus": ("qwen_deploy.cli.plan", "gpus", "List the GPU catalog that --gpu NAME takes."),
    "up": ("qwen_deploy.cli.serve", "up", "Start the best candidate; ready means it answered a chat completion."),
    "status": ("qwen_deploy.cli.manage", "status", "Servers started by `up`: state, pid, URL, bind."),
    "logs": ("qwen_deploy.cli.manage", "logs", "The engine's log of a server started by `up`."),
    "down": ("qwen_deploy.cli.manage", "down", "Stop a server started by `up` and free its port."),
    "wait": ("qwen_deploy.cli.manage", "wait", "Wait until a server answers a real one-token chat completion."),
    "render": ("qwen_deploy.cli.render", "render", "Write systemd, compose, Kubernetes or Helm files from the plan."),
    "bench": ("qwen_deploy.cli.measure", "bench", "Load an endpoint: time to first token, inter-token latency, tok/s."),
    "verify": ("qwen_deploy.cli.measure", "verify", "Prove the planned context serves (exit 5 when it does not)."),
    "ui": ("qwen_deploy.cli.ui", "ui", "A chat page over the endpoint: streamed answers, history within the context."),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs (or its own help is asked)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, _, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qwen-deploy")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Plan and serve Qwen3-4B-Instruct-2507 (and other dense GQA models) at the best configuration this
    machine, or a described one, allows."""
    ctx.obj = {"debug": debug}


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
    except Interrupted as exc:  # a stop signal outside up's own handling
        sys.exit(128 + exc.signum)
    except Exception as exc:  # a bug: say so in one line; --debug shows the traceback
        if debug:
            raise
        click.echo(
            f"Error: qwen-deploy hit a bug ({type(exc).__name__}: {exc}); please report it with the output of "
            "the same command run with --debug.",
            err=True,
        )
        sys.exit(EXIT_ERROR)


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
