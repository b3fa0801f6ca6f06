"""The Click group behind `qwen-deploy`: the lazy command table (cli/__init__.COMMANDS), the global
options, and main(), which turns library errors into one sentence and a documented exit code."""

from __future__ import annotations

import importlib
import sys

import click

from qwen_deploy import __version__, values
from qwen_deploy.cli import COMMANDS
from qwen_deploy.errors import EXIT_ERROR, EXIT_USAGE, Interrupted, NothingFitsError, QwenDeployError


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
    except OSError as exc:
        import errno

        if exc.errno != errno.ENAMETOOLONG or debug:
            _bug(exc, debug)
        # a path the user gave (a file, a model, an output folder) that no file system can hold: wherever it is
        # first looked up, it is the caller's to fix
        where = values.show(exc.filename, 80) if exc.filename is not None else "a path given"
        click.echo(
            f"Error: {where} is longer than this system allows for a path (at most 255 bytes a name, 4,095 in "
            "all); give a shorter path.",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # a bug
        _bug(exc, debug)


def _bug(exc: Exception, debug: bool) -> None:
    """A bug: say so in one line; --debug shows the traceback."""
    if debug:
        raise exc
    click.echo(
        f"Error: qwen-deploy hit a bug ({type(exc).__name__}: {exc}); please report it with the output of "
        "the same command run with --debug.",
        err=True,
    )
    sys.exit(EXIT_ERROR)


def rendered_help() -> tuple[str, str]:
    """(`qwen-deploy --help` at 80 columns or more, `--version`) exactly as Click prints them (Click formats
    help at min(columns, 80) - 2 = 78 characters)."""
    from click.testing import CliRunner

    runner = CliRunner()
    help_text = runner.invoke(cli, ["--help"], prog_name="qwen-deploy", terminal_width=78).output
    version = runner.invoke(cli, ["--version"], prog_name="qwen-deploy").output
    return help_text, version
