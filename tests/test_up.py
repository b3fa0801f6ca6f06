"""`up`, `status`, `logs`, `down` against the real llama-cpp-python server, run as a user runs them: the CLI
in a subprocess, real signals, kill -9, a real address-space limit. After every test the process table is
checked: no process carrying the test's tag may remain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.engine_harness import free_port
from tests.up_harness import QD, TAG_VAR, kill_all, new_tag, pid_alive, port_listening, read_until, tagged_pids

pytestmark = pytest.mark.engine


@pytest.fixture
def qd(tmp_path):
    tag = new_tag()
    env = dict(os.environ)  # conftest's autouse fixture already points state and HF cache at tmp_path
    env[TAG_VAR] = tag
    env["PYTHONUNBUFFERED"] = "1"
    yield QD(env)
    left = tagged_pids(tag)
    kill_all(left)
    assert not left, f"processes left behind: {left}"


def _chat(port: int, content: str, max_tokens: int = 16, key: str | None = None) -> dict:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(), headers=headers
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _up_detached(qd: QD, model: Path, port: int, *extra: str) -> subprocess.CompletedProcess:
    result = qd.run("up", "--model-file", str(model), "--port", str(port), "--detach", *extra)
    assert result.returncode == 0, result.stderr
    return result


# ----------------------------------------------------------------------------- the happy path


def test_up_detach_serves_status_shows_down_frees(qd, small_gguf):
    port = free_port()
    result = _up_detached(qd, small_gguf, port, "--name", "tiny")
    assert f"tiny ready at http://127.0.0.1:{port}/v1" in result.stdout
    assert "first completion" in result.stderr  # the progress line went through the stages
    answer = _chat(port, "Hello")
    assert answer["choices"][0]["message"]["role"] == "assistant"

    status = qd.status()
    [server] = status["servers"]
    assert (server["name"], server["port"], server["state"], server["answering"]) == ("tiny", port, "ready", True)
    assert server["engine"] == "llamacpp" and server["context"] == 8192
    pid = server["pid"]
    assert pid_alive(pid)
    # the state holds the plan it ran, and the log holds the engine's own lines
    plan = json.loads(Path(server["plan"]).read_text())
    assert plan["choice"]["engine_args"]["model"] == str(small_gguf.resolve())
    logs = qd.run("logs", "tiny", "-n", "5")
    assert logs.returncode == 0 and "/v1/chat/completions" in Path(server["log"]).read_text()

    down = qd.run("down", "tiny")
    assert down.returncode == 0, down.stderr
    assert "tiny: stopped" in down.stdout
    assert not pid_alive(pid)
    assert not port_listening(port)
    assert qd.status()["servers"] == []


def test_real_model_answers_sensibly(qd, smollm2):
    """SmolLM2-135M-Instruct from a PyPI package: the answer through `up` is the right number."""
    port = free_port()
    _up_detached(qd, smollm2, port, "--name", "smol")
    try:
        answer = _chat(port, "What is 2+2? Answer with a number.", max_tokens=12)
        assert "4" in answer["choices"][0]["message"]["content"]
    finally:
        assert qd.run("down", "smol").returncode == 0


def test_api_key_required_and_never_in_argv_state_or_log(qd, small_gguf, tmp_path):
    key = "sk-test-" + new_tag()
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    port = free_port()
    _up_detached(qd, small_gguf, port, "--name", "locked", "--api-key-file", str(key_file))
    record = qd.record("locked")
    with pytest.raises(urllib.error.HTTPError) as refused:
        _chat(port, "Hi", max_tokens=1)
    assert refused.value.code == 401
    assert _chat(port, "Hi", max_tokens=1, key=key)["choices"]
    cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes().decode()
    assert key not in cmdline
    assert key not in json.dumps(record) and key not in Path(record["log"]).read_text()
    assert qd.status()["servers"][0]["answering"]  # a 401 still means it answers
    assert qd.run("down", "locked").returncode == 0


def test_server_settings_in_the_environment_do_not_leak_in(qd, small_gguf):
    """llama-cpp-python reads MODEL, N_CTX, HOST, PORT ... from the environment; up removes them."""
    for name, value in {"HOST": "0.0.0.0", "PORT": "1", "N_CTX": "64", "MODEL": "/nonexistent", "API_KEY": "x"}.items():
        qd.env[name] = value
    port = free_port()
    _up_detached(qd, small_gguf, port, "--name", "clean")
    assert "llama_context: n_ctx                 = 8192" in Path(qd.record("clean")["log"]).read_text()
    assert _chat(port, "Hi", max_tokens=1)["choices"]  # no key needed, bound where planned
    assert qd.run("down", "clean").returncode == 0


def test_settings_names_match_the_installed_server():
    from llama_cpp.server.settings import Settings

    from qwen_deploy.engines.llamacpp import SETTINGS_ENV_NAMES

    assert set(Settings.model_fields) | {"config_file"} == set(SETTINGS_ENV_NAMES)


# ----------------------------------------------------------------------------- refusals before launch


def test_port_already_taken(qd, small_gguf):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = qd.run("up", "--model-file", str(small_gguf), "--port", str(port), "--detach")
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in result.stderr
    assert "Traceback" not in result.stderr


def test_second_up_same_name_or_port_refuses_with_first_pid(qd, small_gguf):
    port = free_port()
    _up_detached(qd, small_gguf, port, "--name", "first")
    pid = qd.record("first")["pid"]
    same_name = qd.run("up", "--model-file", str(small_gguf), "--port", str(free_port()), "--name", "first")
    assert same_name.returncode == 1
    assert f"a server named 'first' is already running (pid {pid}" in same_name.stderr
    same_port = qd.run("up", "--model-file", str(small_gguf), "--port", str(port), "--name", "second")
    assert same_port.returncode == 1
    assert f"port {port} is already used by 'first' (pid {pid})" in same_port.stderr
    assert qd.run("down", "--all").returncode == 0


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_gguf_refused_before_launch(qd, small_gguf, tmp_path, damage):
    bad = tmp_path / "bad.gguf"
    data = small_gguf.read_bytes()
    bad.write_bytes(data[: len(data) - 4096] if damage == "truncated" else b"GGUF" + os.urandom(4096))
    result = qd.run("up", "--model-file", str(bad), "--port", str(free_port()))
    assert result.returncode == 2
    assert f"{bad} is not a readable GGUF file" in result.stderr
    assert ("truncated" in result.stderr) == (damage == "truncated")
    assert not (qd.state_dir / "servers").exists() or not list((qd.state_dir / "servers").iterdir())


def test_missing_model_file(qd, tmp_path):
    result = qd.run("up", "--model-file", str(tmp_path / "nope.gguf"))
    assert result.returncode == 2
    assert "--model-file" in result.stderr and "does not exist" in result.stderr


def test_profile_gguf_not_cached_offline_names_repo_and_file(qd):
    result = qd.run("up", "--ram", "32GiB", "--no-gpu", "--precision", "q4_k_m", "--port", str(free_port()))
    assert result.returncode == 1
    assert "Qwen3-4B-Instruct-2507-Q4_K_M.gguf from unsloth/Qwen3-4B-Instruct-2507-GGUF" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr and "--model-file" in result.stderr


def test_disk_too_small_refused_before_download(qd, tmp_path):
    """A real 32 MiB tmpfs as the Hugging Face cache, downloads allowed: refused before any network use."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    cache = tmp_path / "small-disk"
    cache.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32M", "tmpfs", str(cache)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        qd.env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")
        result = qd.run("up", "--ram", "32GiB", "--no-gpu", "--precision", "q4_k_m", "--port", str(free_port()))
    finally:
        subprocess.run(["umount", str(cache)], check=True)
    assert result.returncode == 1
    assert "not enough disk space to download Qwen3-4B-Instruct-2507-Q4_K_M.gguf" in result.stderr
    assert "2.33 GiB" in result.stderr  # 2,497,281,120 bytes, the profile's download size
    assert "could not download" not in result.stderr  # refused before trying the (unreachable) endpoint


