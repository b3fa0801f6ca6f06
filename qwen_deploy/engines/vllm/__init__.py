"""vLLM: its KV budget arithmetic (memory), candidates on NVIDIA GPUs (plan), and the engine (engine)."""

from qwen_deploy.engines.vllm.engine import ENGINE, KV_TYPES

__all__ = ["ENGINE", "KV_TYPES"]
