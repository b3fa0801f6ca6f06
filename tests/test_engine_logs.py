"""The engines' log parsers on real log lines (quoted from shared/calibration/public_engine_logs.yaml and
from our llama-cpp-python 0.3.36 runs)."""

from qwen_deploy.engines.llamacpp import logs as llamacpp
from qwen_deploy.engines.vllm import engine as vllm

GiB, MiB = 1024**3, 1024**2

VLLM_V1 = """\
(EngineCore_0 pid=3856547) INFO 10-26 21:47:46 [gpu_model_runner.py:1975] Model loading took 7.6065 GiB and 2.195456 seconds
(EngineCore pid=75) INFO Estimated CUDA graph memory: 1.58 GiB total
(EngineCore_0 pid=3856547) INFO 10-26 21:48:00 [gpu_worker.py:276] Available KV cache memory: 34.72 GiB
qwen3-1  | INFO 04-29 01:09:49 [kv_cache_utils.py:634] GPU KV cache size: 252,800 tokens
qwen3-1  | INFO 04-29 01:09:49 [kv_cache_utils.py:637] Maximum concurrency for 8,192 tokens per request: 24.27x
"""


def test_vllm_v1_startup_lines():
    got = vllm.parse_memory_log(VLLM_V1)
    assert got == {
        "weights_bytes": round(7.6065 * GiB),
        "cuda_graph_bytes": round(1.58 * GiB),
        "available_kv_bytes": round(34.72 * GiB),
        "kv_capacity_tokens": 252_800,
        "context": 8192,
        "concurrency": 24.27,
    }


def test_vllm_negative_available_memory():
    got = vllm.parse_memory_log(
        "INFO Available KV cache memory: -0.23 GiB\nValueError: No available memory for the cache blocks"
    )
    assert got == {"available_kv_bytes": round(-0.23 * GiB)}


LLAMACPP = """\
load_tensors:   CPU_Mapped model buffer size =   235.16 MiB
load_tensors:   CPU_REPACK model buffer size =    12.66 MiB
llama_context: n_ctx                 = 8192
llama_context:        CPU  output buffer size =     1.00 MiB
llama_kv_cache:        CPU KV buffer size =    24.00 MiB
llama_kv_cache: size =   24.00 MiB (  8192 cells,   3 layers,  1/1 seqs), K (f16):   12.00 MiB, V (f16):   12.00 MiB
llama_kv_cache:        CPU KV buffer size =   120.00 MiB
llama_kv_cache: size =  120.00 MiB (  8192 cells,  15 layers,  1/1 seqs), K (f16):   60.00 MiB, V (f16):   60.00 MiB
sched_reserve:        CPU compute buffer size =   514.50 MiB
"""


def test_llamacpp_buffer_lines_with_a_sliding_window_cache():
    got = llamacpp.parse_memory_log(LLAMACPP)
    assert got["model_buffers"] == {"CPU_Mapped": round(235.16 * MiB), "CPU_REPACK": round(12.66 * MiB)}
    assert got["kv_bytes"] == 144 * MiB and got["kv_cells"] == [8192, 8192]
    assert got["compute_buffers"] == {"CPU": round(514.5 * MiB)}
    assert got["output_bytes"] == MiB and got["n_ctx"] == 8192
