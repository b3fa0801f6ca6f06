"""The speed model (qwen_deploy/speed.py) on Qwen3-4B's geometry, worked by hand, and the fill-time bound
on `--context auto` (--max-fill-time). The rates here are round numbers given to the model, not the
calibrated ones: what is checked is the arithmetic and the rules; bench/speed_cpu.py holds the calibrated
rates against measured speeds."""

from __future__ import annotations

import pytest

from qwen_deploy import speed
from qwen_deploy.model.profiles import load_profile
from qwen_deploy.planner import Request, plan
from tests.conftest import make_hardware

QWEN = load_profile("qwen3-4b-instruct-2507")
G = 1e9


def rates(matmul=100, attention=50, decode=40, bandwidth=20) -> speed.Rates:
    return speed.Rates(matmul * G, attention * G, decode * G, bandwidth * G)


def test_qwen3_4b_flops_by_hand():
    """Per layer: q 2560×4096 = 10,485,760; k and v 2560×(8×128) each = 5,242,880; o 4096×2560 = 10,485,760;
    gate, up, down 3×2560×9728 = 74,711,040: 100,925,440 × 36 layers = 3,633,315,840 matrix parameters.
    One query-key pair: 2 (multiply-add) × 36 layers × 32 heads × (128 for QKᵀ + 128 for ·V) = 589,824."""
    assert speed.layer_matrix_params(QWEN) == 3_633_315_840
    assert speed._attention_flops_per_pair(QWEN) == 589_824


def test_prefill_time_by_hand():
    """4096 tokens at 100 GFLOP/s matmul, 50 GFLOP/s attention:
    matmul 2 × 3,633,315,840 × 4096 / 1e11 = 297.641 s; attention 589,824 × 4096² / 2 / 5e10 = 98.956 s."""
    r = rates()
    assert speed.prefill_seconds(QWEN, r, 4096) == pytest.approx(297.641 + 98.956, abs=0.01)
    assert speed.prefill_tokens_per_s(QWEN, r, 8192) == pytest.approx(4096 / (297.641 + 98.956), rel=1e-4)
    assert speed.fill_seconds(QWEN, r, 4096) == speed.prefill_seconds(QWEN, r, 4096)
    assert speed.prefill_tokens_per_s(QWEN, None, 4096) is None and speed.fill_seconds(QWEN, r, 0) is None


@pytest.mark.parametrize("seconds", [1.0, 60.0, 600.0, 36_000.0])
def test_longest_fillable_inverts_the_prefill_time(seconds):
    r = rates()
    n = speed.longest_fillable(QWEN, r, seconds)
    assert speed.prefill_seconds(QWEN, r, n) <= seconds < speed.prefill_seconds(QWEN, r, n + 1)


def test_decode_reads_the_weights_then_the_cache_and_attends():
    """Q4_K_M weights 2,497,281,120 B (the profile) at 20 GB/s: 0.124864 s; their mat-vec FLOPs
    2 × (3,633,315,840 + 151,936 × 2560 lm_head) = 8,044,544,000: at 40 GFLOP/s 0.201114 s, slower, so that
    term is 0.201114 s (at 400 GFLOP/s 0.020111 s, and reading, 0.124864 s, is). Then 4096 tokens of f16 KV,
    4096 × 147,456 = 603,979,776 B at 20 GB/s: 0.030199 s; attention 589,824 × 4096 = 2,415,919,104 FLOPs at
    50 GFLOP/s (the attention rate, no decode-attention rate given): 0.048318 s; at 25 GFLOP/s 0.096637 s.
    So 1 / (0.201114 + 0.030199 + 0.048318) = 3.5762 tok/s; 1 / (0.124864 + 0.030199 + 0.048318) = 4.9169;
    1 / (0.124864 + 0.030199 + 0.096637) = 3.9730."""
    art = QWEN.artifact("gguf", "q4_k_m")
    assert art.weights_bytes == 2_497_281_120
    assert speed.decode_tokens_per_s(QWEN, art, "f16", rates(decode=40), 4096) == pytest.approx(3.5762, rel=1e-4)
    assert speed.decode_tokens_per_s(QWEN, art, "f16", rates(decode=400), 4096) == pytest.approx(4.9169, rel=1e-4)
    slow_attention = speed.Rates(100 * G, 50 * G, 400 * G, 20 * G, 25 * G)
    assert speed.decode_tokens_per_s(QWEN, art, "f16", slow_attention, 4096) == pytest.approx(3.9730, rel=1e-4)


def test_auto_context_is_one_a_person_can_fill():
    """--context auto on a 2-core machine: the whole context prefills within --max-fill-time; the memory
    would hold far more, which --context max gives; a longer bound gives a longer context."""
    hw = make_hardware(ram_gib=32, cores=2)
    auto = plan(QWEN, hw).choice
    assert auto.fill_seconds <= 600 < plan(QWEN, hw, Request(context="max")).choice.fill_seconds
    assert "to prefill (--max-fill-time" in auto.reason
    longer = plan(QWEN, hw, Request(max_fill_time=3600)).choice
    assert auto.context < longer.context and longer.fill_seconds <= 3600
    # without a binding bound the context is the memory's
    roomy = plan(QWEN, hw, Request(max_fill_time=1e7)).choice
    assert roomy.context == plan(QWEN, hw, Request(context="max", precision=roomy.precision,
                                                   kv_cache_dtype=roomy.kv_cache_dtype, engine=roomy.engine)).choice.context  # fmt: skip


def test_an_exact_context_is_not_bounded_by_fill_time():
    hw = make_hardware(ram_gib=32, cores=2)
    c = plan(QWEN, hw, Request(context=65536)).choice
    assert c.context == 65536 and c.fill_seconds > 600


def test_every_candidate_carries_speeds_in_json():
    d = plan(QWEN, make_hardware(ram_gib=32, cores=8), Request(concurrency=2)).to_dict()
    for c in d["candidates"]:
        assert {"prefill_tokens_per_s", "decode_tokens_per_s", "fill_seconds", "parallel"} <= set(c)
    served = [c for c in d["candidates"] if c["engine"] == "llama-server"]
    assert served and all(c["parallel"] == 2 for c in served)
    assert d["request"]["max_fill_time"] == 600.0


def test_gpu_candidates_leave_prefill_unmodelled():
    from qwen_deploy.hardware.catalog import simulate

    p = plan(QWEN, simulate(make_hardware(ram_gib=32), gpus=("RTX 4090",)), Request())
    gpu = [c for c in p.candidates if c.device == "gpu"]
    assert gpu and all(c.prefill_tokens_per_s is None and c.fill_seconds is None for c in gpu)
