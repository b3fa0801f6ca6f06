"""The parts of `up` that need no running engine: the step-down order, diagnoses from real log lines, state
records and PID reuse, the API key file, model files, the GGUF header reader, plan files and --dry-run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_deploy import launch, procs, state
from qwen_deploy.errors import QwenDeployError, UsageError
from qwen_deploy.hardware import simulate
from qwen_deploy.model import load_profile, spec_from_gguf
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


# ----------------------------------------------------------------------------- diagnoses


LLAMA_OOM = """ggml_aligned_malloc: insufficient memory (attempted to allocate 4608.00 MB)
ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 4831838208
llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache
ValueError: Failed to create llama_context"""
VLLM_OOM = (
    "ValueError: To serve at least one request with the models's max seq len (262144), (36.00 GiB KV cache is "
    "needed, which is larger than the available KV cache memory (12.95 GiB)."
)
PORT_IN_USE = (
    "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use"
)


@pytest.mark.parametrize(
    "engine,text,kind",
    [
        ("llamacpp", LLAMA_OOM, "oom"),
        ("llamacpp", PORT_IN_USE, "port"),
        ("llamacpp", "ValueError: Model path does not exist: /x.gguf", "missing_file"),
        ("llamacpp", "gguf_init_from_file_impl: invalid magic characters: 'xxxx'", "corrupt"),
        ("vllm", VLLM_OOM, "oom"),
        ("vllm", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "oom"),
        (
            "vllm",
            "RuntimeError: CUDA error: no kernel image is available for execution on the device",
            "gpu_unsupported",
        ),
        ("vllm", PORT_IN_USE, "port"),
        ("llamacpp", "INFO:     Uvicorn running on http://127.0.0.1:8000", None),
    ],
)
def test_diagnose(engine, text, kind):
    assert launch.diagnose(engine, text) == kind


def test_stages_follow_the_log():
    text = "llama_model_loader: loaded meta data with 30 key-value pairs\nload_tensors: CPU model buffer size = 1 MiB\n"
    assert launch.stage_of("llamacpp", text) == "loading weights"
    assert launch.stage_of("llamacpp", text + "llama_kv_cache: size = 1 MiB") == "allocating the KV cache"
    assert launch.stage_of("vllm", "Model loading took 7.6 GiB and 3.1 s") == "profiling memory"


def test_log_reader_reads_only_new_bytes_and_follows_stages_across_cut_lines(tmp_path):
    """The engine writes in pieces: a line (and a UTF-8 character) can be cut between two polls."""
    log = tmp_path / "engine.log"
    log.write_bytes(b"=== header line of an earlier attempt\n")
    reader = launch.LogReader(log, log.stat().st_size)
    assert reader.poll_stage("llamacpp") is None
    data = (
        "llama_model_loader: loaded meta data with 30 key-value pairs\n"
        "load_tensors: CPU model buffer size = 1 MiB (caf\u00e9 \u2014 done)\n"
        "llama_kv_cache: size = 1 MiB\n"
    ).encode()
    dash = data.index("\u2014".encode())
    cuts = [data.index(b"sors:"), dash + 2, data.index(b"_cache"), len(data)]  # mid-word, mid-character
    pieces = [data[a:b] for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
    seen = []
    for piece in pieces:
        with open(log, "ab") as handle:
            handle.write(piece)
        seen.append(reader.poll_stage("llamacpp"))
    assert seen == ["reading the GGUF header", "loading weights", "loading weights", "allocating the KV cache"]
    assert reader.text == data.decode()  # nothing read twice, nothing lost, no U+FFFD
    assert "earlier attempt" not in reader.text
    assert reader.poll() == ""
    with open(log, "ab") as handle:  # the engine dies in the middle of a character
        handle.write(b"fatal: out of memory \xe2\x80")
    assert reader.poll() == "fatal: out of memory "
    assert reader.tail(1) == "fatal: out of memory \ufffd"  # the report shows what there is


def test_a_stage_once_reached_is_kept():
    assert launch.stage_of("llamacpp", "INFO: loading", after="loading weights") == "loading weights"
    assert launch.stage_of("llamacpp", "compute buffer size = 1", after="loading weights") == (
        "reserving compute buffers"
    )


# ----------------------------------------------------------------------------- state


def _record(name: str, pid: int, ticks: int, port: int = 8000) -> state.Record:
    return state.Record(
        name=name, pid=pid, start_ticks=ticks, engine="llamacpp", host="127.0.0.1", port=port, served_name="m",
        model="m", context=4096, log="/l", plan="/p", command=["x"], started_at=0.0, mode="detached",
    )  # fmt: skip


def test_state_dir_override_and_xdg(monkeypatch, tmp_path):
    assert state.state_dir() == tmp_path / "state"  # conftest sets QWEN_DEPLOY_STATE_DIR
    monkeypatch.delenv("QWEN_DEPLOY_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state.state_dir() == tmp_path / "xdg" / "qwen-deploy"


def test_record_of_an_exited_process_is_stale():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ticks = procs.process_start_ticks(child.pid)
    assert ticks is not None
    state.write(_record("a", child.pid, ticks))
    assert state.read("a").alive()
    child.kill()
    child.wait()
    assert not state.read("a").alive()
    assert [r.name for r in state.reap_stale()] == ["a"]
    assert state.records() == []


def test_reused_pid_is_not_ours():
    """A live PID whose start time differs from the record's belongs to another process: never signalled."""
    me = procs.process_start_ticks(1) or 0
    state.write(_record("b", 1, me + 1))
    assert not state.read("b").alive()


