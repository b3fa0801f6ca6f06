"""llama.cpp through llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`).

Every setting that matters is passed explicitly: the server's own defaults differ from the library's and
from what the plan assumes (llama_cpp/server/settings.py, 0.3.36): logits_all True (a full n_ctx × vocab
float array as the conversation grows), use_mlock True, flash_attn False, n_threads cpu_count // 2,
interrupt_requests True (a waiting request ends the one being streamed).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from qwen_deploy.candidates import Candidate, Request
from qwen_deploy.engines.base import ArgReader, Container, Engine
from qwen_deploy.engines.llamacpp import logs, plan
from qwen_deploy.engines.llamacpp.memory import LLAMACPP_CTX_PAD
from qwen_deploy.errors import QwenDeployError, UsageError
from qwen_deploy.hardware.types import Hardware
from qwen_deploy.model.types import ModelSpec

# ggml_type ids the server's --type_k/--type_v take (ggml.h enum ggml_type).
GGML_TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
KV_TYPES = ("f16", "q8_0", "q4_0")

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


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp build can put layers on a GPU (CUDA, Metal, ...): its own answer,
    llama_supports_gpu_offload(), asked in a child process so that `up` does not load the library itself."""
    import subprocess

    code = "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 3)"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class LlamaCppPython(Engine):
    name = "llamacpp"
    label = "llama.cpp"
    formats = ("gguf",)
    kv_types = KV_TYPES
    sixteen_bit_kv = "f16"
    context_step = LLAMACPP_CTX_PAD
    # llama-cpp-python's server has no /health; /v1/models answers once the model is loaded and uvicorn runs.
    ready_path = "/v1/models"
    api_key_env = "API_KEY"
    stages = logs.STAGES
    diagnoses = logs.DIAGNOSES
    install_hint = (
        "run scripts/install-llamacpp from the qwen-deploy sources (a portable build), "
        "or pip install 'qwen-deploy[llamacpp]'."
    )
    start_seconds = 30.0

    def candidates(self, model: ModelSpec, hardware: Hardware, request: Request) -> list[Candidate]:
        cpu = plan.cpu_candidates(self.name, self.kv_types, model, hardware, request) if request.gpu_layers in (
            "auto", 0) else []  # fmt: skip
        if not any(g.backend in plan.OFFLOAD_BACKENDS for g in hardware.gpus):
            return cpu  # the offload model is not even imported
        from qwen_deploy.engines.llamacpp.gpu_plan import gpu_candidates

        return cpu + gpu_candidates(self.name, self.kv_types, model, hardware, request)

    # ------------------------------------------------------------------ running

    def engine_args(self, c: Candidate) -> dict[str, Any]:
        """Flag -> value, in the order the command passes them.

        chat_format "chat_template.default" is the handler llama-cpp-python builds from the GGUF's own
        tokenizer.chat_template (llama.py, Llama.__init__); left unset, the server may swap the model's
        template for a built-in formatter it guesses from it. A GGUF without a template gets no chat_format
        (the server then falls back to its llama-2 format; the launcher warns).
        """
        s = c.settings
        kv = GGML_TYPE_IDS[c.kv_cache_dtype]
        args: dict[str, Any] = {
            "model": c.model_ref,
            "model_alias": c.served_name,
            "host": c.host,
            "port": c.port,
            "n_ctx": c.context,
            "n_batch": s["n_batch"],
            "n_ubatch": s["n_ubatch"],
            "n_threads": s["n_threads"],
            "n_threads_batch": s["n_threads_batch"],
            "flash_attn": s["flash_attn"],
            "type_k": kv,
            "type_v": kv,
            "logits_all": False,
            "use_mmap": s["use_mmap"],
            "use_mlock": False,
            # The server's default (true) ends a streaming answer as soon as another request waits for the
            # model (llama_cpp/server/app.py): a second user would cut the first one's reply short. Queue.
            "interrupt_requests": False,
            "n_gpu_layers": s.get("n_gpu_layers", 0),
            "verbose": True,
        }
        if s.get("chat_template", True):
            args["chat_format"] = "chat_template.default"
        return args

    def command(self, c: Candidate, python: str | None = None) -> list[str]:
        """argv for the server: `--flag value` for each engine arg (booleans as true/false)."""
        argv = [python or sys.executable, "-m", "llama_cpp.server"]
        for flag, value in self.engine_args(c).items():
            argv += [f"--{flag}", _flag_value(value)]
        return argv

    def apply_args(self, c: Candidate, args: dict[str, Any], where: str, model: ModelSpec) -> Candidate:
        r = ArgReader(args, where)
        s = c.settings
        model_ref = r.gguf_file("model", c)
        kv_ids = {v: k for k, v in GGML_TYPE_IDS.items() if k in KV_TYPES}
        type_k = r.choice("type_k", c.kv_cache_dtype, kv_ids)
        type_v = r.choice("type_v", c.kv_cache_dtype, kv_ids)
        if type_k != type_v:
            raise UsageError(f"{where}: choice.engine_args.type_k and type_v must be the same cache type.")
        flash = r.flag("flash_attn", s["flash_attn"])
        if type_v != "f16" and not flash:
            raise UsageError(f"{where}: a quantized V cache (type_v) needs flash_attn true in llama.cpp.")
        cores = 4096
        settings = {
            **s,
            "n_batch": r.integer("n_batch", s["n_batch"], 1, 1 << 20),
            "n_ubatch": r.integer("n_ubatch", s["n_ubatch"], 1, 1 << 20),
            "n_threads": r.integer("n_threads", s["n_threads"], 1, cores),
            "n_threads_batch": r.integer("n_threads_batch", s["n_threads_batch"], 1, cores),
            "flash_attn": flash,
            "use_mmap": r.flag("use_mmap", s["use_mmap"]),
            "n_gpu_layers": r.integer("n_gpu_layers", s.get("n_gpu_layers", 0), 0, model.layers + 1),
        }
        if r.choice("chat_format", None, ("chat_template.default",)) is not None:
            settings["chat_template"] = True
        if settings["n_ubatch"] > settings["n_batch"]:
            raise UsageError(f"{where}: choice.engine_args.n_ubatch must not exceed n_batch.")
        for key, fixed in (("logits_all", False), ("use_mlock", False), ("interrupt_requests", False)):
            if r.flag(key, fixed) != fixed:
                raise UsageError(f"{where}: choice.engine_args.{key} must stay {str(fixed).lower()} (see README).")
        r.flag("verbose", True)  # the stage line reads the engine's log
        context = r.integer("n_ctx", c.context, 1, model.max_context)
        alias = r.text("model_alias", c.served_name, 256)
        host = r.text("host", c.host, 253)
        port = r.integer("port", c.port, 1, 65535)
        r.done()
        art = c.artifact if model_ref == c.model_ref else replace(c.artifact, path=str(Path(model_ref).expanduser()))
        return replace(
            c, artifact=art, context=context, kv_cache_dtype=type_k, settings=settings, served_name=alias,
            host=host, port=port,
        )  # fmt: skip

    def environment(self, base: dict[str, str], api_key: str | None) -> dict[str, str]:
        """`base` without the server's settings names, plus API_KEY when given (read by ServerSettings from
        the environment, so the key never appears in argv)."""
        env = {k: v for k, v in base.items() if k.lower() not in SETTINGS_ENV_NAMES}
        if api_key:
            env["API_KEY"] = api_key
        return env

    def check_installed(self, c: Candidate) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise QwenDeployError(
                "the llama.cpp engine (llama-cpp-python's server) is not installed in this environment. "
                f"To fix: {self.install_hint}"
            )
        layers = c.settings.get("n_gpu_layers", 0)
        if layers and not gpu_offload_supported():
            raise QwenDeployError(
                f"this plan puts {c.gpu_layers} layers on the GPU, and the installed llama-cpp-python was built "
                "without GPU support (llama_supports_gpu_offload() is false): they would run on the CPU. To fix: "
                "rebuild it with scripts/install-llamacpp on a machine with the CUDA toolkit (nvcc on PATH; it "
                "builds -DGGML_CUDA=on) or on macOS (Metal), or plan for the CPU with --gpu-layers 0."
            )

    def parse_memory_log(self, text: str) -> dict[str, Any]:
        return logs.parse_memory_log(text)

    def describe_serving(self, context: int, concurrency: float, kv_capacity_tokens: int) -> str:
        return (
            f"llama.cpp answers one request at a time (planned concurrency {concurrency}): "
            "above 1, requests queue and time to first token grows with the queue"
        )

    # ------------------------------------------------------------------ deployment files

    def container(
        self, c: Candidate, model_file: str | None, all_replicas: bool = True, *, model: ModelSpec | None = None
    ) -> Container:
        """llama-cpp-python has no maintained image: the container runs llama.cpp's own server from the same
        build, at the plan's settings, sized by llama-server's own memory model (engines/llama_server) on the
        CPU; GPU plans run the official CUDA server image with the plan's layers."""
        if c.device == "gpu" and any(d.name.startswith("MTL") for d in c.memory.devices):
            raise UsageError(
                "containers on macOS cannot reach the Metal GPU (Docker runs them in a Linux VM): run this plan "
                "with `qwen-deploy up` on the Mac itself, or plan for an NVIDIA GPU with --gpu NAME."
            )
        from qwen_deploy.engines.llama_server.engine import CUDA_IMAGE, container_for
        from qwen_deploy.engines.llama_server.plan import from_llamacpp

        if c.device == "cpu":
            if model is None:
                raise UsageError("a llama.cpp container is sized from the plan's model; render it from a plan.")
            return container_for(from_llamacpp(c, model), model_file)
        # a GPU plan: the CUDA image with the plan's layers; RAM for the host's share of the model
        served = replace(c, engine="llama-server", parallel=1,
                         settings={**c.settings, "parallel": 1, "kv_unified": False, "cache_ram_mib": 0})  # fmt: skip
        host = next((d for d in c.memory.devices if d.name == "CPU"), None)
        return container_for(served, model_file, image=CUDA_IMAGE, gpus=1,
                             memory_bytes=host.total_bytes if host else c.memory.total_bytes)  # fmt: skip

    def unit_settings(self, c: Candidate, user_unit: bool) -> dict[str, Any]:
        if any(d.name.startswith("MTL") for d in c.memory.devices):
            raise UsageError("macOS has no systemd: on a Mac run this plan with `qwen-deploy up --detach`.")
        return super().unit_settings(c, user_unit)


ENGINE = LlamaCppPython()
