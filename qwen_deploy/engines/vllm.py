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


# ----------------------------------------------------------------------------- running it

# While loading, the port refuses connections; /health answers 200 once the engine is up (503 if it died).
READY_PATH = "/health"


def environment(base: dict[str, str], api_key: str | None) -> dict[str, str]:
    """The engine's environment: VLLM_API_KEY carries the key (argv is visible in the process list)."""
    env = {k: v for k, v in base.items() if k != "VLLM_API_KEY"}
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return env


# Start-up stages from vLLM's V1 log lines (vllm/v1/worker/gpu_model_runner.py, gpu_worker.py, api_server.py).
STAGES = (
    (r"Starting to load model|Loading weights|Loading safetensors", "loading weights"),
    (r"Model loading took", "profiling memory"),
    (r"Available KV cache memory|GPU KV cache size", "allocating the KV cache"),
    (r"Capturing CUDA graph|Graph capturing|torch.compile", "capturing CUDA graphs"),
    (r"Starting vLLM API server|Application startup complete", "warming up"),
)

DIAGNOSES = (
    (
        r"CUDA out of memory|OutOfMemoryError|No available memory for the cache blocks|"
        r"larger than the available KV cache memory|larger than the maximum number of tokens that can be stored",
        "oom",
    ),
    (r"address already in use|Errno 98", "port"),
    (r"Free memory on device .* is less than desired GPU memory utilization", "gpu_busy"),
    (
        r"no kernel image is available|is not compatible with the current PyTorch installation|"
        r"Bfloat16 is only supported on GPUs with compute capability|not supported on this GPU|"
        r"compute capability .* is not supported",
        "gpu_unsupported",
    ),
    (r"Repository Not Found|does not appear to have a file named|No such file or directory", "missing_file"),
    (r"Failed to infer device type|No CUDA GPUs are available|Found no NVIDIA driver", "no_gpu"),
)