def test_record_file_is_private(tmp_path):
    state.write(_record("c", 1, 1))
    mode = (tmp_path / "state" / "servers" / "c.json").stat().st_mode & 0o777
    assert mode == 0o600


@pytest.mark.parametrize("name", ["Bad", "a b", "-x", "x/y", "a" * 64, "x\ny", ""])
def test_bad_names_are_refused(name):
    with pytest.raises(UsageError):
        state.check_name(name)


def test_default_name_from_served_name():
    assert state.default_name("Qwen3-4B-Instruct-2507") == "qwen3-4b-instruct-2507"
    assert state.default_name("a b/c") == "a-b-c"


# ----------------------------------------------------------------------------- API key, model files


@pytest.mark.parametrize("content", ["", "two words", "a\nb", "\x01bad"])
def test_bad_api_key_files(tmp_path, content):
    key = tmp_path / "key"
    key.write_text(content)
    with pytest.raises(UsageError):
        launch.read_api_key(str(key))


def test_api_key_file_one_line(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-123\n")
    assert launch.read_api_key(str(key)) == "sk-123"
    with pytest.raises(UsageError, match="does not exist"):
        launch.read_api_key(str(tmp_path / "missing"))


def test_engine_environment_removes_server_settings():
    from qwen_deploy.engines import llamacpp, vllm

    env = llamacpp.environment({"HOST": "0.0.0.0", "n_ctx": "1", "PATH": "/bin", "API_KEY": "old"}, "k")
    assert env == {"PATH": "/bin", "API_KEY": "k"}
    assert vllm.environment({"VLLM_API_KEY": "old", "PATH": "/bin"}, None) == {"PATH": "/bin"}


def test_check_gguf_refuses_another_model(small_gguf, synthetic_gguf):
    from qwen_deploy.modelfiles import check_gguf

    with pytest.raises(UsageError, match="is not the model the plan is for"):
        check_gguf(small_gguf, spec_from_gguf(synthetic_gguf))
    assert check_gguf(small_gguf, spec_from_gguf(small_gguf)).layers == 2


def test_not_cached_and_offline_names_what_to_get(tmp_path):
    from qwen_deploy.modelfiles import fetch_gguf

    art = QWEN.artifact("llamacpp", "q4_k_m")
    with pytest.raises(QwenDeployError) as err:
        fetch_gguf(art, tmp_path / "hf")
    text = str(err.value)
    assert "Qwen3-4B-Instruct-2507-Q4_K_M.gguf from unsloth/Qwen3-4B-Instruct-2507-GGUF" in text
    assert "--revision a06e946bb6b655725eafa393f4a9745d460374c9" in text


# ----------------------------------------------------------------------------- GGUF header reader


def test_header_reader_agrees_with_gguf_package(synthetic_gguf, gemma3):
    """Every tensor's name, type, shape and byte size, and the scalar fields, as the gguf package reads them."""
    import gguf

    from qwen_deploy.gguf_header import read_header

    for path in (synthetic_gguf, gemma3):
        ours = read_header(path)
        theirs = gguf.GGUFReader(str(path), "r")
        assert [(t.name, t.type_name, t.shape, t.n_bytes) for t in ours.tensors] == [
            (t.name, t.tensor_type.name, tuple(int(x) for x in t.shape), int(t.n_bytes)) for t in theirs.tensors
        ]
        assert ours.data_offset == theirs.data_offset
        for key, field in theirs.fields.items():
            if key.startswith("GGUF.") or not field.types:
                continue
            if field.types[0] == gguf.GGUFValueType.ARRAY:
                assert ours.array_lengths[key] == len(field.data), key
            elif field.types[0] == gguf.GGUFValueType.STRING:
                assert ours.fields[key] == bytes(field.parts[field.data[0]]).decode(), key
            else:
                assert ours.fields[key] == pytest.approx(field.parts[field.data[0]].tolist()[0]), key


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.75])
def test_header_cut_inside_the_vocabulary_is_refused(tmp_path, synthetic_gguf, cut):
    """The vocabulary (151,936 strings, walked without a bounds test per string) ends past a cut file."""
    from qwen_deploy.gguf_header import GGUFError, read_header

    header = read_header(synthetic_gguf)
    with open(synthetic_gguf, "rb") as handle:
        data = handle.read(header.data_offset)
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: int(len(data) * cut)])  # the vocabulary is most of the header: each cut lands in it
    with pytest.raises(GGUFError, match="a string array runs past the end"):
        read_header(bad)


