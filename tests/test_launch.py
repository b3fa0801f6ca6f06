"""The parts of `up` that need no running engine: the step-down order, the engine's environment, bad options,
the exposure check, timeouts, and naming what is missing before anything is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_deploy import engines, launch
from qwen_deploy.hardware.catalog import simulate
from qwen_deploy.model.profiles import load_profile
from qwen_deploy.planner import Request, plan
from tests.conftest import make_hardware
from tests.test_cli import run

QWEN = load_profile("qwen3-4b-instruct-2507")


# ----------------------------------------------------------------------------- step down


def _replanner(p):
    return lambda request: plan(p.model, p.hardware, request)


def test_step_down_order_on_cpu():
    """32K -> 16K (same quant and KV) -> ... at --min-context a smaller KV type, then smaller weights."""
    hw = make_hardware(ram_gib=32)
    p = plan(QWEN, hw, Request(context=32768, engine="llamacpp", precision="q8_0"))
    first = p.choice
    assert (first.precision, first.kv_cache_dtype, first.context) == ("q8_0", "f16", 32768)
    p2, why = launch.step_down(p, first, _replanner(p))
    assert why == "context 32,768 -> 16,384 tokens"
    assert (p2.choice.precision, p2.choice.kv_cache_dtype, p2.choice.context) == ("q8_0", "f16", 16384)
    # at the shortest useful context (4096) the KV cache goes to 8 bits, same context
    at_min = plan(QWEN, hw, Request(context=4096, engine="llamacpp", precision="q8_0"))
    p3, why = launch.step_down(at_min, at_min.choice, _replanner(at_min))
    assert why == "KV cache f16 -> q8_0"
    assert (p3.choice.precision, p3.choice.kv_cache_dtype, p3.choice.context) == ("q8_0", "q8_0", 4096)
    # past the smallest KV type: the next smaller weights (q8_0 4.28 GB -> q6_k 3.31 GB), KV kept
    q4kv = plan(QWEN, hw, Request(context=4096, engine="llamacpp", precision="q8_0", kv_cache_dtype="q4_0"))
    p4, why = launch.step_down(q4kv, q4kv.choice, _replanner(q4kv))
    assert why == "weights q8_0 -> q6_k"
    assert (p4.choice.precision, p4.choice.kv_cache_dtype, p4.choice.context) == ("q6_k", "q4_0", 4096)
    # the smallest quant with the smallest KV at the shortest context: nothing left
    last = plan(QWEN, hw, Request(context=4096, engine="llamacpp", precision="q4_k_m", kv_cache_dtype="q4_0"))
    assert launch.step_down(last, last.choice, _replanner(last)) is None


def test_step_down_from_vllm_ends_on_the_cpu():
    hw = simulate(make_hardware(ram_gib=32), gpus=("RTX 4090",))
    p = plan(QWEN, hw, Request(context=4096, engine="vllm", precision="awq", kv_cache_dtype="fp8"))
    assert p.choice.engine == "vllm"
    nxt, why = launch.step_down(p, p.choice, _replanner(p))
    assert why == "vLLM on the GPU -> llama.cpp on the CPU"
    assert nxt.choice.engine == "llamacpp"


# ----------------------------------------------------------------------------- API key, model files


def test_engine_environment_removes_server_settings():
    llamacpp, vllm = engines.get("llamacpp"), engines.get("vllm")
    env = llamacpp.environment({"HOST": "0.0.0.0", "n_ctx": "1", "PATH": "/bin", "API_KEY": "old"}, "k")
    assert env == {"PATH": "/bin", "API_KEY": "k"}
    assert vllm.environment({"VLLM_API_KEY": "old", "PATH": "/bin"}, None) == {"PATH": "/bin"}


# ----------------------------------------------------------------------------- GGUF header reader


# ----------------------------------------------------------------------------- dry run and plan files


@pytest.mark.parametrize(
    "args,message",
    [
        (["--memory-limit", "10MiB"], "--memory-limit below 64MiB"),
        (["--memory-limit", "lots"], "size"),
        (["--timeout", "0"], "--timeout must be a number more than 0"),
        (["--timeout", "nan"], "--timeout must be a decimal number"),
        (["--port", "http"], "--port must be a whole number"),
        (["--port", "٨٠٠٠"], "--port must be a whole number"),
        (["--name", "Bad Name"], "is not a valid server name"),
    ],
)
def test_up_bad_options(small_gguf, args, message):
    code, _, err = run("up", "--model-file", str(small_gguf), "--dry-run", *args)
    assert code == 2
    assert message in err


def test_status_logs_down_with_nothing_running():
    assert run("status") == (0, "no servers running\n", "")
    assert json.loads(run("status", "--json")[1]) == {"servers": [], "stale_removed": [], "bad_records": []}
    code, _, err = run("down", "nothing")
    assert code == 1 and "no server named 'nothing'" in err
    code, _, err = run("logs")
    assert code == 2 and "there are no logs yet" in err


@pytest.mark.parametrize("name", ["-x", "..", "/etc/passwd", "Bad", "a b"])
@pytest.mark.parametrize("command", [["down"], ["logs"], ["wait", "--name"], ["bench", "--name"], ["verify", "--name"]])
def test_a_malformed_server_name_is_a_usage_error_with_nothing_running(command, name):
    """A name no server can have is the caller's mistake (exit 2), not "no such server" (exit 1); before, bench
    checked it only against running servers' records, so with none running it said exit 1."""
    if command[-1] != "--name" and name.startswith("-"):
        pytest.skip("a NAME argument starting with '-' is an unknown option (also exit 2)")
    code, _, err = run(*command, name)
    assert code == 2 and "is not a valid server name" in err, (code, err)