# ----------------------------------------------------------------------------- faults while it starts and runs


def _start_foreground(qd: QD, model: Path, name: str, port: int, *extra: str) -> subprocess.Popen:
    return qd.start("up", "--model-file", str(model), "--port", str(port), "--name", name, *extra)


def test_engine_killed_while_up_waits(qd, small_gguf):
    proc = _start_foreground(qd, small_gguf, "victim", free_port())
    record = qd.wait_record("victim")
    os.kill(record["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 4
    assert "the engine exited with code -9 before it was ready (killed by SIGKILL)" in err
    assert f"last lines of {record['log']}" in err
    assert qd.record("victim") is None


def test_sigint_during_loading_stops_the_engine(qd, small_gguf):
    proc = _start_foreground(qd, small_gguf, "interrupted", free_port())
    record = qd.wait_record("interrupted")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "SIGINT: stopping interrupted" in err
    assert not pid_alive(record["pid"])
    assert qd.record("interrupted") is None


def test_foreground_sigterm_after_ready_stops_cleanly(qd, small_gguf):
    port = free_port()
    proc = _start_foreground(qd, small_gguf, "fg", port)
    read_until(proc.stdout, "ready at")
    pid = qd.record("fg")["pid"]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not pid_alive(pid) and not port_listening(port)
    assert qd.record("fg") is None


def test_crash_after_ready_exits_nonzero_with_log_tail(qd, small_gguf):
    proc = _start_foreground(qd, small_gguf, "crashy", free_port())
    read_until(proc.stdout, "ready at")
    record = qd.record("crashy")
    killed = time.monotonic()
    os.kill(record["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    reported = time.monotonic() - killed
    assert proc.returncode == 4
    assert "crashy stopped on its own after it was ready (exit code -9)" in err
    assert "--- last lines of" in err and "llama_" in err  # the engine's own lines
    assert reported < 5  # bench/time_to_ready.py measures this figure; here only a loose bound
    assert qd.record("crashy") is None


def test_down_from_another_shell_ends_foreground_up_with_0(qd, small_gguf):
    proc = _start_foreground(qd, small_gguf, "shared", free_port())
    read_until(proc.stdout, "ready at")
    assert qd.run("down", "shared").returncode == 0
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "shared was stopped (qwen-deploy down)" in err


def test_up_killed_in_detached_mode_status_and_down_recover(qd, small_gguf):
    port = free_port()
    proc = qd.start("up", "--model-file", str(small_gguf), "--port", str(port), "--name", "orphan", "--detach")
    record = qd.wait_record("orphan")
    proc.kill()  # SIGKILL to `up` while it waits: the engine keeps loading on its own
    proc.communicate(timeout=10)
    [server] = qd.status()["servers"]
    assert server["name"] == "orphan" and server["pid"] == record["pid"]
    deadline = time.monotonic() + 60
    while not qd.status()["servers"][0]["answering"]:
        assert time.monotonic() < deadline, "the orphaned engine never answered"
        time.sleep(0.2)
    down = qd.run("down", "orphan")
    assert down.returncode == 0 and "orphan: stopped" in down.stdout
    assert not pid_alive(record["pid"]) and not port_listening(port)


def test_stale_record_reported_and_cleaned(qd, small_gguf):
    port = free_port()
    _up_detached(qd, small_gguf, port, "--name", "gone")
    pid = qd.record("gone")["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    status = qd.status()
    assert status["servers"] == [] and status["stale_removed"] == ["gone"]
    down = qd.run("down", "gone")
    assert down.returncode == 1 and "no server named 'gone'" in down.stderr


def test_foreground_up_killed_takes_the_engine_with_it(qd, small_gguf):
    proc = _start_foreground(qd, small_gguf, "tethered", free_port())
    read_until(proc.stdout, "ready at")
    pid = qd.record("tethered")["pid"]
    proc.kill()
    proc.communicate(timeout=10)
    deadline = time.monotonic() + 15
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)  # PR_SET_PDEATHSIG: a foreground engine never outlives its `up`
    assert qd.status()["stale_removed"] == ["tethered"]


# ----------------------------------------------------------------------------- out of memory, for real


def test_oom_steps_down_to_a_shorter_context(qd, synthetic_gguf):
    """Qwen3-4B's KV geometry: 147,456 B/token in f16, so 32,768 tokens need 4.5 GiB of KV and 16,384 need
    2.25 GiB. Capped at 4 GiB of address space the first allocation fails in llama.cpp itself
    ('ggml_aligned_malloc: insufficient memory'), and up retries at 16,384 tokens, which fits."""
    port = free_port()
    result = qd.run(
        "up", "--model-file", str(synthetic_gguf), "--context", "32768", "--memory-limit", "4GiB",
        "--port", str(port), "--name", "squeezed", "--detach",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "out of memory with llamacpp f16 · KV f16 at 32,768 tokens; retrying with context 32,768 -> 16,384" in (
        result.stderr
    )
    assert "16,384 tokens" in result.stdout
    log = Path(qd.record("squeezed")["log"]).read_text()
    assert "insufficient memory" in log  # the engine's own failure, in the same log, attempt 1
    assert "attempt 2" in log and "llama_context: n_ctx                 = 16384" in log
    assert _chat(port, "Hi", max_tokens=1)["choices"]
    assert qd.run("down", "squeezed").returncode == 0


def test_oom_without_fallback_fails_with_diagnosis(qd, synthetic_gguf):
    result = qd.run(
        "up", "--model-file", str(synthetic_gguf), "--context", "32768", "--memory-limit", "4GiB",
        "--port", str(free_port()), "--no-fallback",
    )  # fmt: skip
    assert result.returncode == 4
    assert "Diagnosis: the engine ran out of memory" in result.stderr
    assert "address space capped at 4.00 GiB" in result.stderr
    assert "retrying" not in result.stderr


# ----------------------------------------------------------------------------- wait, logs -f


def test_wait_uses_the_same_readiness_check(qd, small_gguf, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-wait\n")
    port = free_port()
    _up_detached(qd, small_gguf, port, "--name", "w", "--api-key-file", str(key_file))
    by_name = qd.run("wait", "--name", "w", "--timeout", "30")
    assert by_name.returncode == 0, by_name.stderr
    assert f"http://127.0.0.1:{port} serves 'tiny-qwen3'" in by_name.stdout
    no_key = qd.run("wait", "--url", f"http://127.0.0.1:{port}", "--timeout", "30")
    assert no_key.returncode == 4 and "refused the API key" in no_key.stderr
    qd.env["API_KEY"] = "sk-wait"  # what systemd's EnvironmentFile= gives ExecStartPost
    with_env = qd.run("wait", "--url", f"http://127.0.0.1:{port}", "--timeout", "30")
    assert with_env.returncode == 0, with_env.stderr
    assert qd.run("down", "w").returncode == 0
    closed = qd.run("wait", "--url", f"http://127.0.0.1:{port}", "--timeout", "1")
    assert closed.returncode == 4 and "did not serve within 1 s" in closed.stderr


def test_logs_follow_ends_when_the_server_stops(qd, small_gguf):
    _up_detached(qd, small_gguf, free_port(), "--name", "chatty")
    follower = qd.start("logs", "chatty", "-f", "-n", "3")
    time.sleep(0.5)
    assert follower.poll() is None  # still following
    assert qd.run("down", "chatty").returncode == 0
    out, err = follower.communicate(timeout=10)
    assert follower.returncode == 0, err
    assert "Shutting down" in out or "Finished server process" in out  # uvicorn's lines after SIGTERM


def test_repeated_ctrl_c_while_loading_is_clean(qd, small_gguf):
    """Three SIGINTs in a row: one clean stop, exit 130, no traceback, no record, no process."""
    proc = _start_foreground(qd, small_gguf, "impatient", free_port())
    record = qd.wait_record("impatient")
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not pid_alive(record["pid"]) and qd.record("impatient") is None


def test_sigterm_while_loading_exits_143(qd, small_gguf):
    proc = _start_foreground(qd, small_gguf, "termed", free_port())
    qd.wait_record("termed")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "SIGTERM: stopping termed" in err


def test_down_while_foreground_up_is_loading_ends_it_with_0(qd, small_gguf):
    proc = _start_foreground(qd, small_gguf, "early", free_port())
    qd.wait_record("early")
    assert qd.run("down", "early").returncode == 0
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "early was stopped" in err and "retrying" not in err
