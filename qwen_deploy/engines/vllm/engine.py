"""vLLM's OpenAI-compatible server (`vllm serve`), V1 engine, flags as in vLLM 0.33.0
(entrypoints/common/cli_args.py make_arg_parser; engine/arg_utils.py).

The API key goes through the VLLM_API_KEY environment variable, never argv (argv is visible to every
user in the process list).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from qwen_deploy.candidates import Candidate, Request
from qwen_deploy.engines import log_pattern
from qwen_deploy.engines.base import ArgReader, Container, Engine
from qwen_deploy.engines.vllm.versions import VLLM_BLOCK_SIZE
from qwen_deploy.errors import UsageError
from qwen_deploy.hardware.types import Hardware
from qwen_deploy.model.types import ModelSpec
from qwen_deploy.units import GiB

KV_TYPES = ("auto", "fp8")
IMAGE = "vllm/vllm-openai:v0.33.0"  # the release the memory rules come from; its entrypoint is `vllm serve`
CONTAINER_PORT = 8000
UID = 2000  # the image's `vllm` user (docs/deployment/docker.md, non-root use)
HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
QUANTIZATIONS = ("fp8", "awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors", "bitsandbytes")

# ----------------------------------------------------------------------------- log lines (V1)
MODEL_LOADING_RE = r"Model loading took ([\d.]+) GiB"
AVAILABLE_KV_RE = r"Available KV cache memory: (-?[\d.]+) GiB"
KV_TOKENS_RE = r"GPU KV cache size: ([\d,]+) tokens"
CONCURRENCY_RE = r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x"
CUDAGRAPH_RE = r"Estimated CUDA graph memory: ([\d.]+) GiB"


def parse_memory_log(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m := log_pattern(MODEL_LOADING_RE).search(text):
        out["weights_bytes"] = round(float(m.group(1)) * GiB)
    if m := log_pattern(AVAILABLE_KV_RE).search(text):
        out["available_kv_bytes"] = round(float(m.group(1)) * GiB)
    if m := log_pattern(KV_TOKENS_RE).search(text):
        out["kv_capacity_tokens"] = int(m.group(1).replace(",", ""))
    if m := log_pattern(CONCURRENCY_RE).search(text):
        out["context"] = int(m.group(1).replace(",", ""))
        out["concurrency"] = float(m.group(2))
    if m := log_pattern(CUDAGRAPH_RE).search(text):
        out["cuda_graph_bytes"] = round(float(m.group(1)) * GiB)
    return out


class Vllm(Engine):
    name = "vllm"
    label = "vLLM"
    formats = ("safetensors",)
    kv_types = KV_TYPES
    sixteen_bit_kv = "auto"
    context_step = VLLM_BLOCK_SIZE
    # While loading, the port refuses connections; /health answers 200 once the engine is up (503 if it died).
    ready_path = "/health"
    api_key_env = "VLLM_API_KEY"
    install_hint = (
        "pip install 'qwen-deploy[vllm]' on a machine with an NVIDIA GPU, or plan for the CPU with --engine llamacpp."
    )
    start_seconds = 300.0  # vLLM profiles memory and captures CUDA graphs: a few minutes at most
    package = "vllm"
    version_flag = "vllm-version"
    # Start-up stages from vLLM's V1 log lines (v1/worker/gpu_model_runner.py, gpu_worker.py, api_server.py).
    stages = (
        (r"Starting to load model|Loading weights|Loading safetensors", "loading weights"),
        (r"Model loading took", "profiling memory"),
        (r"Available KV cache memory|GPU KV cache size", "allocating the KV cache"),
        (r"Capturing CUDA graph|Graph capturing|torch.compile", "capturing CUDA graphs"),
        (r"Starting vLLM API server|Application startup complete", "warming up"),
    )
    diagnoses = (
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

    def candidates(self, model: ModelSpec, hardware: Hardware, request: Request) -> list[Candidate]:
        if not any(g.backend == "cuda" for g in hardware.gpus):
            return []  # its memory rules are not even imported
        from qwen_deploy.engines.vllm import plan

        return plan.candidates(self.name, self.kv_types, model, hardware, request)

    def no_candidates(self, model: ModelSpec, hardware: Hardware) -> str | None:
        if not any(g.backend == "cuda" for g in hardware.gpus):
            return (
                "Nothing fits: vLLM needs an NVIDIA GPU and none was found. "
                "To fix: drop --engine vllm, or describe a GPU with --gpu NAME."
            )
        return None

    # ------------------------------------------------------------------ running

    def engine_args(self, c: Candidate) -> dict[str, Any]:
        s = c.settings
        args: dict[str, Any] = {
            "model": c.model_ref,
            "served-model-name": c.served_name,
            "host": c.host,
            "port": c.port,
            "max-model-len": c.context,
            "gpu-memory-utilization": s["gpu_memory_utilization"],
            "kv-cache-dtype": c.kv_cache_dtype,
            "dtype": s["dtype"],
            "tensor-parallel-size": c.tensor_parallel_size,
            "max-num-seqs": s["max_num_seqs"],
            "max-num-batched-tokens": s["max_num_batched_tokens"],
        }
        if c.replicas > 1:
            args["data-parallel-size"] = c.replicas
        if s.get("quantization"):
            args["quantization"] = s["quantization"]
        return args

    def command(self, c: Candidate, python: str | None = None) -> list[str]:
        """argv: `vllm serve MODEL --flag value ...` (the `vllm` script beside `python` when given)."""
        args = self.engine_args(c)
        vllm = str(Path(python).parent / "vllm") if python else "vllm"
        argv = [vllm, "serve", str(args.pop("model"))]
        for flag, value in args.items():
            argv += [f"--{flag}", str(value)]
        return argv

    def apply_args(self, c: Candidate, args: dict[str, Any], where: str, model: ModelSpec) -> Candidate:
        r = ArgReader(args, where)
        s = c.settings
        model_ref = r.text("model", c.model_ref)
        if model_ref != c.model_ref and not HF_REPO_RE.match(model_ref) and not Path(model_ref).expanduser().is_dir():
            raise UsageError(f"{where}: choice.engine_args.model must be a Hugging Face repo id or a model folder.")
        settings = {
            **s,
            "gpu_memory_utilization": r.number("gpu-memory-utilization", s["gpu_memory_utilization"], 0, 1, True),
            "dtype": r.choice("dtype", s["dtype"], ("bfloat16", "float16", "auto", "half")),
            "max_num_seqs": r.integer("max-num-seqs", s["max_num_seqs"], 1, 1 << 20),
            "max_num_batched_tokens": r.integer("max-num-batched-tokens", s["max_num_batched_tokens"], 1, 1 << 24),
            "quantization": r.choice("quantization", s.get("quantization"), QUANTIZATIONS),
        }
        tp = r.integer("tensor-parallel-size", c.tensor_parallel_size, 1, 64)
        replicas = r.integer("data-parallel-size", c.replicas, 1, 64)
        context = r.integer("max-model-len", c.context, 1, model.max_context)
        kv = r.choice("kv-cache-dtype", c.kv_cache_dtype, self.kv_types)
        name = r.text("served-model-name", c.served_name, 256)
        host = r.text("host", c.host, 253)
        port = r.integer("port", c.port, 1, 65535)
        r.done()
        art = c.artifact if model_ref == c.model_ref else replace(c.artifact, path=model_ref, repo=model_ref)
        return replace(
            c, artifact=art, context=context, kv_cache_dtype=kv, tensor_parallel_size=tp, replicas=replicas,
            settings=settings, served_name=name, host=host, port=port,
        )  # fmt: skip

    def parse_memory_log(self, text: str) -> dict[str, Any]:
        return parse_memory_log(text)

    # ------------------------------------------------------------------ deployment files

    def host_memory_gib(self, c: Candidate) -> int:
        """Host RAM a vLLM pod asks for: its share of the checkpoint (read through the page cache while
        loading) plus 2 GiB for the Python process and CUDA's pinned buffers. An estimate: vLLM's host memory
        is not modelled by the planner."""
        return max(4, math.ceil(c.artifact.weights_bytes / c.tensor_parallel_size / GiB) + 2)

    def container(
        self, c: Candidate, model_file: str | None, all_replicas: bool = True, *, model: ModelSpec | None = None
    ) -> Container:
        """`vllm serve` flags after the image's entrypoint, bound to 0.0.0.0:8000 inside the container. With
        all_replicas False (Kubernetes) data parallelism becomes pod replicas instead of --data-parallel-size."""
        args = [model_file or str(c.artifact.repo)]
        for flag, value in self.engine_args(c).items():
            if flag in ("model", "host", "port") or (not all_replicas and flag == "data-parallel-size"):
                continue
            args += [f"--{flag}", str(value)]
        gib = self.host_memory_gib(c)
        return Container(
            image=IMAGE,
            args=[*args, "--host", "0.0.0.0", "--port", str(CONTAINER_PORT)],
            port=CONTAINER_PORT,
            uid=UID,
            key_var=self.api_key_env,
            gpus=c.tensor_parallel_size * (c.replicas if all_replicas else 1),
            env={"HF_HOME": "/models/hf", "VLLM_CACHE_ROOT": "/models/vllm", "HOME": "/tmp"},
            read_only_root=False,  # vLLM writes torch.compile and Triton caches beside its code
            cpu="4",
            memory_request_bytes=gib * GiB,
            memory_limit_bytes=2 * gib * GiB,
            host_memory_gib=gib,
            shm=True,
            downloads=not model_file,
        )

    def unit_settings(self, c: Candidate, user_unit: bool) -> dict[str, Any]:
        # vLLM writes the HF cache (downloads) and its own compile cache: CacheDirectory= (system units), or
        # the user's own HF cache (user units)
        env = {} if user_unit else {"HF_HOME": "%C/qwen-deploy/huggingface"}
        return {
            "cache_env": {**env, "VLLM_CACHE_ROOT": "%C/qwen-deploy/vllm"},
            "writes_hf_cache": True,
            "downloads": not c.artifact.path,
            "memory_max": False,
        }

    helm_template = Path(__file__).with_name("helm-values.yaml.j2")  # the production-stack chart's values

    def helm_values(self, c: Candidate) -> dict[str, Any]:
        s = c.settings
        extra = ["--served-model-name", c.served_name, "--kv-cache-dtype", c.kv_cache_dtype]
        extra += ["--max-num-batched-tokens", str(s["max_num_batched_tokens"])]
        if s.get("quantization"):
            extra += ["--quantization", str(s["quantization"])]
        return {
            "repository": IMAGE.split(":")[0],
            "tag": IMAGE.split(":")[1],
            "model_url": c.artifact.repo,
            "request_cpu": 4,
            "request_memory": f"{self.host_memory_gib(c)}Gi",
            "request_gpu": c.tensor_parallel_size,
            "max_model_len": c.context,
            "dtype": s["dtype"],
            "tp": c.tensor_parallel_size,
            "gpu_util": s["gpu_memory_utilization"],
            "max_num_seqs": s["max_num_seqs"],
            "extra_args": extra,
        }

    def check_artifact(self, c: Candidate) -> None:
        if not c.artifact.path and not HF_REPO_RE.match(c.artifact.repo):
            raise UsageError(f"model repo {c.artifact.repo!r} is not a Hugging Face repo id (ORG/NAME).")


ENGINE = Vllm()