def test_expected_load_time_grows_with_weights():
    cpu = plan(QWEN, make_hardware(ram_gib=32), Request(engine="llamacpp", precision="q4_k_m")).choice
    # 2,497,281,120 B / 200 MB/s = 12.5 s + 30 s start-up
    assert cpu.engine_impl.expected_load_seconds(cpu) == pytest.approx(2_497_281_120 / 200e6 + 30)
    # three times that, at least 120 s: 3 × 42.486 = 127.46 s
    assert launch.default_timeout(cpu) == pytest.approx(3 * (2_497_281_120 / 200e6 + 30))


def test_path_of_a_gguf_in_the_state_plan(tmp_path, small_gguf):
    """--model-file with a profile: the file's precision is pinned and its header must match the profile."""
    code, _, err = run("up", "--model", "qwen3-4b-instruct-2507", "--model-file", str(small_gguf), "--dry-run")
    # the tiny file's quant (f16) is not a precision the Qwen profile has
    assert code == 2 and "--precision 'f16' is not available" in err
    assert Path(small_gguf).exists()


def test_missing_vllm_is_named_before_anything_is_downloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `vllm` command on it
    code, _, err = run("up", "--gpu", "RTX 4090", "--ram", "64GiB", "--engine", "vllm", "--port", "auto")
    assert code == 1
    assert "vLLM is not installed ('vllm' was not found)" in err


def test_an_error_raised_while_a_stop_signal_lands_counts_as_that_signal():
    """CI saw it (test_up.py::test_repeated_ctrl_c_while_loading_is_clean, three SIGINTs 20 ms apart while the
    engine loaded): "Error: qwen-deploy hit a bug (TypeError: expected a message argument)", exit 1 instead of
    130. CPython raises that TypeError from PyErr_SetImportError when the handler's exception lands inside an
    import's error path; `up` now takes any error raised after a stop signal arrived as that signal."""
    import signal

    from qwen_deploy.errors import Interrupted, QwenDeployError

    launch._SIGNALLED.clear()
    assert launch._interruption(TypeError("expected a message argument")) is None  # no signal: a real bug
    with pytest.raises(Interrupted):
        launch._on_signal(signal.SIGINT, None)
    assert launch._interruption(TypeError("expected a message argument")) == signal.SIGINT
    assert launch._interruption(Interrupted(signal.SIGTERM)) == signal.SIGTERM
    assert launch._interruption(SystemExit(1)) is None  # not an error: left to propagate
    # any other error stays itself after a Ctrl-C (a review found "port taken" swallowed as exit 130) ...
    assert launch._interruption(QwenDeployError("port 8000 is taken")) is None
    assert launch._interruption(AttributeError("x")) is None
    # ... unless it was raised while the Interrupted was being handled (its context)
    try:
        try:
            raise Interrupted(signal.SIGINT)
        except Interrupted:
            raise AttributeError("in a finally")  # noqa: B904
    except AttributeError as chained:
        assert launch._interruption(chained) == signal.SIGINT
    launch._SIGNALLED.clear()
