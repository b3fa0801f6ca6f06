"""The command line, driven like a user would: exit codes, JSON, files, one-sentence errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from qwen_deploy.cli import main
from tests.conftest import make_hardware


def run(*args):
    """Run through main() so exit codes are the documented ones; returns (code, stdout, stderr)."""
    runner = CliRunner()
    result = runner.invoke(_main_as_command, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


import click  # noqa: E402


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.pass_context
def _main_as_command(ctx):
    main(list(ctx.args))


@pytest.fixture
def hw_file(tmp_path):
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(make_hardware(ram_gib=32).to_dict()))
    return str(path)


def test_help_lists_the_commands():
    code, out, _ = run("--help")
    assert code == 0
    for command in ("probe", "plan", "models"):
        assert command in out


def test_plan_json_for_a_described_gpu(hw_file):
    code, out, _ = run(
        "plan", "--hardware", hw_file, "--gpu", "RTX 4090", "--engine", "vllm", "--precision", "bf16", "--json"
    )
    assert code == 0
    data = json.loads(out)
    mem = data["choice"]["memory"]
    assert mem["kv_bytes_per_token"] == 147_456
    assert abs(mem["weights_bytes"] / 8_044_936_192 - 1) < 0.02
    assert data["choice"]["context"] <= mem["kv_capacity_tokens"]
    code, out, _ = run(
        "plan",
        "--hardware",
        hw_file,
        "--gpu",
        "RTX 4090",
        "--engine",
        "vllm",
        "--precision",
        "bf16",
        "--kv-cache-dtype",
        "fp8",
        "--json",
    )
    assert json.loads(out)["choice"]["memory"]["kv_bytes_per_token"] == 73_728


def test_plan_table_shows_choice_and_breakdown(hw_file):
    code, out, _ = run("plan", "--hardware", hw_file)
    assert code == 0
    assert "chosen" in out and "Memory of the choice" in out and "llama_cpp.server" in out


def test_nothing_fits_exits_3_with_a_fix(hw_file):
    code, out, err = run("plan", "--hardware", hw_file, "--ram", "2GiB", "--json")
    assert code == 3
    assert json.loads(out)["choice"] is None
    assert "To fix:" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["plan", "--gpu", "RTX 4099"], 2, "Did you mean"),
        (["plan", "--ram", "lots"], 2, "is not a size"),
        (["plan", "--context", "long"], 2, "--context"),
        (["plan", "--gpu", "L4", "--no-gpu"], 2, "contradicts"),
        (["plan", "--model", "gpt-17"], 2, "unknown model"),
        (["plan", "--hardware", "/nonexistent.yaml"], 2, "does not exist"),
        (["plan", "--host", "0.0.0.0\nExecStart=/bin/sh"], 2, "--host"),
        (["plan", "--engine", "tensorrt"], 2, "tensorrt"),
        (["plan", "--concurrency", "0.5"], 2, "--concurrency"),
        (["plan", "--concurrency", "inf"], 2, "--concurrency"),
        (["plan", "--vram", "1B"], 2, "less than 1 GiB"),
        (["plan", "--cpus", "0"], 2, "--cpus"),
        (["plan", "--min-context", "300000"], 2, "beyond"),
        (["plan", "--gpu", "0xL4"], 2, "from 1 to 64"),
        (["plan", "--gpu", "2x2xL4"], 2, "more than one count"),
        # numbers at the boundary: NaN, infinity, huge, Unicode digits, empty
        (["plan", "--vram", ""], 2, "must not be empty"),
        (["plan", "--ram", ""], 2, "must not be empty"),
        (["plan", "--ram", "9" * 5000], 2, "--ram"),
        (["plan", "--ram", "١٦GiB"], 2, "is not a size"),
        (["plan", "--cpus", "٨"], 2, "digits 0-9"),
        (["plan", "--cpus", "9" * 5000], 2, "--cpus"),
        (["plan", "--context", "9" * 5000], 2, "--context"),
        (["plan", "--context", "٣٢K"], 2, "--context"),
        (["plan", "--min-context", "nan"], 2, "--min-context"),
        (["plan", "--concurrency", "nan"], 2, "--concurrency"),
        (["plan", "--concurrency", "1e400"], 2, "--concurrency"),
        (["plan", "--gpu-memory-utilization", "nan"], 2, "--gpu-memory-utilization"),
        (["plan", "--gpu-memory-utilization", "0"], 2, "--gpu-memory-utilization"),
        (["plan", "--port", "٨٠٠٠"], 2, "--port"),
        (["plan", "--port", "99999"], 2, "--port"),
        (["plan", "--hardware", "/dev/zero"], 2, "not a regular file"),
        (["plan", "--hardware", "/"], 2, "is a folder"),
        (["plan", "--model", "/dev/zero"], 2, "not a regular file"),
    ],
)
def test_bad_input_is_one_sentence_and_a_usage_exit(hw_file, args, code, message):
    if "--hardware" not in args:
        args = [*args, "--hardware", hw_file]
    got, _, err = run(*args)
    assert got == code
    assert message in err
    assert "Traceback" not in err


def test_cached_gguf_is_named_in_the_command(tmp_path, hw_file, monkeypatch):
    snapshot = tmp_path / "hub" / "models--unsloth--Qwen3-4B-Instruct-2507-GGUF" / "snapshots" / "a06e946"
    snapshot.mkdir(parents=True)
    (snapshot / "Qwen3-4B-Instruct-2507-Q4_K_M.gguf").write_bytes(b"")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    code, out, _ = run("plan", "--hardware", hw_file, "--precision", "q4_k_m", "--json")
    assert json.loads(out)["choice"]["engine_args"]["model"] == str(snapshot / "Qwen3-4B-Instruct-2507-Q4_K_M.gguf")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    code, out, _ = run("plan", "--hardware", hw_file, "--precision", "q4_k_m", "--json")
    assert json.loads(out)["choice"]["engine_args"]["model"].startswith("hf://unsloth/Qwen3-4B-Instruct-2507-GGUF/")


def test_corrupt_gguf_model(tmp_path, hw_file):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    code, _, err = run("plan", "--hardware", hw_file, "--model", str(bad))
    assert code == 2 and "not a readable GGUF file" in err


def test_debug_shows_the_traceback(hw_file):
    with pytest.raises(Exception):  # noqa: B017 - any library error propagates with --debug
        CliRunner().invoke(
            _main_as_command, ["--debug", "plan", "--hardware", hw_file, "--ram", "lots"], catch_exceptions=False
        )


def test_plan_output_file_is_yaml_and_complete(tmp_path, hw_file):
    target = tmp_path / "out" / "plan.yaml"
    code, _, err = run("plan", "--hardware", hw_file, "-o", str(target))
    assert code == 0 and "wrote" in err
    data = yaml.safe_load(target.read_text())
    assert data["schema"] == "qwen-deploy/plan/v1" and data["choice"]["engine"] == "llamacpp"
    assert [p.name for p in target.parent.iterdir()] == ["plan.yaml"]  # no temp file left behind


def test_plan_for_a_gguf_file(small_gguf, hw_file):
    code, out, _ = run("plan", "--hardware", hw_file, "--model", str(small_gguf), "--context", "2K", "--json")
    assert code == 0
    choice = json.loads(out)["choice"]
    assert choice["precision"] == "f16" and choice["context"] == 2048
    assert choice["engine_args"]["model"] == str(small_gguf.resolve())


def test_models_lists_profiles():
    code, out, _ = run("models", "--json")
    assert code == 0
    names = {m["name"] for m in json.loads(out)}
    assert {
        "qwen3-4b-instruct-2507",
        "llama-3-8b-instruct",
        "mistral-7b-instruct-v0.3",
        "phi-3-mini-4k-instruct",
    } <= names


def test_probe_json_then_plan_hardware_equals_plain_plan(tmp_path):
    """`probe --json > hw.json && plan --hardware hw.json` chooses exactly what plain `plan` does."""
    env_cmd = [sys.executable, "-m", "qwen_deploy"]
    probe = subprocess.run([*env_cmd, "probe", "--json"], capture_output=True, text=True, check=True)
    (tmp_path / "hw.json").write_text(probe.stdout)
    from_file = subprocess.run(
        [*env_cmd, "plan", "--hardware", str(tmp_path / "hw.json"), "--json"], capture_output=True, text=True
    )
    plain = subprocess.run([*env_cmd, "plan", "--json"], capture_output=True, text=True)
    assert from_file.returncode == plain.returncode
    a, b = json.loads(from_file.stdout), json.loads(plain.stdout)

    def steady(c):
        # the memory free *now* is probed twice, a moment apart, and other programs move it: a candidate's
        # reason may mention it ("only X is free now"); everything else must be the same
        return c and {**c, "reason": re.sub(r"; only [\d.]+ \w+ is free now.*", "", c["reason"])}

    assert steady(a["choice"]) == steady(b["choice"])
    assert [steady(c) for c in a["candidates"]] == [steady(c) for c in b["candidates"]]


def test_cli_import_loads_no_heavy_modules():
    code = (
        "import sys, qwen_deploy.cli; "
        "heavy = ['jinja2', 'httpx', 'huggingface_hub', 'llama_cpp', 'vllm', 'torch', 'numpy', 'rich', 'yaml', 'gguf', 'pynvml', 'psutil', 'chainlit', 'openai']; "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plan_json_loads_no_numpy_rich_or_engines(hw_file):
    code = (
        "import sys; from qwen_deploy.cli import main\n"
        "try:\n    main(['plan', '--hardware', sys.argv[1], '--json'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('numpy', 'rich', 'gguf', 'llama_cpp', 'vllm', 'torch', 'jinja2', 'httpx') if m in sys.modules], file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code, hw_file], capture_output=True, text=True, check=True)
    assert result.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.engine
def test_up_spawns_the_engine_before_loading_the_http_client(small_gguf):
    """`up`'s time to ready is Python start-up + what it imports before the spawn + the engine's own start;
    the HTTP client (urllib.request with http.client, email, ssl: ~12 ms), hashing and rich are loaded after
    the spawn, while the engine loads. The spawn is intercepted (the engine is not the point here)."""
    code = (
        "import sys\n"
        "from qwen_deploy import launch\n"
        "from qwen_deploy.cli import main\n"
        "def spawn(*args, **kwargs):\n"
        "    late = ('urllib.request', 'http.client', 'email.parser', 'ssl', 'hashlib', 'rich', 'yaml', 'numpy')\n"
        "    print('loaded at spawn:', [m for m in late if m in sys.modules], file=sys.stderr)\n"
        "    raise SystemExit(0)\n"
        "launch.spawn = spawn\n"
        "main(['up', '--model-file', sys.argv[1], '--port', 'auto'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(small_gguf)], capture_output=True, text=True)
    assert "loaded at spawn: []" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "code"), [(["--version"], 0), (["plan", "--ram", "bogus"], 2), (["plan", "--no-such-option"], 2)]
)
def test_the_command_exits_quickly_without_losing_output_atexit_or_the_code(args, code):
    """run() skips the interpreter's teardown: the exit code, everything written and atexit handlers stay."""
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
        "sys.argv = ['qwen-deploy', *sys.argv[1:]]\n"
        "from qwen_deploy.cli import run\n"
        "run()\n"
        "print('not reached')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert result.returncode == code, result.stderr
    assert result.stderr.rstrip().endswith("atexit ran")
    assert "not reached" not in result.stdout
    if code == 0:
        assert result.stdout.startswith("qwen-deploy, version ")
    else:
        assert "Error" in result.stderr


