"""llama.cpp through llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`).

Every setting that matters is passed explicitly: the server's own defaults differ from the library's and
from what the plan assumes (llama_cpp/server/settings.py, 0.3.36): logits_all True (a full n_ctx × vocab
float array as the conversation grows), use_mlock True, flash_attn False, n_threads cpu_count // 2.
"""

from __future__ import annotations

import sys
from typing import Any

from qwen_deploy.engines import log_pattern

ENGINE = "llamacpp"

# ggml_type ids the server's --type_k/--type_v take (ggml.h enum ggml_type).
GGML_TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
KV_TYPES = ("f16", "q8_0", "q4_0")

DEFAULT_N_BATCH = 512
DEFAULT_N_UBATCH = 512


def engine_args(
    *,
    model_path: str,
    alias: str,
    n_ctx: int,
    type_k: str,
    type_v: str,
    threads: int,
    threads_batch: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    n_batch: int = DEFAULT_N_BATCH,
    n_ubatch: int = DEFAULT_N_UBATCH,
    flash_attn: bool = True,
    use_mmap: bool = True,
) -> dict[str, Any]:
    """Flag -> value, in the order the command passes them."""
    return {
        "model": model_path,
        "model_alias": alias,
        "host": host,
        "port": port,
        "n_ctx": n_ctx,
        "n_batch": n_batch,
        "n_ubatch": n_ubatch,
        "n_threads": threads,
        "n_threads_batch": threads_batch,
        "flash_attn": flash_attn,
        "type_k": GGML_TYPE_IDS[type_k],
        "type_v": GGML_TYPE_IDS[type_v],
        "logits_all": False,
        "use_mmap": use_mmap,
        "use_mlock": False,
        "n_gpu_layers": 0,
        "verbose": True,
    }


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def command(args: dict[str, Any], python: str | None = None) -> list[str]:
    """argv for the server: `--flag value` for each engine arg (booleans as true/false)."""
    argv = [python or sys.executable, "-m", "llama_cpp.server"]
    for flag, value in args.items():
        argv += [f"--{flag}", _flag_value(value)]
    return argv


# ----------------------------------------------------------------------------- log lines
# Format strings from llama.cpp (vendored in llama-cpp-python 0.3.36): llama-model.cpp load_tensors,
# llama-kv-cache.cpp, llama-context.cpp. The prefix is the C function name; names are right-aligned.

MODEL_BUFFER_RE = r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB"
KV_SIZE_RE = r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers"
COMPUTE_BUFFER_RE = (
    r"(?:sched_reserve|llama_context|llama_new_context_with_model):\s+(\S+) compute buffer size =\s+([\d.]+) MiB"
)
OUTPUT_BUFFER_RE = r"llama_context:\s+(\S+)\s+output buffer size =\s+([\d.]+) MiB"
N_CTX_RE = r"llama_context: n_ctx\s+=\s+(\d+)"


def parse_memory_log(text: str) -> dict[str, Any]:
    """The memory llama.cpp reports in its log, in bytes: model buffers by name, KV, compute, output."""
    mib = 1024 * 1024
    out: dict[str, Any] = {"model_buffers": {}, "compute_buffers": {}}
    for name, size in log_pattern(MODEL_BUFFER_RE).findall(text):
        out["model_buffers"][name] = round(float(size) * mib)
    kv = log_pattern(KV_SIZE_RE).findall(text)
    if kv:
        out["kv_bytes"] = sum(round(float(size) * mib) for size, _, _ in kv)
        out["kv_cells"] = [int(cells) for _, cells, _ in kv]
    for name, size in log_pattern(COMPUTE_BUFFER_RE).findall(text):
        out["compute_buffers"][name] = round(float(size) * mib)
    outputs = log_pattern(OUTPUT_BUFFER_RE).findall(text)
    if outputs:
        out["output_bytes"] = round(float(outputs[-1][1]) * mib)
    ctx = log_pattern(N_CTX_RE).findall(text)
    if ctx:
        out["n_ctx"] = int(ctx[-1])
    return out