def test_a_vocabulary_string_of_absurd_length_is_refused(tmp_path, synthetic_gguf):
    """A corrupt length of 2**63 pushes the walk past what an index can hold (OverflowError, not struct.error):
    still a GGUF error, and one sentence from `plan`."""
    import struct

    from qwen_deploy.gguf_header import GGUFError, read_header

    data = bytearray(synthetic_gguf.read_bytes()[: read_header(synthetic_gguf).data_offset])
    key = b"tokenizer.ggml.tokens"
    first = data.index(key) + len(key) + 4 + 4 + 8  # value type ARRAY, element type STRING, count
    data[first : first + 8] = struct.pack("<Q", 2**63)
    bad = tmp_path / "absurd.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="a string array runs past the end"):
        read_header(bad)
    code, _, err = run("plan", "--model", str(bad))
    assert code == 2 and "not a readable GGUF file" in err and "Traceback" not in err


def test_ggml_type_table_matches_gguf_package():
    from gguf.constants import GGML_QUANT_SIZES

    from qwen_deploy.gguf_header import GGML_TYPES

    assert {t.value: (t.name, *size) for t, size in GGML_QUANT_SIZES.items()} == GGML_TYPES


# ----------------------------------------------------------------------------- dry run and plan files


def test_dry_run_prints_the_command_and_starts_nothing(small_gguf):
    code, out, err = run("up", "--model-file", str(small_gguf), "--port", "8123", "--dry-run", "--json")
    assert code == 0, err
    data = json.loads(out)
    argv = data["command"]
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    args = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert args["--model"] == str(small_gguf.resolve())
    assert args["--port"] == "8123" and args["--host"] == "127.0.0.1"
    assert args["--chat_format"] == "chat_template.default"
    assert args["--logits_all"] == "false" and args["--n_ctx"] == "8192"
    assert data["plan"]["choice"]["engine_args"]["n_ctx"] == 8192
    assert not state.records()


