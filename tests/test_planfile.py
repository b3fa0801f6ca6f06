"""Plan files (`plan -o`, read by `up` and `render`): the file's engine_args are what runs, read back by the
engine that wrote them and checked as strictly as the command line; and `up --dry-run`."""

from __future__ import annotations

import json

import pytest

from qwen_deploy import state
from tests.test_cli import run


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
        (lambda d: d["choice"]["engine_args"].update(model_alias="a\nb"), "contains a line break"),
        (lambda d: d["choice"]["engine_args"].update(n_ctx="lots"), "n_ctx must be a whole number, not 'lots'"),
        (lambda d: d["choice"]["engine_args"].update(n_ctx=True), "n_ctx must be a whole number, not True"),
        (lambda d: d["choice"]["engine_args"].update(n_ctx=0), "n_ctx must be from 1 to 8,192"),
        (lambda d: d["choice"]["engine_args"].update(n_ctx=10**6), "n_ctx must be from 1 to 8,192"),
        (lambda d: d["choice"]["engine_args"].update(n_threads=-1), "n_threads must be from 1"),
        (lambda d: d["choice"]["engine_args"].update(type_k=99), "type_k must be one of 1, 2, 8"),
        (lambda d: d["choice"]["engine_args"].update(type_k=8), "type_k and type_v must be the same"),
        (lambda d: d["choice"]["engine_args"].update(type_k=8, type_v=8, flash_attn=False), "needs flash_attn"),
        (lambda d: d["choice"]["engine_args"].update(n_ubatch=1024), "n_ubatch must not exceed n_batch"),
        (lambda d: d["choice"]["engine_args"].update(use_mmap="yes"), "use_mmap must be true or false"),
        (lambda d: d["choice"]["engine_args"].update(logits_all=True), "logits_all must stay false"),
        (lambda d: d["choice"]["engine_args"].update(model="/nonexistent/x.gguf"), "does not exist"),
        (lambda d: d["choice"]["engine_args"].update(model="/dev/zero"), "not a regular file"),
        (lambda d: d["choice"]["engine_args"].update(model_alias="--port=1"), "must not start with '-'"),
        (lambda d: d["choice"]["engine_args"].update(port="abc"), "port must be a whole number, not 'abc'"),
        (lambda d: d["choice"]["engine_args"].update(port=0), "port must be from 1 to 65,535"),
        (lambda d: d["choice"].update(engine_args=[1, 2]), "engine_args must be a mapping"),
        (lambda d: d["request"].update(host=5), "request.host must be text, not 5"),
        (lambda d: d["request"].update(concurrency=float("nan")), "request.concurrency must be a number"),
        (lambda d: d["request"].update(context="lots"), "request.context must be a number of tokens"),
        (lambda d: d["hardware"]["cpu"].update(memory_bandwidth_gbps=float("nan")), "memory_bandwidth_gbps"),
        (lambda d: d["hardware"]["memory"].update(total_bytes=10**400), "total_bytes' must be from"),
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


def test_port_auto_picks_a_free_port(small_gguf):
    code, out, _ = run("up", "--model-file", str(small_gguf), "--port", "auto", "--dry-run", "--json")
    argv = json.loads(out)["command"]
    port = int(argv[argv.index("--port") + 1])
    assert code == 0 and 1024 < port < 65536
