"""The command line: a Click group whose commands are registered lazily (vLLM's CLI_COMMANDS pattern).

Importing this package loads neither Click nor the library: `qwen-deploy --help` and `--version` print text
rendered by Click ahead of time (_help.py, written by scripts/compile-profiles; a test keeps it equal to
Click's own), any other command loads Click and the group (group.py), and running a command imports only its
module. Library errors become one sentence on stderr and a documented exit code (errors.py): 0 ok · 1 error
· 2 usage · 3 nothing fits · 4 engine failed · 5 verify failed · 128+N stopped by signal N.
"""

from __future__ import annotations

import sys

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


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; library errors become one sentence on stderr and a documented exit code."""
    from qwen_deploy.cli.group import main as run_group

    run_group(argv)


def __getattr__(name: str):
    if name in ("cli", "LazyGroup"):
        from qwen_deploy.cli import group

        return getattr(group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _columns() -> int:
    """The terminal width as Click reads it (shutil.get_terminal_size: $COLUMNS, else stdout's size, else 80),
    without importing shutil."""
    import os

    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _prerendered(args: list[str]) -> tuple[str, int] | None:
    """(text, exit code) for the commands whose output Click renders the same every time: the top-level help
    (at 80 columns or more: Click wraps at min(columns, 80)) and --version; None: let Click run."""
    if args in (["--version"],):
        from qwen_deploy.cli._help import VERSION

        return VERSION, 0
    if args in (["--help"], ["-h"]) and _columns() >= 80:
        from qwen_deploy.cli._help import HELP

        return HELP, 0
    return None


def run() -> None:
    """The `qwen-deploy` command (and `python -m qwen_deploy`): main(), then a quick exit.

    The interpreter's teardown (freeing every module and object: ~10 ms, about what planning takes) buys a
    one-shot command nothing, so it is skipped: the atexit handlers still run and stdout/stderr are flushed,
    then os._exit. With other threads alive the normal exit runs (it waits for them)."""
    import contextlib
    import os

    fast = _prerendered(sys.argv[1:])
    try:
        if fast is not None:
            if sys.stdout is not None:  # None: started with stdout closed
                with contextlib.suppress(OSError, ValueError):
                    sys.stdout.write(fast[0])
            code: object = fast[1]
        else:
            main()
            code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        if sys.stderr is not None:
            sys.stderr.write(f"{code}\n")
        code = 1  # errors.EXIT_ERROR
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: started with that descriptor closed
            with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`): nothing more can be said
                stream.flush()
    os._exit(code)
