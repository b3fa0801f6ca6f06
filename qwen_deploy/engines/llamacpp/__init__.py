"""llama.cpp: its memory arithmetic (memory), candidates on the CPU (plan), log lines (logs), llama-server
flags and image for containers (server_flags), and the llama-cpp-python server engine (engine)."""

from qwen_deploy.engines.llamacpp.engine import ENGINE, GGML_TYPE_IDS, KV_TYPES, SETTINGS_ENV_NAMES

__all__ = ["ENGINE", "GGML_TYPE_IDS", "KV_TYPES", "SETTINGS_ENV_NAMES"]
