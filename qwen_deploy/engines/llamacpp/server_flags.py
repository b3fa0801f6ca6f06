"""A llama.cpp candidate in llama-server's own flags (tools/server, common/arg.cpp), and the official
llama.cpp server image that runs them in containers.

The image (ghcr.io/ggml-org/llama.cpp:server) is maintained upstream, has a real /health (503 while
loading), curl for health checks, and picks the best CPU variant at run time; a llama-cpp-python image would
have to be built by the user. Its llama.cpp is newer than llama-cpp-python 0.3.36's, so buffers can differ by
a few percent.
"""

from __future__ import annotations

import math

from qwen_deploy.candidates import Candidate
from qwen_deploy.engines.base import MEMORY_LIMIT_FACTOR, Container

IMAGE = "ghcr.io/ggml-org/llama.cpp:server"
CUDA_IMAGE = "ghcr.io/ggml-org/llama.cpp:server-cuda"  # the same server built with CUDA (the image's tag list)
CONTAINER_PORT = 8080  # llama-server's default, and the image's HEALTHCHECK port
UID = 1000  # the image has no USER; any non-root uid runs /app/llama-server
KEY_VAR = "LLAMA_API_KEY"  # common/arg.cpp: --api-key reads LLAMA_API_KEY


def flags(c: Candidate, model_args: list[str], port: int, host: str = "0.0.0.0", parallel: int = 1) -> list[str]:
    """The candidate in llama-server's flags. --parallel 1 unless the plan has slots (llama-server's default
        shares one cache between 4). --load-mode none when the plan turns mmap off (repacked weights held once):
    recent llama-server replaced --no-mmap with it."""
    s = c.settings
    args = [
        *model_args,
        "--alias", c.served_name,
        "--host", host,
        "--port", str(port),
        "--ctx-size", str(c.context),
        "--batch-size", str(s["n_batch"]),
        "--ubatch-size", str(s["n_ubatch"]),
        "--threads", str(s["n_threads"]),
        "--threads-batch", str(s["n_threads_batch"]),
        "--flash-attn", "on" if s["flash_attn"] else "off",
        "--cache-type-k", c.kv_cache_dtype,
        "--cache-type-v", c.kv_cache_dtype,
        "--parallel", str(parallel),
        "--n-gpu-layers", str(s.get("n_gpu_layers", 0)),
        "--jinja",
    ]  # fmt: skip
    if not s.get("use_mmap", True):
        args += ["--load-mode", "none"]
    return args


def container(c: Candidate, model_file: str | None, parallel: int = 1) -> Container:
    """llama-server in the official image: the model from a mounted local file, or downloaded from the
    Hugging Face repo into the mounted cache (llama-server's -hf goes to $LLAMA_CACHE)."""
    if model_file:
        model_args = ["--model", model_file]
        env: dict[str, str] = {}
    else:
        model_args = ["--hf-repo", c.artifact.repo, "--hf-file", str(c.artifact.file)]
        env = {"LLAMA_CACHE": "/models/hub"}
    on_gpu = c.settings.get("n_gpu_layers", 0) > 0
    host = next((d for d in c.memory.devices if d.name == "CPU"), None)
    total = host.total_bytes if host is not None and on_gpu else c.memory.total_bytes  # RAM: the host's share
    return Container(
        image=CUDA_IMAGE if on_gpu else IMAGE,
        args=flags(c, model_args, CONTAINER_PORT, parallel=parallel),
        port=CONTAINER_PORT,
        uid=UID,
        key_var=KEY_VAR,
        gpus=1 if on_gpu else 0,
        env={**env, "HOME": "/tmp"},
        health_path="/health",
        read_only_root=True,
        cpu=str(c.settings["n_threads"]),
        memory_request_bytes=total,
        memory_limit_bytes=math.ceil(total * MEMORY_LIMIT_FACTOR),
        downloads=not model_file,
    )
