"""llama.cpp's own server (`llama-server`): parallel slots, llama.cpp's memory (memory.py), CPU candidates
(plan.py), which binary, and whether it takes the plan's flags (versions.py)."""

from qwen_deploy.engines.llama_server.engine import ENGINE, KV_TYPES

__all__ = ["ENGINE", "KV_TYPES"]
