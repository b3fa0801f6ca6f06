"""The plan against the real llama-server (b11312, built by scripts/install-llamacpp --server from the llama.cpp
llama-cpp-python vendors): it starts from the planned argv, the memory it reports (its own log lines, at
-lv 4) is the memory the plan predicted (KV exact, buffers within 5%), the plan's total is never below its
peak RSS with every slot busy, several requests stream at once, and its environment cannot reconfigure it."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from qwen_deploy.engines.llama_server.engine import binary_path
from qwen_deploy.engines.llamacpp.logs import parse_memory_log
from qwen_deploy.model.gguf import spec_from_gguf
from qwen_deploy.planner import Request, plan
from tests.conftest import make_hardware
from tests.engine_harness import _post, free_port, peak_rss_bytes, running_server

BINARY = binary_path()
pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(shutil.which(BINARY) is None and not Path(BINARY).is_file(),
                       reason="needs llama-server (scripts/install-llamacpp --server)"),
]  # fmt: skip

MiB = 1024**2


def plan_for(path, ram_gib: float = 16, **request):
    model = spec_from_gguf(path)
    port = free_port()
    hw = make_hardware(ram_gib=ram_gib, cores=2, flags=("avx", "avx2", "fma", "f16c"))
    p = plan(model, hw, Request(port=port, engine="llama-server", **request))
    assert p.choice is not None, p.candidates[0].reason
    return p.choice, port


def tokens_prompt(n: int, seed: int) -> list[int]:
    """n distinct token ids (no tokenizer involved: exactly n tokens, nothing shared between prompts)."""
    return [300 + (seed * 7919 + i * 104729) % 900 for i in range(n)]


@pytest.mark.parametrize(("context", "kv", "slots"), [(4096, "f16", 1), (4096, "q8_0", 4), (5000, "f16", 3)])
def test_synthetic_qwen3_shape_memory_matches_the_server(synthetic_gguf, tmp_path, context, kv, slots):
    """Qwen3-4B's attention geometry: 2 × 36 layers × 8 KV heads × 128 × 2 B = 147,456 B of f16 KV a token.
    Slots are streams of their own: 4 × 4096 f16 cells = 2,304 MiB; 5000 tokens pad to 5,120 a slot."""
    choice, port = plan_for(synthetic_gguf, context=context, kv_cache_dtype=kv, concurrency=slots)
    assert choice.parallel == slots and choice.engine_args["parallel"] == slots
    assert choice.engine_args["ctx-size"] == slots * choice.context
    est = choice.memory
    with running_server(list(choice.command), port, tmp_path / "server.log") as server:
        threads = [threading.Thread(target=_post, args=(f"{server.base}/completion", {
            "prompt": tokens_prompt(600, s), "n_predict": 4, "cache_prompt": False})) for s in range(slots)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = peak_rss_bytes(server.proc.pid)
        reported = parse_memory_log(server.log_text())
    assert reported["kv_cells"] == [est.counts["kv_cells_per_stream"]] == [-(-choice.context // 256) * 256]
    assert reported["kv_bytes"] == est.kv_cache_bytes  # exact
    if kv == "f16":
        assert est.kv_cache_bytes == 147_456 * slots * -(-context // 256) * 256
    compute = reported["compute_buffers"]["CPU"]
    assert abs(compute - est.parts["compute_buffer_bytes"]) <= 0.05 * compute
    assert abs(reported["output_bytes"] - est.parts["output_buffer_bytes"]) <= 0.01 * MiB
    assert abs(sum(reported["model_buffers"].values()) - est.weights_bytes) <= max(
        0.02 * MiB, 0.005 * est.weights_bytes
    )
    assert peak <= est.total_bytes, (peak / MiB, est.total_bytes / MiB)


def test_real_small_model_answers(smollm2, tmp_path):
    choice, port = plan_for(smollm2, context=4096)
    with running_server(list(choice.command), port, tmp_path / "server.log") as server:
        answer = server.chat("What is 2+2? Answer with a number.", max_tokens=12, temperature=0)
    assert "4" in answer["choices"][0]["message"]["content"]


def _stream(base: str, key: str | None, out: list, i: int) -> None:
    body = {"messages": [{"role": "user", "content": f"Count from 1 to 40, request {i}."}], "max_tokens": 48,
            "temperature": 0, "stream": True, "ignore_eos": True}  # fmt: skip
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(), headers)
    times = []
    with urllib.request.urlopen(request, timeout=300) as response:
        for line in response:
            if line.startswith(b"data: {") and b'"content"' in line:
                times.append(time.monotonic())
    out[i] = times


def test_up_concurrency_4_streams_four_at_once(smollm2, tmp_path):
    """`up --concurrency 4` plans llama-server with 4 slots; four streams all receive tokens while the
    others do (llama-cpp-python's server would answer them one after another)."""
    from tests.up_harness import QD, TAG_VAR, kill_all, new_tag, tagged_pids

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env[TAG_VAR] = tag = new_tag()
    qd = QD(env)
    port = free_port()
    try:
        up = qd.run("up", "--model-file", str(smollm2), "--concurrency", "4", "--context", "2048", "--port",
                    str(port), "--detach", "--name", "four")  # fmt: skip
        assert up.returncode == 0, up.stderr
        [server] = qd.status()["servers"]
        assert server["engine"] == "llama-server"
        streams: list = [None] * 4
        threads = [
            threading.Thread(target=_stream, args=(f"http://127.0.0.1:{port}", None, streams, i)) for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(s and len(s) >= 40 for s in streams), [len(s or []) for s in streams]
        # every stream had its first token before any stream had its last: they were served together
        assert max(s[0] for s in streams) < min(s[-1] for s in streams)
    finally:
        assert qd.run("down", "four").returncode == 0
        left = tagged_pids(tag)
        kill_all(left)
        assert not left


def test_environment_cannot_reconfigure_the_server_and_the_key_stays_out_of_argv(small_gguf, tmp_path):
    """llama-server reads every option from LLAMA_ARG_* first, and AIP_MODE=PREDICTION moves its port to
    AIP_HTTP_PORT (server-http.cpp); the launcher's environment drops them and sets LLAMA_API_KEY alone."""
    from qwen_deploy import engines

    choice, port = plan_for(small_gguf, context=2048)
    hostile = {"LLAMA_ARG_CTX_SIZE": "256", "LLAMA_ARG_N_PARALLEL": "7", "AIP_MODE": "PREDICTION",
               "AIP_HTTP_PORT": str(free_port()), "LLAMA_ARG_API_KEY_FILE": "/nonexistent", "OMP_NUM_THREADS": "1"}  # fmt: skip
    env = engines.get("llama-server").environment({**os.environ, **hostile}, "sk-test-key")
    assert not set(hostile) & set(env) and env["LLAMA_API_KEY"] == "sk-test-key"
    log = tmp_path / "server.log"
    import subprocess

    with open(log, "wb") as out:
        proc = subprocess.Popen(list(choice.command), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5)
        assert refused.value.code == 401
        ok = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer sk-test-key"}
        )
        assert json.loads(urllib.request.urlopen(ok, timeout=5).read())["data"][0]["id"] == choice.served_name
        assert "sk-test-key" not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        reported = parse_memory_log(log.read_text())
        assert reported["n_ctx"] == choice.engine_args["ctx-size"]  # not LLAMA_ARG_CTX_SIZE's 256
    finally:
        from tests.engine_harness import stop

        stop(proc)


def test_check_installed_accepts_the_built_binary(small_gguf):
    from qwen_deploy import engines

    choice, _ = plan_for(small_gguf, context=2048)
    engines.get("llama-server").check_installed(choice)  # --help lists every flag the plan passes


def test_the_binary_is_asked_for_its_flags_once_until_it_changes(tmp_path, monkeypatch):
    """`up` checks the flags on every start; running --version and --help cost ~0.1 s each (they load the
    server's libraries), so their output is kept per file (path, inode, size, mtime, ctime, and the libraries
    folder beside it) and read again when it changes. A copy of the built binary is checked: first without
    its libraries (the loader's real failure, exit 127: not kept), then with them (kept), then changed."""
    import subprocess

    from qwen_deploy.engines.llama_server import engine
    from qwen_deploy.errors import QwenDeployError

    monkeypatch.setenv("QWEN_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    kept = tmp_path / "cache" / "llama-server-help.json"
    copy = tmp_path / Path(BINARY).name
    shutil.copy2(BINARY, copy)
    version, _ = engine.binary_texts(str(copy), "hint")
    assert "error while loading shared libraries" in version and not kept.exists()
    (tmp_path / (Path(BINARY).name + ".libs")).symlink_to(Path(BINARY).parent / (Path(BINARY).name + ".libs"))
    version, usage = engine.binary_texts(str(copy), "hint")
    assert "(build 11312, commit 0c1e57098)" in version and "--ctx-size" in usage and "--parallel" in usage
    assert kept.exists()

    def no_run(*args, **kwargs):
        raise OSError("not run again")

    monkeypatch.setattr(subprocess, "Popen", no_run)
    assert engine.binary_texts(str(copy), "hint") == (version, usage)  # kept: the binary was not run
    with copy.open("ab") as f:  # another build in the same place: a different size and mtime
        f.write(b"\0")
    with pytest.raises(QwenDeployError, match="could not be run \\(not run again\\)"):
        engine.binary_texts(str(copy), "hint")


def test_a_corrupt_flag_cache_is_ignored(tmp_path, monkeypatch):
    """A cache file nested 100,000 deep (json raises RecursionError) or cut short is read past: the binary is
    asked again (a review found the RecursionError reached the catch-all)."""
    from qwen_deploy.engines.llama_server import engine

    monkeypatch.setenv("QWEN_DEPLOY_CACHE_DIR", str(tmp_path))
    for junk in ("[" * 100_000, '{"binary": [', "null"):
        (tmp_path / "llama-server-help.json").write_text(junk)
        version, usage = engine.binary_texts(BINARY, "hint")
        assert "build 11312" in version and "--ctx-size" in usage


def test_more_slots_than_memory_allows_is_refused_with_the_arithmetic(synthetic_gguf):
    """8 GiB of RAM (7 GiB budget) and 8 slots of 32,768 tokens: 8 × 32,768 × 147,456 B = 36 GiB of KV."""
    model = spec_from_gguf(synthetic_gguf)
    hw = make_hardware(ram_gib=8, cores=2)
    p = plan(model, hw, Request(engine="llama-server", context=32768, concurrency=8))
    assert p.choice is None
    [c] = [c for c in p.candidates if c.kv_cache_dtype == "f16"]
    assert "8 slots × 32,768 tokens = 262,144 tokens of KV cache" in c.reason
    assert c.reason.endswith("at most 1 slot of 32,768 tokens fits")


def test_a_flag_the_binary_does_not_take_is_named_with_the_build_found():
    """The built binary's own --version and --help: every flag of a plan is listed; `--no-mmap` (which older
    plans passed, and which this build rejects: 'error: invalid argument: --no-mmap') is named, with the build."""
    import subprocess

    from qwen_deploy.engines.llama_server import versions

    version = subprocess.run([BINARY, "--version"], capture_output=True, text=True, timeout=60)
    usage = subprocess.run([BINARY, "--help"], capture_output=True, text=True, timeout=60)
    assert versions.parse_version(version.stderr + version.stdout) == (11312, "0c1e57098")
    rejected = subprocess.run([BINARY, "--no-mmap", "--version"], capture_output=True, text=True, timeout=60)
    assert "invalid argument: --no-mmap" in rejected.stderr + rejected.stdout
    message = versions.too_old_message(BINARY, version.stderr, usage.stdout, ["--ctx-size", "4096", "--no-mmap"])
    assert message == (
        f"{BINARY} is llama-server b11312 (0c1e57098), which does not take --no-mmap that the plan uses; use a "
        "llama-server of b11312 or newer (scripts/install-llamacpp --server builds it)."
    )


@pytest.mark.parametrize(("engine", "kind"), [("llamacpp", "compose"), ("llama-server", "k8s")])
def test_rendered_container_argv_starts_the_built_server_with_the_memory_it_declares(synthetic_gguf, tmp_path, engine,
                                                                                     kind):  # fmt: skip
    """The compose/Kubernetes container runs llama.cpp's server image at this build: its argv, started against
    the binary built here (the model path and port mapped to this machine), serves, and allocates the KV and
    compute buffers of the llama-server memory model the file's memory request was sized from."""
    import yaml

    from qwen_deploy.engines.llama_server.plan import from_llamacpp
    from qwen_deploy.render import RenderOptions, render

    model = spec_from_gguf(synthetic_gguf)
    hw = make_hardware(ram_gib=16, cores=2, flags=("avx", "avx2", "fma", "f16c"))
    p = plan(model, hw, Request(engine=engine, context=4096, kv_cache_dtype="f16"))
    files, _ = render(p, kind, RenderOptions(name="qwen3", model_path=str(synthetic_gguf)))
    docs = list(yaml.safe_load_all(files["compose.yaml" if kind == "compose" else "k8s.yaml"]))
    if kind == "compose":
        args = docs[0]["services"]["qwen3"]["command"]
    else:
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    port = free_port()
    local = [str(synthetic_gguf) if a.endswith(synthetic_gguf.name) else a for a in args]
    local[local.index("--host") + 1], local[local.index("--port") + 1] = "127.0.0.1", str(port)
    sized = from_llamacpp(p.choice, model) if engine == "llamacpp" else p.choice
    with running_server([BINARY, *local], port, tmp_path / "server.log") as server:
        assert server.complete("Hello", max_tokens=1)["choices"]
        reported = parse_memory_log(server.log_text())
    assert reported["kv_bytes"] == sized.memory.kv_cache_bytes == 147_456 * 4096
    compute = reported["compute_buffers"]["CPU"]
    assert abs(compute - sized.memory.parts["compute_buffer_bytes"]) <= 0.05 * compute
