"""A third engine, defined in tests/plugins/standin_engine.py and nowhere in qwen_deploy, plans, renders and
is launched and stopped through the same paths as the built-in ones: the proof that the Engine interface
holds. It is loaded as any plugin is, by QWEN_DEPLOY_ENGINE_MODULES, in real `qwen-deploy` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.engine_harness import free_port
from tests.up_harness import QD, TAG_VAR, kill_all, new_tag, pid_alive, port_listening, tagged_pids

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MiB = 1024**2


@pytest.fixture
def qd():
    tag = new_tag()
    env = dict(os.environ, PYTHONUNBUFFERED="1", QWEN_DEPLOY_ENGINE_MODULES="tests.plugins.standin_engine")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env[TAG_VAR] = tag
    yield QD(env)
    left = tagged_pids(tag)
    kill_all(left)
    assert not left, f"processes left behind: {left}"


def _plan(qd: QD, small_gguf: Path, *extra: str) -> dict:
    done = qd.run("plan", "--model", str(small_gguf), "--ram", "16GiB", "--cpus", "4", "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_plugin_plans_with_its_own_memory(qd, small_gguf):
    plan = _plan(qd, small_gguf, "--engine", "standin")
    choice = plan["choice"]
    assert choice["engine"] == "standin" and choice["command"][1].endswith("standin_server.py")
    # The tiny GGUF: 2 layers × 2 KV heads × 64 dims, f16: 2 (K and V) × 2 × 2 × 64 × 2 bytes = 1,024 bytes a
    # token; it reaches its whole 8,192-token context: 8 MiB of KV, plus the stand-in's 64 MiB.
    memory = choice["memory"]
    assert memory["kv_bytes_per_token"] == 1024 and choice["context"] == 8192
    assert memory["total_bytes"] == memory["weights_bytes"] + 8 * MiB + 64 * MiB
    # ranked beside the built-in engine when no engine is named
    engines = {c["engine"] for c in _plan(qd, small_gguf)["candidates"]}
    assert {"standin", "llamacpp"} <= engines


def test_the_plugin_renders_files_that_pass_the_validators(qd, small_gguf, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(_plan(qd, small_gguf, "--engine", "standin")))
    out = tmp_path / "out"
    done = qd.run("render", "all", str(plan_file), "--output", str(out))
    assert done.returncode == 0, done.stderr
    compose = out / "compose.yaml"
    check = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(compose)]
    result = subprocess.run(check, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    service = yaml.safe_load(compose.read_text())["services"]["tiny-qwen3"]
    assert service["image"] == "registry.example.org/standin:1"  # the engine's own container, its own args
    assert service["command"][:2] == ["--model", "/model/tiny-qwen3.gguf"]
    assert service["ports"] == ["127.0.0.1:8000:8080"]
    k8s = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(out / "k8s.yaml")], capture_output=True,
                         text=True)  # fmt: skip
    assert k8s.returncode == 0 and "passed" in k8s.stdout, k8s.stdout + k8s.stderr


def test_the_plugin_is_launched_and_stopped_through_up_status_and_down(qd, small_gguf, tmp_path):
    key = "sk-standin-" + new_tag()
    (tmp_path / "key").write_text(key)
    port = free_port()
    up = qd.run("up", "--model", str(small_gguf), "--engine", "standin", "--port", str(port), "--detach",
                "--name", "third", "--api-key-file", str(tmp_path / "key"))  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert f"third ready at http://127.0.0.1:{port}/v1" in up.stdout
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=b'{"messages": []}',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["choices"][0]["message"]["content"] == "stand-in"
    [server] = qd.status()["servers"]
    assert (server["engine"], server["state"], server["answering"]) == ("standin", "ready", True)
    record = qd.record("third")
    assert key not in Path(f"/proc/{record['pid']}/cmdline").read_text()  # the key went in STANDIN_API_KEY
    assert "standin: serving" in Path(record["log"]).read_text()
    down = qd.run("down", "third")
    assert down.returncode == 0, down.stderr
    assert not pid_alive(record["pid"]) and not port_listening(port)
    assert qd.status()["servers"] == []


def test_a_plugin_that_cannot_be_loaded_is_a_sentence(qd, small_gguf):
    qd.env["QWEN_DEPLOY_ENGINE_MODULES"] = "tests.plugins.nothing_here"
    done = qd.run("plan", "--model", str(small_gguf))
    assert done.returncode == 2
    assert "QWEN_DEPLOY_ENGINE_MODULES names 'tests.plugins.nothing_here', which cannot be imported" in done.stderr
    assert "Traceback" not in done.stderr