def test_a_long_answer_through_a_pipe_is_complete(hw_file):
    result = subprocess.run(
        [sys.executable, "-m", "qwen_deploy", "plan", "--hardware", hw_file, "--json"], capture_output=True
    )
    assert result.returncode == 0
    assert len(result.stdout) > 8192  # more than one pipe buffer's worth, flushed before os._exit
    assert json.loads(result.stdout)["choice"]


@pytest.mark.parametrize(("args", "closed"), [(["--version"], ">&-"), (["status"], "2>&-")])
def test_a_closed_stdout_or_stderr_does_not_turn_success_into_a_crash(args, closed):
    command = f"{sys.executable!s} -m qwen_deploy {' '.join(args)} {closed}"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_a_fifo_is_refused_not_waited_for(tmp_path):
    """Opening a FIFO blocks until someone writes to it: every file option refuses it first."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (
        ["plan", "--hardware", str(fifo)],
        ["plan", "--model", str(fifo)],
        ["up", "--model-file", str(fifo), "--dry-run"],
        ["up", "--api-key-file", str(fifo), "--dry-run", "--model", "qwen3-4b"],
        ["up", str(fifo), "--dry-run"],
    ):
        done = subprocess.run([sys.executable, "-m", "qwen_deploy", *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and "not a regular file" in done.stderr, (args, done.stderr)


def test_nan_in_a_hardware_file_is_refused_and_json_stays_json(tmp_path, hw_file):
    data = json.loads(Path(hw_file).read_text())
    data["cpu"]["memory_bandwidth_gbps"] = float("nan")
    bad = tmp_path / "nan.json"
    bad.write_text(json.dumps(data))  # json.dumps writes the bare NaN the issue reproduced
    code, out, err = run("plan", "--hardware", str(bad), "--json")
    assert code == 2 and "memory_bandwidth_gbps" in err and out == ""
    code, out, _ = run("plan", "--hardware", hw_file, "--json")
    json.loads(out, parse_constant=lambda c: pytest.fail(f"plan --json printed {c}"))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d["cpu"].update(physical_cores=0), "physical_cores must be from 1"),
        (lambda d: d["cpu"].update(physical_cores="8"), "physical_cores must be a whole number"),
        (lambda d: d["cpu"].update(logical_cores=10**20), "logical_cores must be from 1"),
        (lambda d: d["memory"].update(total_bytes=-1), "total_bytes' must be from 0"),
        (lambda d: d["memory"].update(total_bytes=1.5e10), "total_bytes' must be a whole number"),
        (
            lambda d: d.update(
                gpus=[
                    {
                        "index": 0,
                        "name": "x",
                        "memory_total_bytes": 2**34,
                        "memory_free_bytes": 0,
                        "compute_capability": "١.٠",
                    }
                ]
            ),
            "compute_capability must look like",
        ),
        (lambda d: d.update(gpus="none"), "gpus must be a list"),
        (lambda d: d["cpu"].update(flags="avx2"), "cpu.flags must be a list"),
    ],
)
def test_bad_hardware_files(tmp_path, hw_file, edit, message):
    data = json.loads(Path(hw_file).read_text())
    edit(data)
    bad = tmp_path / "hw.json"
    bad.write_text(json.dumps(data))
    code, _, err = run("plan", "--hardware", str(bad))
    assert code == 2 and message in err and "bug" not in err, err


def test_a_5000_digit_number_in_a_hardware_file(tmp_path, hw_file):
    text = Path(hw_file).read_text().replace('"total_bytes": ', '"total_bytes": ' + "9" * 5000 + "0 * ", 1)
    text = text.replace("0 * ", "", 1)  # the digits replace the number: {"total_bytes": 9999...}
    bad = tmp_path / "hw.json"
    bad.write_text(text)
    code, _, err = run("plan", "--hardware", str(bad))
    assert code == 2 and "hardware file" in err and "bug" not in err, err


def test_plan_output_errors_are_clear(tmp_path, hw_file):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root): no read-only folder to test")
        code, _, err = run("plan", "--hardware", hw_file, "-o", str(locked / "plan.yaml"))
        assert code == 1 and "cannot write" in err and "bug" not in err
    finally:
        os.chmod(locked, 0o700)
    code, _, err = run("plan", "--hardware", hw_file, "-o", str(Path(hw_file)) + "/plan.yaml")  # a file as folder
    assert code == 1 and "cannot write" in err


def test_exposure_needs_a_key_or_an_explicit_insecure_flag(small_gguf, tmp_path):
    """A bind other machines can reach, with no API key, is refused (exit 2, To fix:) unless the user says so;
    the dry run reports the real bind."""
    base = ["up", "--model-file", str(small_gguf), "--dry-run", "--json"]
    for host in ("0.0.0.0", "::", "192.0.2.7", "example.org"):
        code, _, err = run(*base, "--host", host)
        assert code == 2 and "with no API key" in err and "To fix:" in err, (host, err)
    code, out, err = run(*base, "--host", "0.0.0.0", "--insecure-no-api-key")
    assert code == 0, err
    assert json.loads(out)["bind"] == "all interfaces, port 8000"
    key = tmp_path / "key"
    key.write_text("sk-test\n")
    code, out, err = run(*base, "--host", "0.0.0.0", "--api-key-file", str(key))
    assert code == 0 and "sk-test" not in out, err
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        assert run(*base, "--host", host)[0] in (0, 1), host  # loopback needs no key (1: not an address here)
    code, _, err = run("ui", "--url", "http://127.0.0.1:1", "--host", "0.0.0.0")
    assert code == 2 and "no login" in err


@pytest.mark.parametrize("columns", ["80", "200"])
def test_top_level_help_and_version_print_without_click_and_equal_clicks(columns):
    """`--help` and `--version` print text Click rendered ahead of time (qwen_deploy/cli/_help.py): it must
    be exactly what Click prints (rerun scripts/compile-profiles when the command table changes), and the
    process loads neither Click nor any command module."""
    code = (
        "import sys; sys.argv = ['qwen-deploy', sys.argv[1]]\n"
        "import atexit\n"
        "atexit.register(lambda: print(sorted(m for m in sys.modules if m == 'click' or "
        "m.startswith(('qwen_deploy.cli.', 'qwen_deploy.engines', 'qwen_deploy.planner'))), file=sys.stderr))\n"
        "from qwen_deploy.cli import run\nrun()\n"
    )
    env = dict(os.environ, COLUMNS=columns)
    for flag in ("--help", "--version"):
        fast = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, env=env)
        assert fast.returncode == 0
        assert fast.stderr.strip().splitlines()[-1] == "['qwen_deploy.cli._help']"
        from click.testing import CliRunner

        from qwen_deploy.cli.group import cli

        clicks = CliRunner().invoke(cli, [flag], prog_name="qwen-deploy", terminal_width=78).output
        assert fast.stdout == clicks, "stale qwen_deploy/cli/_help.py: run scripts/compile-profiles"


def test_narrow_terminals_get_clicks_own_help():
    narrow = subprocess.run([sys.executable, "-m", "qwen_deploy", "--help"], capture_output=True, text=True,
                            env=dict(os.environ, COLUMNS="60"))  # fmt: skip
    assert narrow.returncode == 0 and max(len(line) for line in narrow.stdout.splitlines()) <= 60


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "--json", "--no-gpu", "--ram", "16GiB", "--model", "é" * 300],
        ["render", "compose", "--gpu", "RTX 4090", "--ram", "64GiB", "--model-file", "é" * 300],
        ["plan", "--hardware", "/tmp/" + "a" * 300],
    ],
)
def test_a_path_longer_than_the_system_allows_is_a_usage_error(args):
    """bench/bad_inputs.py found it: 300 'é' (600 bytes, over NAME_MAX's 255) reached Path.exists(), which raises
    OSError ENAMETOOLONG instead of answering False, and the catch-all said "hit a bug"."""
    code, _, err = run(*args)
    assert code == 2 and "hit a bug" not in err, err
    assert "longer than this system allows" in err or "File name too long" in err
