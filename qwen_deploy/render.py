"""Plan -> deployment files: a systemd unit, a docker-compose file, Kubernetes manifests, and values for the
vLLM production-stack Helm chart. Rendering returns text; writing files is a separate step (atomic).

One Jinja2 environment with StrictUndefined renders templates/. Nothing from a user or a file reaches a
template unquoted: YAML scalars go through `yaml` (JSON-quoted: a newline, quote, `#`, `:` or `{` cannot
break out), systemd arguments through `systemd_arg` (quoted, with `%` -> `%%`, `$` -> `$$`, `\\` and `"`
escaped), and control characters are refused outright with the field's name.

Images and why:
- GPU plans: vllm/vllm-openai at the vLLM release the memory rules come from (0.33.0); its entrypoint is
  `vllm serve`, so the plan's flags follow the model.
- CPU plans: the official llama.cpp server image (ghcr.io/ggml-org/llama.cpp:server) with the plan translated
  to llama-server's own flags. It is maintained upstream, has a real /health (503 while loading), curl for
  health checks, and picks the best CPU variant at run time; a llama-cpp-python image would have to be built
  by the user. Its llama.cpp is newer than llama-cpp-python 0.3.36's, so buffers can differ by a few percent.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen_deploy.errors import UsageError
from qwen_deploy.planner import Candidate, Plan

KINDS = ("systemd", "compose", "k8s", "helm-values")
VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
VLLM_CONTAINER_PORT = 8000
VLLM_UID = 2000  # the image's `vllm` user (docs/deployment/docker.md, non-root use)
LLAMACPP_IMAGE = "ghcr.io/ggml-org/llama.cpp:server"
LLAMACPP_CONTAINER_PORT = 8080  # llama-server's default, and the image's HEALTHCHECK port
LLAMACPP_UID = 1000  # the image has no USER; any non-root uid runs /app/llama-server
KV_NAMES = {1: "f16", 8: "q8_0", 2: "q4_0", 0: "f32", 30: "bf16"}
# Head-room over the plan's total for memory limits: the plan is the predicted peak (BENCHMARKS.md: never
# below the measured peak, at most ~20% above), a limit needs slack for page cache and allocator growth.
MEMORY_LIMIT_FACTOR = 1.25
HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
SAFE_ARG_RE = re.compile(r"^[A-Za-z0-9_./:=,+@-]+$")


class ModelNotHere(UsageError):
    """A systemd unit runs the model from this machine, and the model file is not on it."""


@dataclass(frozen=True)
class RenderOptions:
    name: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int | None = None
    user_unit: bool = False
    model_path: str | None = None  # a local model file/folder (systemd needs one for llama.cpp)
    python: str = sys.executable  # the interpreter whose llama_cpp / qwen_deploy the unit runs
    ui: bool = False  # also the Chainlit chat page (`qwen-deploy ui`) as a service beside the server
    ui_port: int = 8501
    source_dir: str | None = None  # a qwen-deploy source checkout, to build the page's image from


# ----------------------------------------------------------------------------- quoting


def check_text(value: Any, field: str) -> str:
    """A value bound for a generated file: one printable line, or a UsageError naming the field."""
    text = str(value)
    if any(not ch.isprintable() for ch in text):
        raise UsageError(f"{field} {text!r} contains a line break or control character; it cannot go into a file.")
    return text


def yaml_scalar(value: Any) -> str:
    """A YAML scalar that means exactly `value`: JSON's quoting is a subset of YAML's double-quoted style."""
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    return json.dumps(check_text(value, "value"), ensure_ascii=False)


def systemd_arg(value: Any) -> str:
    """One ExecStart= argument (systemd.service(5) "Command lines"): bare when plain, else double-quoted with
    `\\` and `"` escaped; `%` (specifiers) and `$` (variables) doubled either way."""
    text = check_text(value, "argument")
    if text and SAFE_ARG_RE.match(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def systemd_value(value: Any) -> str:
    """A value of a setting that expands specifiers but not variables (Description=, Environment=)."""
    return check_text(value, "value").replace("%", "%%")


def systemd_env(name: str, value: Any) -> str:
    """An Environment= assignment, quoted (variables are not expanded there; specifiers are)."""
    text = check_text(value, name).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{name}={text}"'


# ----------------------------------------------------------------------------- facts from the plan


def memory_limit_mib(c: Candidate) -> int:
    return math.ceil(c.memory.total_bytes * MEMORY_LIMIT_FACTOR / 1024**2)


def host_memory_gib(c: Candidate) -> int:
    """Host RAM a vLLM pod asks for: its share of the checkpoint (read through the page cache while loading)
    plus 2 GiB for the Python process and CUDA's pinned buffers. An estimate: vLLM's host memory is not
    modelled by the planner."""
    return max(4, math.ceil(c.artifact.weights_bytes / c.tensor_parallel_size / 1024**3) + 2)


def cache_storage_gib(c: Candidate) -> int:
    size = c.artifact.download_bytes or c.artifact.weights_bytes
    return max(1, math.ceil(size * 1.2 / 1024**3))


# Containers download the weights when they first start: allow for a 25 MB/s link on top of the load time.
DOWNLOAD_BYTES_PER_S = 25e6


def load_timeout_s(c: Candidate, download: bool = False) -> int:
    """Seconds to allow for start-up: `up`'s default (3 × expected load), plus a first download if any."""
    from qwen_deploy.launch import default_timeout

    extra = (c.artifact.download_bytes or c.artifact.weights_bytes) / DOWNLOAD_BYTES_PER_S if download else 0
    return math.ceil(default_timeout(c) + extra)


