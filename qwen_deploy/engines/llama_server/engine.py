"""llama.cpp's own OpenAI-compatible server, `llama-server` (tools/server at build b11312, commit 0c1e57098:
the llama.cpp that llama-cpp-python 0.3.36 vendors, so one memory model serves both engines).

Continuous batching over `--parallel N` slots, `/health` (503 until the model is loaded), `/metrics`, `/slots`.
Every setting the plan relies on is passed: llama-server reads each option from an LLAMA_ARG_* variable
before the command line, and its defaults differ from the plan (`--parallel` omitted = 4 slots sharing one
cache, `--fit on` shrinks the context, `--cache-ram 8192` keeps 8 GiB of old prompts, `--batch-size 2048`).
The buffer sizes are logged only at verbosity 4 (`-lv 4`), which the stage line and the OOM diagnosis read.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from qwen_deploy.candidates import Candidate, Request
from qwen_deploy.engines.base import MEMORY_LIMIT_FACTOR, ArgReader, Container, Engine
from qwen_deploy.engines.llama_server import plan, versions
from qwen_deploy.engines.llamacpp import logs
from qwen_deploy.engines.llamacpp.memory import LLAMACPP_CTX_PAD
from qwen_deploy.errors import QwenDeployError, UsageError
from qwen_deploy.hardware.types import Hardware
from qwen_deploy.model.types import ModelSpec

KV_TYPES = ("f16", "q8_0", "q4_0")
BINARY = f"llama-server-b{versions.LLAMA_SERVER_BUILD}"  # what scripts/install-llamacpp --server caches
# The official images at the same build (the project's tag list: server-bN, server-cuda-bN): the rendered
# files run what `up` runs.
IMAGE = f"ghcr.io/ggml-org/llama.cpp:server-b{versions.LLAMA_SERVER_BUILD}"
CUDA_IMAGE = f"ghcr.io/ggml-org/llama.cpp:server-cuda-b{versions.LLAMA_SERVER_BUILD}"
CONTAINER_PORT = 8080  # llama-server's default port and the image's HEALTHCHECK
UID = 1000  # the image has no USER; any non-root uid runs /app/llama-server
# Variables llama-server (or its OpenMP runtime) reads: LLAMA_ARG_* for every option, LLAMA_API_KEY,
# AIP_MODE/AIP_HTTP_PORT (Vertex AI mode: replaces the port), GGML_* debug switches, OMP_*/GOMP_*/KMP_*,
# MTMD_*, HF_TOKEN. Removed from the engine's environment; the key is set again when the plan has one.
SCRUBBED_PREFIXES = ("LLAMA_", "AIP_", "GGML_", "OMP_", "GOMP_", "KMP_", "MTMD_")
SCRUBBED_NAMES = frozenset({"HF_TOKEN"})
STAGES = (
    (r"load_model: loading model|llama_model_loader: loaded meta data", "reading the GGUF header"),
    (r"load_tensors:", "loading weights"),
    (r"llama_kv_cache:", "allocating the KV cache"),
    (r"compute buffer size", "reserving compute buffers"),
    (r"llama_server: model loaded|listening on http", "warming up"),
)
DIAGNOSES = (
    (r"invalid argument: |unknown argument: |error while handling argument", "engine_flags"),
    *logs.DIAGNOSES,
)


def binary_path() -> str:
    """The llama-server a plan runs: $QWEN_DEPLOY_LLAMA_SERVER, else the one scripts/install-llamacpp
    --server built (~/.cache/qwen-deploy/bin), else `llama-server` on PATH (Homebrew, a distribution, a
    release archive)."""
    given = os.environ.get("QWEN_DEPLOY_LLAMA_SERVER")
    if given:
        return given
    cache = Path(os.environ.get("QWEN_DEPLOY_BIN_CACHE") or Path.home() / ".cache" / "qwen-deploy" / "bin")
    built = cache / BINARY
    if built.is_file():
        return str(built)
    import shutil  # only here: it brings bz2 and lzma (2 ms of every plan)

    return shutil.which("llama-server") or "llama-server"


class LlamaServer(Engine):
    name = "llama-server"
    label = "llama-server"
    formats = ("gguf",)
    kv_types = KV_TYPES
    sixteen_bit_kv = "f16"
    context_step = LLAMACPP_CTX_PAD
    ready_path = "/health"
    api_key_env = "LLAMA_API_KEY"
    stages = STAGES
    diagnoses = DIAGNOSES
    install_hint = (
        "run scripts/install-llamacpp --server from the qwen-deploy sources (it builds llama-server from the "
        "llama.cpp llama-cpp-python vendors, once), or put a llama-server of build "
        f"b{versions.LLAMA_SERVER_BUILD} or newer on PATH (or in $QWEN_DEPLOY_LLAMA_SERVER)."
    )
    start_seconds = 10.0

    def candidates(self, model: ModelSpec, hardware: Hardware, request: Request) -> list[Candidate]:
        if request.gpu_layers not in ("auto", 0):
            return []  # llama-server candidates are planned for the CPU (GPU offload: --engine llamacpp)
        return plan.cpu_candidates(self.name, self.kv_types, model, hardware, request)

    def preference(self, request: Request) -> int:
        """Behind llama-cpp-python's server when one request at a time is wanted (the engine
        scripts/install-llamacpp installs by default); its equal when more are (llama-cpp-python's server
        then does not fit: it answers one at a time)."""
        return 1 if request.concurrency <= 1 else 0

    # ------------------------------------------------------------------ running

    def engine_args(self, c: Candidate) -> dict[str, Any]:
        """Flag -> value in the order the command passes them (True: a switch without a value)."""
        s = c.settings
        slots = s["parallel"]
        args: dict[str, Any] = {
            "model": c.model_ref,
            "alias": c.served_name,
            "host": c.host,
            "port": c.port,
            "ctx-size": slots * c.context,
            "parallel": slots,
            "batch-size": s["n_batch"],
            "ubatch-size": s["n_ubatch"],
            "threads": s["n_threads"],
            "threads-batch": s["n_threads_batch"],
            "flash-attn": "on" if s["flash_attn"] else "off",
            "cache-type-k": c.kv_cache_dtype,
            "cache-type-v": c.kv_cache_dtype,
            "cache-ram": s["cache_ram_mib"],
            "n-gpu-layers": s.get("n_gpu_layers", 0),
            "load-mode": "auto" if s["use_mmap"] else "none",
            "fit": "off",
            "verbosity": 4,
            "no-kv-unified": True,
            "no-webui": True,
            "metrics": True,
        }
        if s.get("chat_template", True):
            args["jinja"] = True
        return args

    def command(self, c: Candidate, python: str | None = None) -> list[str]:
        return [binary_path(), *flags(self.engine_args(c))]

    def apply_args(self, c: Candidate, args: dict[str, Any], where: str, model: ModelSpec) -> Candidate:
        r = ArgReader(args, where)
        s = c.settings
        model_ref = r.gguf_file("model", c)
        slots = r.integer("parallel", s["parallel"], 1, 256)
        total = r.integer("ctx-size", slots * c.context, LLAMACPP_CTX_PAD, slots * model.max_context)
        if total % slots:
            raise UsageError(f"{where}: choice.engine_args.ctx-size must be a multiple of parallel ({slots} slots).")
        kv_k = r.choice("cache-type-k", c.kv_cache_dtype, KV_TYPES)
        kv_v = r.choice("cache-type-v", c.kv_cache_dtype, KV_TYPES)
        if kv_k != kv_v:
            raise UsageError(f"{where}: choice.engine_args.cache-type-k and cache-type-v must be the same type.")
        flash = r.choice("flash-attn", "on" if s["flash_attn"] else "off", {"on": True, "off": False})
        if kv_v != "f16" and not flash:
            raise UsageError(f"{where}: a quantized V cache (cache-type-v) needs flash-attn on in llama.cpp.")
        cores = 4096
        settings = {
            **s,
            "parallel": slots,
            "n_batch": r.integer("batch-size", s["n_batch"], 1, 1 << 20),
            "n_ubatch": r.integer("ubatch-size", s["n_ubatch"], 1, 1 << 20),
            "n_threads": r.integer("threads", s["n_threads"], 1, cores),
            "n_threads_batch": r.integer("threads-batch", s["n_threads_batch"], 1, cores),
            "flash_attn": flash,
            "cache_ram_mib": r.integer("cache-ram", s["cache_ram_mib"], 0, 1 << 20),
            "use_mmap": r.choice("load-mode", "auto" if s["use_mmap"] else "none", {"auto": True, "none": False}),
        }
        if settings["n_ubatch"] > settings["n_batch"]:
            raise UsageError(f"{where}: choice.engine_args.ubatch-size must not exceed batch-size.")
        fixed = {"n-gpu-layers": 0, "fit": "off", "verbosity": 4, "no-kv-unified": True, "no-webui": True,
                 "metrics": True}  # fmt: skip
        for key, value in fixed.items():
            got = r._get(key)
            if got is not None and got != value:
                raise UsageError(f"{where}: choice.engine_args.{key} must stay {value!r} (see README).")
        settings["chat_template"] = r.flag("jinja", s.get("chat_template", True))
        alias = r.text("alias", c.served_name, 256)
        host = r.text("host", c.host, 253)
        port = r.integer("port", c.port, 1, 65535)
        r.done()
        art = c.artifact if model_ref == c.model_ref else replace(c.artifact, path=str(Path(model_ref).expanduser()))
        return replace(c, artifact=art, context=total // slots, kv_cache_dtype=kv_k, settings=settings,
                       served_name=alias, host=host, port=port, parallel=slots)  # fmt: skip

    def environment(self, base: dict[str, str], api_key: str | None) -> dict[str, str]:
        env = {k: v for k, v in base.items() if not k.startswith(SCRUBBED_PREFIXES) and k not in SCRUBBED_NAMES}
        if api_key:
            env[self.api_key_env] = api_key
        return env

    def check_installed(self, c: Candidate) -> None:
        """The binary is there and takes every flag the plan passes (`--help` lists it), else a sentence
        naming the flags and the build found."""
        import shutil

        argv = self.command(c)
        binary = argv[0]
        if shutil.which(binary) is None and not Path(binary).is_file():
            raise QwenDeployError(
                f"llama-server is not installed ({binary!r} was not found). To fix: {self.install_hint}"
            )
        version, usage = binary_texts(shutil.which(binary) or binary, self.install_hint)
        problem = versions.too_old_message(binary, version, usage, argv)
        if problem:
            raise QwenDeployError(problem)

    def parse_memory_log(self, text: str) -> dict[str, Any]:
        return logs.parse_memory_log(text)

    def describe_serving(self, context: int, concurrency: float, kv_capacity_tokens: int) -> str:
        slots = max(1, round(concurrency))
        return (
            f"llama-server serves {slots} request{'s' if slots != 1 else ''} at once (--parallel {slots}), each "
            f"in its own slot of {context:,} tokens; more wait for a free slot"
        )

    # ------------------------------------------------------------------ deployment files

    def container(
        self, c: Candidate, model_file: str | None, all_replicas: bool = True, *, model: ModelSpec | None = None
    ) -> Container:
        return container_for(c, model_file)


def binary_texts(binary: str, install_hint: str) -> tuple[str, str]:
    """(`binary --version`, `binary --help`) output, both run at once, kept in ~/.cache/qwen-deploy for this
    file and the libraries beside it (path, inode, size, mtime, ctime): each run loads the server's libraries,
    ~0.1 s apiece, on every `up`. Only a pair of clean runs whose help lists the server's flags is kept; a file
    that changes is read again; a cache that cannot be read is ignored."""
    import json
    import subprocess

    from qwen_deploy.paths import cache_dir

    key = None
    try:
        parts = []
        for path in (binary, binary + ".libs"):
            if path == binary or os.path.isdir(path):
                info = os.stat(path)
                parts.append([os.path.realpath(path), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns])
        key = parts
    except OSError:
        key = None
    kept_at = cache_dir() / "llama-server-help.json"
    if key is not None:
        try:
            with open(kept_at, "rb") as f:
                kept = json.loads(f.read(4 * 1024**2))
            if kept.get("binary") == key and isinstance(kept.get("version"), str) and isinstance(kept.get("help"), str):
                return kept["version"], kept["help"]
        except (OSError, ValueError, AttributeError, RecursionError):
            pass
    runs: list[subprocess.Popen] = []
    try:
        for flag in ("--version", "--help"):
            runs.append(subprocess.Popen([binary, flag], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        texts = [run.communicate(timeout=60)[0] for run in runs]
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QwenDeployError(f"{binary} could not be run ({exc}). To fix: {install_hint}") from None
    finally:
        for run in runs:  # on a timeout or a Ctrl-C, nothing is left running
            if run.poll() is None:
                run.kill()
                run.wait()
    clean = all(run.returncode == 0 for run in runs) and "--ctx-size" in texts[1]
    if key is not None and clean:
        try:
            kept_at.parent.mkdir(parents=True, exist_ok=True)
            partial = kept_at.with_suffix(f".{os.getpid()}.partial")
            partial.write_text(json.dumps({"binary": key, "version": texts[0], "help": texts[1]}))
            os.replace(partial, kept_at)
        except OSError:
            pass  # a read-only cache: run again next time
    return texts[0], texts[1]


def flags(args: dict[str, Any]) -> list[str]:
    """`--flag value` for each engine arg; True is a switch alone."""
    out: list[str] = []
    for flag, value in args.items():
        out += [f"--{flag}"] if value is True else [f"--{flag}", str(value)]
    return out


def container_for(
    c: Candidate, model_file: str | None, image: str = IMAGE, gpus: int = 0, memory_bytes: int | None = None
) -> Container:
    """llama-server in the official image at the same build: the plan's own flags, the model from a mounted
    file or downloaded from its Hugging Face repo into the mounted cache (-hf writes to $LLAMA_CACHE).
    memory_bytes: the RAM to ask for (default: the plan's total; a GPU plan asks for its host share)."""
    import math

    args = dict(ENGINE.engine_args(c), host="0.0.0.0", port=CONTAINER_PORT)
    env: dict[str, str] = {"HOME": "/tmp"}
    if model_file:
        args["model"] = model_file
    else:
        del args["model"]
        args = {"hf-repo": c.artifact.repo, "hf-file": str(c.artifact.file), **args}
        env["LLAMA_CACHE"] = "/models/hub"
    total = c.memory.total_bytes if memory_bytes is None else memory_bytes
    return Container(
        image=image,
        args=flags(args),
        port=CONTAINER_PORT,
        uid=UID,
        key_var=ENGINE.api_key_env,
        gpus=gpus,
        env=env,
        health_path="/health",
        read_only_root=True,
        cpu=str(c.settings["n_threads"]),
        memory_request_bytes=total,
        memory_limit_bytes=math.ceil(total * MEMORY_LIMIT_FACTOR),
        downloads=not model_file,
    )


ENGINE = LlamaServer()
