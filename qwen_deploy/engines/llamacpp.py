"""llama.cpp through llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`).

Every setting that matters is passed explicitly: the server's own defaults differ from the library's and
from what the plan assumes (llama_cpp/server/settings.py, 0.3.36): logits_all True (a full n_ctx × vocab
float array as the conversation grows), use_mlock True, flash_attn False, n_threads cpu_count // 2,
interrupt_requests True (a waiting request ends the one being streamed).
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
    chat_template: bool = True,
) -> dict[str, Any]:
    """Flag -> value, in the order the command passes them.

    chat_format "chat_template.default" is the handler llama-cpp-python builds from the GGUF's own
    tokenizer.chat_template (llama.py, Llama.__init__); left unset, the server may swap the model's template
    for a built-in formatter it guesses from it. A GGUF without a template gets no chat_format (the server
    then falls back to its llama-2 format; the launcher warns).
    """
    args = {
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
        # The server's default (true) ends a streaming answer as soon as another request waits for the
        # model (llama_cpp/server/app.py): a second user would cut the first one's reply short. Queue instead.
        "interrupt_requests": False,
        "n_gpu_layers": 0,
        "verbose": True,
    }
    if chat_template:
        args["chat_format"] = "chat_template.default"
    return args


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


# ----------------------------------------------------------------------------- running it

# llama-cpp-python's server has no /health; /v1/models answers once the model is loaded and uvicorn runs.
READY_PATH = "/v1/models"

# Every field of llama_cpp.server.settings.Settings (0.3.36). They are pydantic BaseSettings with no env
# prefix and case-insensitive names, so an exported MODEL, N_CTX, CHAT_FORMAT, LORA_PATH ... silently
# configures the server; and __main__ lets HOST/PORT/CONFIG_FILE override the command line. The launcher
# removes all of them from the engine's environment (tests check this list against the installed server).
SETTINGS_ENV_NAMES = frozenset(
    {
        "api_key", "cache", "cache_size", "cache_type", "chat_format", "chat_template_kwargs",
        "clip_model_path", "disable_ping_events", "draft_model", "draft_model_num_pred_tokens", "embedding",
        "flash_attn", "hf_model_repo_id", "hf_pretrained_model_name_or_path", "hf_tokenizer_config_path",
        "host", "interrupt_requests", "kv_overrides", "last_n_tokens_size", "logits_all", "lora_base",
        "lora_path", "main_gpu", "model", "model_alias", "mul_mat_q", "n_batch", "n_ctx", "n_gpu_layers",
        "n_threads", "n_threads_batch", "n_ubatch", "numa", "offload_kqv", "port", "root_path",
        "rope_freq_base", "rope_freq_scale", "rope_scaling_type", "rpc_servers", "seed", "split_mode",
        "ssl_certfile", "ssl_keyfile", "tensor_split", "type_k", "type_v", "use_mlock", "use_mmap", "verbose",
        "vocab_only", "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_ext_factor",
        "yarn_orig_ctx", "config_file",
    }
)  # fmt: skip


def environment(base: dict[str, str], api_key: str | None) -> dict[str, str]:
    """The engine's environment: `base` without the server's settings names, plus API_KEY when given
    (read by ServerSettings from the environment, so the key never appears in argv)."""
    env = {k: v for k, v in base.items() if k.lower() not in SETTINGS_ENV_NAMES}
    if api_key:
        env["API_KEY"] = api_key
    return env


# Start-up stages, in order, from the server's own log lines (llama.cpp and uvicorn).
STAGES = (
    (r"llama_model_loader: loaded meta data", "reading the GGUF header"),
    (r"load_tensors:", "loading weights"),
    (r"llama_kv_cache:", "allocating the KV cache"),
    (r"compute buffer size", "reserving compute buffers"),
    (r"Uvicorn running on|Application startup complete", "warming up"),
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
