"""The plan against the real llama-cpp-python server: it starts from the planned argv, and the memory it
reports (its own log lines) is the memory the plan predicted. KV exact; buffers within 5%."""

from __future__ import annotations

import pytest

from qwen_deploy.engines.llamacpp.logs import parse_memory_log
from qwen_deploy.model.gguf import spec_from_gguf
from qwen_deploy.planner import Request, plan
from tests.conftest import make_hardware
from tests.engine_harness import free_port, running_server

pytest.importorskip("llama_cpp", reason="needs the llamacpp extra (llama-cpp-python[server])")
pytestmark = pytest.mark.engine

MiB = 1024**2


def plan_for(path, **request):
    model = spec_from_gguf(path)
    port = free_port()
    hw = make_hardware(ram_gib=16, cores=2, flags=("avx", "avx2", "fma", "f16c"))
    p = plan(model, hw, Request(port=port, **request))
    assert p.choice is not None, p.candidates[0].reason
    return p.choice, port


def run_and_measure(choice, port, tmp_path):
    with running_server(list(choice.command), port, tmp_path / "server.log") as server:
        out = server.complete("Hello", max_tokens=1)
        assert out["choices"][0]["text"] is not None  # a real completion, not only a listening port
        return parse_memory_log(server.log_text())


def assert_matches(choice, reported, compute_tolerance=0.05):
    est = choice.memory
    assert reported["n_ctx"] == est.counts["n_ctx_padded"] == -(-choice.context // 256) * 256
    assert reported["kv_bytes"] == est.kv_cache_bytes  # exact
    buffers = reported["model_buffers"]
    # without mmap llama.cpp pads each tensor to 32 B; the log prints MiB with two decimals
    assert abs(sum(buffers.values()) - est.weights_bytes) <= max(0.02 * MiB, 0.005 * est.weights_bytes)
    repacked = sum(v for k, v in buffers.items() if k not in ("CPU_Mapped", "CPU"))
    assert abs(repacked - est.parts["repacked_weights_bytes"]) <= max(0.01 * MiB, 0.05 * repacked)
    assert ("CPU_Mapped" in buffers) == choice.engine_args["use_mmap"]
    compute = reported["compute_buffers"]["CPU"]
    assert abs(compute - est.parts["compute_buffer_bytes"]) <= compute_tolerance * compute
    assert abs(reported["output_bytes"] - est.parts["output_buffer_bytes"]) <= 0.01 * MiB


@pytest.mark.parametrize(("context", "kv"), [(4096, "f16"), (5000, "q8_0"), (16384, "q4_0")])
def test_synthetic_qwen3_shape_memory_matches_the_server(synthetic_gguf, tmp_path, context, kv):
    choice, port = plan_for(synthetic_gguf, context=context, kv_cache_dtype=kv)
    assert choice.engine == "llamacpp" and choice.kv_cache_dtype == kv
    reported = run_and_measure(choice, port, tmp_path)
    assert_matches(choice, reported)
    # the Qwen3-4B geometry: 147,456 B of f16 KV per token, padded context (5000 -> 5120)
    if kv == "f16":
        assert reported["kv_bytes"] == 147_456 * 4096


def test_sliding_window_model_memory_matches_the_server(gemma3, tmp_path):
    choice, port = plan_for(gemma3, context=8192, kv_cache_dtype="f16")
    reported = run_and_measure(choice, port, tmp_path)
    assert reported["kv_cells"] == [8192, 8192]  # llama-cpp-python keeps a full-size SWA cache
    assert_matches(choice, reported)
    assert choice.memory.parts["repacked_weights_bytes"] > 0  # Q4_K tensors repacked on AVX2


def test_real_small_model_memory_and_answer(smollm2, tmp_path):
    choice, port = plan_for(smollm2, context=4096)
    with running_server(list(choice.command), port, tmp_path / "server.log") as server:
        answer = server.chat("What is 2+2? Answer with a number.", max_tokens=12, temperature=0)
        reported = parse_memory_log(server.log_text())
    assert "4" in answer["choices"][0]["message"]["content"]
    assert_matches(choice, reported)


def test_a_bpe_vocabulary_with_qwens_merges_stays_within_the_plan(tmp_path):
    """151,387 BPE merges (every Qwen2/Qwen3 GGUF's count) take ~31 MiB in the server; the plan's total must
    stay at or above the peak RSS under a prompt longer than one ubatch (without the tokenizer term it fell
    1 MiB short here, 5 MiB with every dimension of Qwen3-4B: bench/accuracy_llamacpp.py --full-size)."""
    from tests.engine_harness import peak_rss_bytes
    from tests.synthetic_gguf import SyntheticShape, write_synthetic_gguf

    path = write_synthetic_gguf(tmp_path / "bpe.gguf", SyntheticShape(merges=151_387))
    assert spec_from_gguf(path).tokenizer_merges == 151_387
    choice, port = plan_for(path, context=4096, kv_cache_dtype="f16")
    assert choice.memory.parts["tokenizer_merges_bytes"] == 151_387 * 218
    with running_server(list(choice.command), port, tmp_path / "server.log") as server:
        server.complete(server.prompt_of(600), max_tokens=4)
        server.complete("Hello", max_tokens=1)
        peak = peak_rss_bytes(server.proc.pid)
    assert peak <= choice.memory.total_bytes, (peak / MiB, choice.memory.total_bytes / MiB)