def llama_server_args(c: Candidate, model_args: list[str], port: int) -> list[str]:
    """The plan in llama-server's own flags (common/arg.cpp). --parallel 1: the plan holds one full-length
    request (llama-server's default is 4 slots sharing one cache). --load-mode none when the plan turns mmap
    off (repacked weights held once); recent llama-server replaced --no-mmap with it."""
    a = c.engine_args
    args = [
        *model_args,
        "--alias", c.served_name,
        "--host", "0.0.0.0",
        "--port", str(port),
        "--ctx-size", str(a["n_ctx"]),
        "--batch-size", str(a["n_batch"]),
        "--ubatch-size", str(a["n_ubatch"]),
        "--threads", str(a["n_threads"]),
        "--threads-batch", str(a["n_threads_batch"]),
        "--flash-attn", "on" if a["flash_attn"] else "off",
        "--cache-type-k", KV_NAMES[int(a["type_k"])],
        "--cache-type-v", KV_NAMES[int(a["type_v"])],
        "--parallel", "1",
        "--n-gpu-layers", "0",
        "--jinja",
    ]  # fmt: skip
    if not a.get("use_mmap", True):
        args += ["--load-mode", "none"]
    return args


def vllm_container_args(c: Candidate, per_pod: bool) -> list[str]:
    """`vllm serve` flags after the image's entrypoint, bound to 0.0.0.0:8000 inside the container. For
    Kubernetes (per_pod) data parallelism becomes pod replicas instead of --data-parallel-size."""
    args = [str(c.artifact.repo)]
    for flag, value in c.engine_args.items():
        if flag in ("model", "host", "port") or (per_pod and flag == "data-parallel-size"):
            continue
        args += [f"--{flag}", str(value)]
    return [*args, "--host", "0.0.0.0", "--port", str(VLLM_CONTAINER_PORT)]