def test_up_from_a_plan_file_runs_the_files_args(tmp_path, small_gguf):
    plan_file = tmp_path / "plan.yaml"
    code, _, err = run("plan", "--model", str(small_gguf), "-o", str(plan_file), "--json")
    assert code == 0, err
    code, direct, _ = run("up", "--model-file", str(small_gguf), "--dry-run", "--json")
    code2, from_file, err = run("up", str(plan_file), "--dry-run", "--json")
    assert code == code2 == 0, err
    assert json.loads(direct)["command"] == json.loads(from_file)["command"]
    # the file is the contract: an edited n_ctx is what runs
    import yaml

    data = yaml.safe_load(plan_file.read_text())
    data["choice"]["engine_args"]["n_ctx"] = 2048
    plan_file.write_text(yaml.safe_dump(data))
    code, out, err = run("up", str(plan_file), "--port", "9001", "--dry-run", "--json")
    assert code == 0, err
    argv = json.loads(out)["command"]
    assert argv[argv.index("--n_ctx") + 1] == "2048" and argv[argv.index("--port") + 1] == "9001"


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.update(schema="other"), "is not a qwen-deploy plan"),
        (lambda d: d.update(choice=None), "has no choice"),
        (lambda d: d["choice"]["engine_args"].update(evil="x"), "flags qwen-deploy does not pass: evil"),
        (lambda d: d["choice"]["engine_args"].update(model_alias="a\nb"), "must be one printable value"),
        (lambda d: d["choice"]["engine_args"].update(n_ctx="lots"), "n_ctx must be a number, not 'lots'"),
        (lambda d: d["choice"]["engine_args"].update(n_ctx=True), "n_ctx must be a number"),
        (lambda d: d["choice"]["engine_args"].update(model_alias="--port=1"), "must not start with '-'"),
        (lambda d: d["choice"]["engine_args"].update(port="abc"), "port must be a number, not 'abc'"),
    ],
)
def test_bad_plan_files(tmp_path, small_gguf, edit, message):
    plan_file = tmp_path / "plan.json"
    assert run("plan", "--model", str(small_gguf), "-o", str(plan_file))[0] == 0
    data = json.loads(plan_file.read_text())
    edit(data)
    plan_file.write_text(json.dumps(data))
    code, _, err = run("up", str(plan_file), "--dry-run")
    assert code in (2, 3)
    assert message in err and "Traceback" not in err


def test_plan_file_and_plan_options_conflict(tmp_path, small_gguf):
    plan_file = tmp_path / "plan.json"
    assert run("plan", "--model", str(small_gguf), "-o", str(plan_file))[0] == 0
    code, _, err = run("up", str(plan_file), "--context", "4096", "--dry-run")
    assert code == 2 and "drop --context" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--memory-limit", "10MiB"], "--memory-limit below 64MiB"),
        (["--memory-limit", "lots"], "size"),
        (["--timeout", "0"], "--timeout must be a positive"),
        (["--port", "http"], "--port must be a number"),
        (["--name", "Bad Name"], "is not a valid server name"),
    ],
)
def test_up_bad_options(small_gguf, args, message):
    code, _, err = run("up", "--model-file", str(small_gguf), "--dry-run", *args)
    assert code == 2
    assert message in err


def test_port_auto_picks_a_free_port(small_gguf):
    code, out, _ = run("up", "--model-file", str(small_gguf), "--port", "auto", "--dry-run", "--json")
    argv = json.loads(out)["command"]
    port = int(argv[argv.index("--port") + 1])
    assert code == 0 and 1024 < port < 65536


def test_status_logs_down_with_nothing_running():
    assert run("status") == (0, "no servers running\n", "")
    assert json.loads(run("status", "--json")[1]) == {"servers": [], "stale_removed": []}
    code, _, err = run("down", "nothing")
    assert code == 1 and "no server named 'nothing'" in err
    code, _, err = run("logs")
    assert code == 2 and "there are no logs yet" in err


