"""`bench` and `verify` against real servers: one started by `up` on a real small model (SmolLM2-135M from its
PyPI package), and a plain llama-cpp-python server started by hand with its own defaults."""

from __future__ import annotations

import json
import os
import sys

import pytest

from qwen_deploy.bench import _pct, fit_lines
from tests.engine_harness import free_port, running_server
from tests.test_cli import run
from tests.up_harness import QD, TAG_VAR, kill_all, new_tag, tagged_pids

# ----------------------------------------------------------------------------- pure parts


def test_fit_lines_finds_the_longest_that_fits():
    """With 10 tokens per line and a 3-token question, a 95-token budget holds 9 lines (93 tokens)."""

    def count(text: str) -> int:
        return text.count("L") * 10 + text.count("?") * 3

    text, tokens = fit_lines(count, lambda n: "L" * n + "?", 95)
    assert (text, tokens) == ("L" * 9 + "?", 93)
    assert fit_lines(count, lambda n: "L" * n + "?", 2) == ("?", 3)  # nothing fits: the bare question


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 21)]  # 1..20: p50 is the 10th value, p95 the 19th
    assert (_pct(values, 0.5), _pct(values, 0.95)) == (10.0, 19.0)
    assert _pct([], 0.5) is None


@pytest.mark.parametrize(
    "args,message",
    [
        (["bench"], "pass --name NAME"),
        (["bench", "--url", "http://127.0.0.1:1", "--concurrency", "a,b"], "--concurrency takes"),
        (["verify", "--url", "ftp://x"], "--url must look like"),
        (["verify", "--name", "nothing"], "no server named 'nothing'"),
    ],
)
def test_bad_input(args, message):
    code, _, err = run(*args)
    assert code in (1, 2) and message in err and "Traceback" not in err


def test_unreachable_server_is_one_sentence():
    code, _, err = run("verify", "--url", f"http://127.0.0.1:{free_port()}", "--context", "2048")
    assert code == 1 and "does not answer /v1/models" in err


# ----------------------------------------------------------------------------- a server started by up


@pytest.fixture(scope="module")
def smol_up(smollm2, tmp_path_factory):
    """SmolLM2 at a 2,048-token context, started once for the module by `up --detach`."""
    state = tmp_path_factory.mktemp("bench-state")
    tag = new_tag()
    env = dict(os.environ, QWEN_DEPLOY_STATE_DIR=str(state), HF_HUB_OFFLINE="1", **{TAG_VAR: tag})
    qd = QD(env)
    port = free_port()
    started = qd.run(
        "up", "--model-file", str(smollm2), "--context", "2048", "--port", str(port), "--name", "smol", "--detach"
    )
    assert started.returncode == 0, started.stderr
    yield qd, port
    qd.run("down", "--all")
    left = tagged_pids(tag)
    kill_all(left)
    assert not left


def _with_state(qd: QD, monkeypatch) -> None:
    monkeypatch.setenv("QWEN_DEPLOY_STATE_DIR", qd.env["QWEN_DEPLOY_STATE_DIR"])


@pytest.mark.engine
def test_verify_fills_the_planned_context_and_finds_the_needle(smol_up, monkeypatch):
    qd, _ = smol_up
    _with_state(qd, monkeypatch)
    code, out, err = run("verify", "--name", "smol", "--needle", "--json")
    assert code == 0, out + err
    result = json.loads(out)
    assert result["passed"] and result["context"] == 2048  # the plan's context, from the state record
    # within the 2% margin: prompt + the 16 answer tokens reach at least 98% of 2,048 (2,007 tokens)
    assert result["prompt_tokens"] + 16 >= 0.98 * 2048 and result["prompt_tokens"] <= 2048 - 16
    assert result["checks"]["needle_found"] and result["needle"].lower() in result["answer"].lower()


@pytest.mark.engine
def test_verify_fails_beyond_the_served_context(smol_up, monkeypatch):
    qd, _ = smol_up
    _with_state(qd, monkeypatch)
    code, out, err = run("verify", "--name", "smol", "--context", "4096")
    assert code == 5
    assert out.startswith("FAIL:") and "maximum context length is 2048 tokens" in out


@pytest.mark.engine
def test_bench_through_up_shows_the_plan_and_queues_requests(smol_up, monkeypatch):
    qd, _ = smol_up
    _with_state(qd, monkeypatch)
    code, out, err = run(
        "bench", "--name", "smol", "--concurrency", "1,2", "--requests", "4", "--max-tokens", "8", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["plan"]["engine"] == "llamacpp" and result["plan"]["concurrency"] == 1.0
    assert result["prompt_tokens"] <= 128  # counted by the server's tokenizer
    for level in result["levels"]:
        # --interrupt_requests false: a waiting request queues instead of cutting the streamed one short
        assert (level["ok"], level["errors"], level["cut_short"]) == (4, 0, 0), level
        assert 0 < level["ttft_ms"]["p50"] <= level["ttft_ms"]["p95"]
        assert level["output_tokens"] >= 4 and level["output_tokens_per_s"] > 0
    one, two = result["levels"]
    assert two["ttft_ms"]["p95"] > one["ttft_ms"]["p50"]  # queued behind the other request


@pytest.mark.engine
def test_bench_table_output(smol_up, monkeypatch):
    qd, _ = smol_up
    _with_state(qd, monkeypatch)
    code, out, err = run("bench", "--name", "smol", "--concurrency", "1", "--requests", "1", "--max-tokens", "4")
    assert code == 0, err
    assert "TTFT p50 ms" in out and "llama.cpp answers one request at a time" in out


# ----------------------------------------------------------------------------- a server started by hand


@pytest.mark.engine
def test_bench_and_verify_against_a_plain_server(smollm2, tmp_path):
    """llama-cpp-python's server with its own defaults (n_ctx 2048, interrupt_requests true): verify passes
    at its context; at concurrency 2 its default cuts streamed answers short, which bench reports."""
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2), "--port", str(port)]
    with running_server(argv, port, tmp_path / "plain.log"):
        url = f"http://127.0.0.1:{port}"
        code, out, err = run("verify", "--url", url, "--context", "2048", "--json")
        assert code == 0, out + err
        assert json.loads(out)["passed"]
        code, out, err = run(
            "bench", "--url", url, "--concurrency", "1,2", "--requests", "4", "--max-tokens", "16", "--json"
        )
        assert code == 0, err
        one, two = json.loads(out)["levels"]
        assert (one["ok"], one["errors"], one["cut_short"]) == (4, 0, 0)
        assert two["errors"] + two["cut_short"] >= 1, two  # the default interrupt_requests at work