def dns_label(name: str) -> str:
    """A Kubernetes Service / compose project name (DNS-1035: a-z, 0-9, '-', starting with a letter) from a
    server name, which may also hold '.' and '_' and start with a digit."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = "m-" + label
    return label[:63].rstrip("-")


def _container_name(o: RenderOptions, warnings: list[str]) -> str:
    label = dns_label(o.name)
    if label != o.name and not any(label in w for w in warnings):
        warnings.append(f"{o.name!r} is not a valid Kubernetes/compose name: the services are named {label!r}.")
    return label


def source_checkout() -> str | None:
    """The qwen-deploy source folder this package runs from (an editable install), if any."""
    root = Path(__file__).resolve().parent.parent
    return str(root) if (root / "pyproject.toml").is_file() and (root / "qwen_deploy").is_dir() else None


def _check_plan_values(p: Plan, c: Candidate) -> None:
    for key, value in c.engine_args.items():
        check_text(value, f"engine_args.{key}")
    check_text(p.model.id, "model id")
    if c.engine == "vllm" and not c.artifact.path and not HF_REPO_RE.match(c.artifact.repo):
        raise UsageError(f"model repo {c.artifact.repo!r} is not a Hugging Face repo id (ORG/NAME).")
    if c.artifact.file:
        check_text(c.artifact.file, "model file")


# ----------------------------------------------------------------------------- rendering


def _env():
    import jinja2

    from qwen_deploy.resources import templates_dir

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(yaml=yaml_scalar, systemd_arg=systemd_arg, systemd_value=systemd_value, systemd_env=systemd_env)
    return env


def _readable_by_others(path: Path) -> bool:
    for part in [path, *path.parents]:
        try:
            mode = part.stat().st_mode
        except OSError:
            return False
        needed = 0o004 if part == path and not part.is_dir() else 0o001
        if not mode & needed:
            return False
    return True


def render_systemd(p: Plan, o: RenderOptions, warnings: list[str]) -> dict[str, str]:
    from qwen_deploy.launch import _connect_host, build_argv

    c = p.choice
    assert c is not None
    if c.engine == "llamacpp":
        model = o.model_path or c.artifact.path
        if not model or not Path(model).is_file():
            raise ModelNotHere(
                f"a systemd unit runs the model from this machine, and {c.artifact.file} is not here yet. "
                f"To fix: download it first (`hf download {c.artifact.repo} {c.artifact.file}`"
                + (f" --revision {c.artifact.revision}" if c.artifact.revision else "")
                + ", or run `qwen-deploy up` once), or pass --model-file PATH."
            )
        model = str(Path(model).resolve())
    else:
        model = o.model_path or c.artifact.repo
    argv = list(build_argv(c, model, o.host, o.port))
    # the interpreter (llama.cpp) or the `vllm` script of the environment qwen-deploy is installed in
    argv[0] = o.python if c.engine == "llamacpp" else str(Path(o.python).parent / "vllm")
    if not o.user_unit and not _readable_by_others(Path(o.python).resolve()):
        warnings.append(
            f"{o.python} is not readable by other users, and the system unit runs as its own (dynamic) user: "
            "install qwen-deploy in a world-readable place (e.g. /opt/qwen-deploy) or render --user."
        )
    # vLLM downloads the checkpoint on its first start: allow for that too
    timeout = load_timeout_s(c, download=c.engine == "vllm" and not o.model_path)
    wait = [
        o.python, "-m", "qwen_deploy", "wait", "--url", f"http://{_connect_host(o.host)}:{o.port}",
        "--model", c.served_name, "--timeout", str(timeout),
    ]  # fmt: skip
    under_home = c.engine == "llamacpp" and (Path(model).is_relative_to("/root") or Path(model).is_relative_to("/home"))
    if c.engine == "llamacpp" and not o.user_unit and not _readable_by_others(Path(model)):
        warnings.append(
            f"{model} is not readable by other users, and the system unit runs as its own (dynamic) user: "
            "copy the model to a world-readable place (e.g. /var/lib/qwen-deploy/models) or render --user."
        )
    context = {
        "name": o.name,
        "description": f"qwen-deploy {o.name}: {p.model.id} on {c.label()}, {c.context:,} tokens",
        "exec_start": argv,
        "exec_start_post": wait,
        "env_file": (f"%h/.config/qwen-deploy/{o.name}.env" if o.user_unit else f"/etc/qwen-deploy/{o.name}.env"),
        "key_var": "API_KEY" if c.engine == "llamacpp" else "VLLM_API_KEY",
        "timeout_s": timeout,
        "user_unit": o.user_unit,
        "gpu": c.device == "gpu",
        "memory_max_mib": memory_limit_mib(c) if c.device == "cpu" else None,
        "protect_home": "read-only" if under_home or o.user_unit else "yes",
        "vllm": c.engine == "vllm",
        # vLLM writes the HF cache (downloads) and its own compile cache: CacheDirectory= (system), or the
        # user's own HF cache (user units; '-': no error while it does not exist yet)
        "read_write_paths": ["-%C/huggingface"] if c.engine == "vllm" and o.user_unit else [],
    }
    files = {f"{o.name}.service": _env().get_template("systemd.service.j2").render(**context)}
    if o.ui:
        ui_args = [
            o.python, "-m", "qwen_deploy", "ui", "--url", f"http://{_connect_host(o.host)}:{o.port}",
            "--model", c.served_name, "--context", str(c.context), "--host", "127.0.0.1", "--port", str(o.ui_port),
        ]  # fmt: skip
        files[f"{o.name}-ui.service"] = (
            _env()
            .get_template("systemd-ui.service.j2")
            .render(name=o.name, exec_start=ui_args, env_file=context["env_file"], user_unit=o.user_unit)
        )
    return files


def render_compose(p: Plan, o: RenderOptions, warnings: list[str]) -> dict[str, str]:
    c = p.choice
    assert c is not None
    publish_host = o.host if o.host not in ("0.0.0.0", "::") else ""
    if c.engine == "llamacpp":
        if o.model_path:
            model_args = ["--model", f"/models/{Path(o.model_path).name}"]
            volumes = [f"{Path(o.model_path).resolve().parent}:/models:ro"]
        else:
            model_args = ["--hf-repo", c.artifact.repo, "--hf-file", str(c.artifact.file)]
            volumes = ["hf-cache:/root/.cache/huggingface"]
        service = {
            "image": LLAMACPP_IMAGE,
            "command": llama_server_args(c, model_args, LLAMACPP_CONTAINER_PORT),
            "container_port": LLAMACPP_CONTAINER_PORT,
            "volumes": volumes,
            "named_volume": not o.model_path,
            "memory_mib": memory_limit_mib(c),
            "gpus": 0,
            "key_var": "LLAMA_API_KEY",
            # llama-server's -hf downloads go to $LLAMA_CACHE (HF hub layout): keep them on the volume
            "environment": {} if o.model_path else {"LLAMA_CACHE": "/root/.cache/huggingface/hub"},
        }
    else:
        service = {
            "image": VLLM_IMAGE,
            "command": vllm_container_args(c, per_pod=False),
            "container_port": VLLM_CONTAINER_PORT,
            "volumes": ["hf-cache:/root/.cache/huggingface"],
            "named_volume": True,
            "memory_mib": None,
            "gpus": c.tensor_parallel_size * c.replicas,
            "key_var": "VLLM_API_KEY",
            "environment": {},
        }
    name = _container_name(o, warnings)
    context = {
        "name": name,
        "model_id": p.model.id,
        "label": c.label(),
        "context": c.context,
        "publish": (f"{publish_host}:" if publish_host else "") + f"{o.port}:{service['container_port']}",
        "start_period_s": load_timeout_s(c, download=c.engine == "vllm" or not o.model_path),
        **service,
    }
    ui = None
    if o.ui:
        if o.source_dir:
            ui = {
                "context": o.source_dir,
                "args": [
                    "--url", f"http://{dns_label(o.name)}:{service['container_port']}", "--model", c.served_name,
                    "--context", str(c.context), "--host", "0.0.0.0", "--port", str(o.ui_port),
                ],
                "publish": (f"{publish_host}:" if publish_host else "") + f"{o.ui_port}:{o.ui_port}",
            }  # fmt: skip
        else:
            warnings.append(
                "the chat page's compose service is built from a qwen-deploy source checkout, and this installation "
                "has none: the ui service was left out (render from a checkout, or run `qwen-deploy ui` beside it)."
            )
    context["ui"] = ui
    return {"compose.yaml": _env().get_template("compose.yaml.j2").render(**context)}


def render_k8s(p: Plan, o: RenderOptions, warnings: list[str]) -> dict[str, str]:
    c = p.choice
    assert c is not None
    replicas = o.replicas or (c.replicas if c.engine == "vllm" else 1)
    if c.engine == "llamacpp":
        container = {
            "image": LLAMACPP_IMAGE,
            "args": llama_server_args(
                c, ["--hf-repo", c.artifact.repo, "--hf-file", str(c.artifact.file)], LLAMACPP_CONTAINER_PORT
            ),
            "port": LLAMACPP_CONTAINER_PORT,
            "uid": LLAMACPP_UID,
            "env": {"LLAMA_CACHE": "/models/hub", "HOME": "/tmp"},
            "key_var": "LLAMA_API_KEY",
            "cpu": str(c.engine_args["n_threads"]),
            "memory": f"{math.ceil(c.memory.total_bytes / 1024**2)}Mi",  # the plan's predicted peak
            "memory_limit": f"{memory_limit_mib(c)}Mi",
            "gpus": 0,
            "read_only_root": True,
        }
    else:
        container = {
            "image": VLLM_IMAGE,
            "args": vllm_container_args(c, per_pod=True),
            "port": VLLM_CONTAINER_PORT,
            "uid": VLLM_UID,
            "env": {"HF_HOME": "/models/hf", "VLLM_CACHE_ROOT": "/models/vllm", "HOME": "/tmp"},
            "key_var": "VLLM_API_KEY",
            "cpu": "4",
            "memory": f"{host_memory_gib(c)}Gi",
            "memory_limit": f"{2 * host_memory_gib(c)}Gi",
            "gpus": c.tensor_parallel_size,
            "read_only_root": False,  # vLLM writes torch.compile and Triton caches beside its code
        }
    timeout = load_timeout_s(c, download=True)
    context = {
        "name": _container_name(o, warnings),
        "model_id": p.model.id,
        "label": c.label(),
        "context": c.context,
        "replicas": replicas,
        "service_port": o.port,
        "storage": f"{cache_storage_gib(c)}Gi",
        "access_mode": "ReadWriteOnce" if replicas == 1 else "ReadWriteMany",
        "startup_failures": max(1, math.ceil(timeout / 10)),
        "vllm": c.engine == "vllm",
        **container,
    }
    if replicas > 1:
        warnings.append(
            f"{replicas} replicas share one model-cache volume: it is ReadWriteMany, which your storage class "
            "must support (or give each pod its own cache)."
        )
    return {"k8s.yaml": _env().get_template("k8s.yaml.j2").render(**context)}


def render_helm_values(p: Plan, o: RenderOptions, warnings: list[str]) -> dict[str, str]:
    c = p.choice
    assert c is not None
    if c.engine != "vllm":
        raise UsageError(
            "the vLLM production-stack chart serves vLLM on GPUs; this plan is llama.cpp on the CPU. "
            "Render `k8s` instead, or plan for a GPU (--gpu NAME)."
        )
    a = c.engine_args
    extra = ["--served-model-name", c.served_name, "--kv-cache-dtype", str(a["kv-cache-dtype"])]
    extra += ["--max-num-batched-tokens", str(a["max-num-batched-tokens"])]
    if a.get("quantization"):
        extra += ["--quantization", str(a["quantization"])]
    replicas = o.replicas or c.replicas
    if replicas > 1:
        warnings.append(
            f"{replicas} replicas share the chart's one model-cache volume: it is ReadWriteMany, which your storage "
            "class must support."
        )
    context = {
        "name": _container_name(o, warnings),
        "access_mode": "ReadWriteOnce" if replicas == 1 else "ReadWriteMany",
        "startup_failures": max(1, math.ceil(load_timeout_s(c, download=True) / 10)),
        "model_id": p.model.id,
        "label": c.label(),
        "repository": VLLM_IMAGE.split(":")[0],
        "tag": VLLM_IMAGE.split(":")[1],
        "model_url": c.artifact.repo,
        "replicas": replicas,
        "request_cpu": 4,
        "request_memory": f"{host_memory_gib(c)}Gi",
        "request_gpu": c.tensor_parallel_size,
        "storage": f"{cache_storage_gib(c)}Gi",
        "max_model_len": c.context,
        "dtype": a["dtype"],
        "tp": c.tensor_parallel_size,
        "gpu_util": a["gpu-memory-utilization"],
        "max_num_seqs": a["max-num-seqs"],
        "extra_args": extra,
    }
    return {"helm-values.yaml": _env().get_template("helm-values.yaml.j2").render(**context)}


RENDERERS = {
    "systemd": render_systemd,
    "compose": render_compose,
    "k8s": render_k8s,
    "helm-values": render_helm_values,
}


def render(p: Plan, kind: str, o: RenderOptions) -> tuple[dict[str, str], list[str]]:
    """{file name: text} for `kind` ('all': every kind that applies to the plan), and warnings."""
    if p.choice is None:
        raise UsageError("the plan has no choice to render.")
    _check_plan_values(p, p.choice)
    check_text(o.host, "--host")
    if o.replicas is not None and not 1 <= o.replicas <= 1000:
        raise UsageError("--replicas must be from 1 to 1000.")
    warnings: list[str] = []
    files: dict[str, str] = {}
    kinds = [k for k in KINDS if k != "helm-values" or p.choice.engine == "vllm"] if kind == "all" else [kind]
    if kind == "all" and p.choice.engine != "vllm":
        warnings.append("helm-values skipped: the production-stack chart serves vLLM on GPUs, and this plan is CPU.")
    for k in kinds:
        if k not in RENDERERS:
            raise UsageError(f"cannot render {k!r}: choose one of {', '.join(KINDS)} or all.")
        try:
            files.update(RENDERERS[k](p, o, warnings))
        except ModelNotHere as exc:
            if kind != "all":
                raise
            warnings.append(f"systemd unit skipped: {exc}")  # the container files download it themselves
    return files, warnings
