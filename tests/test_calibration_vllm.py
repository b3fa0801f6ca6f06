"""vLLM's available KV memory predicted vs public engine logs (tests/data/calibration_vllm.yaml, a copy of
records from shared/calibration). Target: within 10%. bench/accuracy_vllm.py prints the same table."""

from pathlib import Path

import pytest
import yaml

from bench.accuracy_vllm import geometry_for, predict
from qwen_deploy import memory
from qwen_deploy.engines.vllm import memory as vm
from qwen_deploy.model.profiles import load_profile

GiB = 1024**3
RECORDS = yaml.safe_load((Path(__file__).parent / "data" / "calibration_vllm.yaml").read_text())
WITH_BUDGET = [r for r in RECORDS if r.get("available_kv_gib") is not None and r.get("gpu_memory_utilization")]


@pytest.mark.parametrize("record", WITH_BUDGET, ids=lambda r: r["id"])
def test_available_kv_within_10_percent(record):
    est = predict(record, geometry_for(record))
    predicted = est.parts["available_kv_bytes"] / GiB
    logged = record["available_kv_gib"]
    if logged > 0.5:
        assert abs(predicted - logged) / logged <= 0.10
    else:  # no KV room in the log: the prediction must say so too
        assert predicted <= 0.5
        assert abs(predicted - logged) <= 0.10 * est.budget_bytes / GiB


def test_qwen3_4b_weights_and_kv_tokens_match_v1_logs():
    qwen = load_profile("qwen3-4b-instruct-2507")
    loaded = vm.vllm_loaded_weights(
        qwen.artifact("safetensors", "bf16").weights_bytes, 1, qwen.max_context, qwen.head_dim
    )
    assert abs(loaded / GiB - 7.6065) / 7.6065 < 0.005  # 'Model loading took 7.6065 GiB'
    per_block = vm.VLLM_BLOCK_SIZE * memory.kv_bytes_per_token(36, 8, 128, "auto")
    # 'Available KV cache memory: 34.72 GiB' (rounded) -> 'GPU KV cache size: 252,800 tokens'
    low, high = int(34.715 * GiB) // per_block, int(34.725 * GiB) // per_block
    assert low * 16 <= 252_800 <= high * 16
