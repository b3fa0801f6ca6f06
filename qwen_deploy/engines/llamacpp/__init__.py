"""llama.cpp: its memory arithmetic (memory, offload, tensors), candidates on the CPU (plan) and GPUs
(gpu_plan), log lines (logs), and the llama-cpp-python server engine (engine). Its containers run llama.cpp's
own server (engines/llama_server)."""

from qwen_deploy.engines.llamacpp.engine import ENGINE, GGML_TYPE_IDS, KV_TYPES, SETTINGS_ENV_NAMES

__all__ = ["ENGINE", "GGML_TYPE_IDS", "KV_TYPES", "SETTINGS_ENV_NAMES"]