def test_expected_load_time_grows_with_weights():
    cpu = plan(QWEN, make_hardware(ram_gib=32), Request(engine="llamacpp", precision="q4_k_m")).choice
    # 2,497,281,120 B / 200 MB/s = 12.5 s + 30 s start-up
    assert launch.expected_load_seconds(cpu) == pytest.approx(2_497_281_120 / 200e6 + 30)
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
    assert "vLLM is not installed (no `vllm` command on PATH)" in err


def test_dead_leader_with_live_group_members_is_stopped_not_forgotten():
    """vLLM's API server can die while its engine core lives on: the group is stopped, then the record goes."""
    import os
    import signal
    import time

    code = "import os, time\nif os.fork() == 0:\n    time.sleep(300)\nelse:\n    time.sleep(300)\n"
    leader = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.5)
    state.write(_record("split", leader.pid, procs.process_start_ticks(leader.pid)))
    members = [
        int(p) for p in subprocess.run(["pgrep", "-g", str(leader.pid)], capture_output=True, text=True).stdout.split()
    ]
    assert len(members) == 2
    os.kill(leader.pid, signal.SIGKILL)
    leader.wait()
    assert state.read("split").orphans_alive()
    assert [r.name for r in state.reap_stale()] == ["split"]
    assert not procs.group_alive(leader.pid)


def test_fetch_snapshot_uses_the_cache_before_checking_disk(tmp_path, monkeypatch):
    """A complete cached checkpoint is used as is, even online and even when the disk could not hold it again."""
    from dataclasses import replace

    from qwen_deploy.modelfiles import fetch_snapshot

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    snap = tmp_path / "hf" / "models--Qwen--Qwen3-4B-Instruct-2507" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"x")
    art = replace(QWEN.artifact("vllm", "bf16"), download_bytes=10**15)  # a petabyte: no disk holds it
    assert fetch_snapshot(art, tmp_path / "hf") == "Qwen/Qwen3-4B-Instruct-2507"
    (snap / "model.safetensors").unlink()
    with pytest.raises(QwenDeployError, match="not enough disk space"):
        fetch_snapshot(art, tmp_path / "hf")


def test_gguf_with_deeply_nested_arrays_is_refused(tmp_path):
    import struct

    from qwen_deploy.gguf_header import GGUFError, read_header

    key = b"evil"
    nested = b""
    for _ in range(50):
        nested = struct.pack("<IQ", 9, 1) + nested  # ARRAY of 1 ARRAY of 1 ...
    nested += struct.pack("<IQ", 4, 0)  # innermost: empty UINT32 array
    body = struct.pack("<Q", len(key)) + key + struct.pack("<I", 9) + nested
    path = tmp_path / "nested.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body + b"\0" * 64)
    with pytest.raises(GGUFError, match="nested deeper"):
        read_header(path)
    code, _, err = run("plan", "--model", str(path))
    assert code == 2 and "not a readable GGUF file" in err


def test_api_key_from_the_environment_in_the_engines_names():
    from qwen_deploy.client import env_api_key

    assert env_api_key({"API_KEY": "a"}) == "a"
    assert env_api_key({"VLLM_API_KEY": "v", "API_KEY": "a"}) == "v"
    assert env_api_key({"QWEN_DEPLOY_API_KEY": "q", "API_KEY": "a"}) == "q"
    assert env_api_key({"API_KEY": ""}) is None


def test_a_server_that_answers_errors_is_not_flooded(tmp_path):
    """Port-closed rounds are 25 ms apart; once the port accepts and the HTTP check fails, 100 ms apart (an
    upper bound on the requests: a slow machine only makes fewer)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from qwen_deploy.client import free_port

    hits = []

    class Unavailable(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            hits.append(self.path)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(launch.EngineFailed, match="did not serve within"):
            launch.wait_url(f"http://127.0.0.1:{port}", None, None, 1.0, launch.Progress(quiet=True))
    finally:
        server.shutdown()
        server.server_close()
    assert 1 <= len(hits) <= 12, len(hits)  # 1 s at 100 ms: ~10 (at 25 ms it would be ~35)
