"""vLLM's OpenAI-compatible server (`vllm serve`), V1 engine, flags as in vLLM 0.33.0
(entrypoints/common/cli_args.py make_arg_parser; engine/arg_utils.py).

The API key goes through the VLLM_API_KEY environment variable, never argv (argv is visible to every
user in the process list).
"""

from __future__ import annotations

from typing import Any

from qwen_deploy.engines import log_pattern

ENGINE = "vllm"
KV_TYPES = ("auto", "fp8")


def engine_args(
    *,
    model: str,
    served_name: str,
    max_model_len: int,
    gpu_memory_utilization: float,
    kv_cache_dtype: str,
    dtype: str,
    tensor_parallel_size: int,
    data_parallel_size: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    quantization: str | None,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> dict[str, Any]:
    """Flag -> value. The batch limits are pinned to the values the memory model assumed, so the
    engine's activation profile is the one the plan computed."""
    args: dict[str, Any] = {
        "model": model,
        "served-model-name": served_name,
        "host": host,
        "port": port,
        "max-model-len": max_model_len,
        "gpu-memory-utilization": gpu_memory_utilization,
        "kv-cache-dtype": kv_cache_dtype,
        "dtype": dtype,
        "tensor-parallel-size": tensor_parallel_size,
        "max-num-seqs": max_num_seqs,
        "max-num-batched-tokens": max_num_batched_tokens,
    }
    if data_parallel_size > 1:
        args["data-parallel-size"] = data_parallel_size
    if quantization:
        args["quantization"] = quantization
    return args


def command(args: dict[str, Any]) -> list[str]:
    """argv: `vllm serve MODEL --flag value ...`."""
    argv = ["vllm", "serve", str(args["model"])]
    for flag, value in args.items():
        if flag != "model":
            argv += [f"--{flag}", str(value)]
    return argv


# ----------------------------------------------------------------------------- log lines (V1)
MODEL_LOADING_RE = r"Model loading took ([\d.]+) GiB"
AVAILABLE_KV_RE = r"Available KV cache memory: (-?[\d.]+) GiB"
KV_TOKENS_RE = r"GPU KV cache size: ([\d,]+) tokens"
CONCURRENCY_RE = r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x"
CUDAGRAPH_RE = r"Estimated CUDA graph memory: ([\d.]+) GiB"


def parse_memory_log(text: str) -> dict[str, Any]:
    gib = 1024**3
    out: dict[str, Any] = {}
    if m := log_pattern(MODEL_LOADING_RE).search(text):
        out["weights_bytes"] = round(float(m.group(1)) * gib)
    if m := log_pattern(AVAILABLE_KV_RE).search(text):
        out["available_kv_bytes"] = round(float(m.group(1)) * gib)
    if m := log_pattern(KV_TOKENS_RE).search(text):
        out["kv_capacity_tokens"] = int(m.group(1).replace(",", ""))
    if m := log_pattern(CONCURRENCY_RE).search(text):
        out["context"] = int(m.group(1).replace(",", ""))
        out["concurrency"] = float(m.group(2))
    if m := log_pattern(CUDAGRAPH_RE).search(text):
        out["cuda_graph_bytes"] = round(float(m.group(1)) * gib)
    return out
