"""llama.cpp's own log lines (the same in every engine built on it): the memory it reports, the stages it
goes through while starting, and what a failed start's log says went wrong.

Format strings from llama.cpp (vendored in llama-cpp-python 0.3.36): llama-model.cpp load_tensors,
llama-kv-cache.cpp, llama-context.cpp. The prefix is the C function name; names are right-aligned.
"""

from __future__ import annotations

from typing import Any

from qwen_deploy.engines import log_pattern

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


# Start-up stages, in order, from the server's own log lines (llama.cpp and uvicorn).
STAGES = (
    (r"llama_model_loader: loaded meta data", "reading the GGUF header"),
    (r"load_tensors:", "loading weights"),
    (r"llama_kv_cache:", "allocating the KV cache"),
    (r"compute buffer size", "reserving compute buffers"),
    (r"Uvicorn running on|Application startup complete|server is listening on|all slots are idle", "warming up"),
)

# (pattern, diagnosis) for a server that exited or never answered; the first match wins.
DIAGNOSES = (
    (
        r"insufficient memory|failed to allocate|Cannot allocate memory|std::bad_alloc|MemoryError|"
        r"failed to create llama_context|Failed to create llama_context|Out of memory",
        "oom",
    ),
    (r"address already in use|Errno 98", "port"),
    (r"Model path does not exist|No such file or directory", "missing_file"),
    (
        r"invalid magic|failed to load model|gguf_init_from_file|Failed to load model|tensor data is not within",
        "corrupt",
    ),
    (r"No module named 'llama_cpp|No module named llama_cpp", "not_installed"),
    (r"Illegal instruction|SIGILL", "cpu_unsupported"),
)
