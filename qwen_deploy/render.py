"""Plan -> deployment files: a systemd unit, a docker-compose file, Kubernetes manifests, and values for the
vLLM production-stack Helm chart. Rendering returns text; writing files is a separate step (atomic, all or
nothing). Engine-agnostic: the candidate's engine gives the argv, the container image and flags, and the
unit's switches.

One Jinja2 environment with StrictUndefined renders templates/. Nothing from a user or a file reaches a
template unquoted: YAML scalars go through `yaml` (JSON-quoted: a newline, quote, `#`, `:` or `{` cannot
break out), systemd arguments through `systemd_arg` (quoted, with `%` -> `%%`, `$` -> `$$`, `\\` and `"`
escaped), and control characters are refused outright with the field's name.

Exposure: a server bound beyond loopback needs its API key file (the unit's EnvironmentFile=, the compose
env_file are then required, so it does not start without one) unless the user says --insecure-no-api-key.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from qwen_deploy.candidates import Candidate, Plan
from qwen_deploy.client import connect_host, is_loopback, url_for
from qwen_deploy.engines.base import MEMORY_LIMIT_FACTOR
from qwen_deploy.errors import ModelNotHere, UsageError

KINDS = ("systemd", "compose", "k8s", "helm-values")
SAFE_ARG_RE = re.compile(r"^[A-Za-z0-9_./:=,+@-]+$")
CONTAINER_MODEL_DIR = "/model"  # where compose mounts a local model file's folder (read-only)
CACHE_DIR = "/models"  # the model-cache volume (downloads, compile caches)


@dataclass(frozen=True)
class RenderOptions:
    name: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int | None = None
    user_unit: bool = False
    model_path: str | None = None  # a local model file/folder (systemd needs one for GGUF engines)
    python: str = sys.executable  # the interpreter whose engine / qwen_deploy the unit runs
    ui: bool = False  # also the Chainlit chat page (`qwen-deploy ui`) as a service beside the server
    ui_port: int = 8501
    source_dir: str | None = None  # a qwen-deploy source checkout, to build the page's image from
    insecure_no_api_key: bool = False  # allow a non-loopback bind without a required key file


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


def mib(n_bytes: int) -> int:
    return math.ceil(n_bytes / 1024**2)


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
    c.engine_impl.check_artifact(c)
    if c.artifact.file:
        check_text(c.artifact.file, "model file")


def _key_required(o: RenderOptions) -> bool:
    """A server reachable from other machines must not start without its key file."""
    return not is_loopback(o.host) and not o.insecure_no_api_key


# ----------------------------------------------------------------------------- rendering


def _env(extra: Path | None = None):
    import jinja2

    from qwen_deploy.resources import templates_dir

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(templates_dir())] + ([str(extra.parent)] if extra else [])),
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


def _hidden_by_private_tmp(path: Path) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(tmp) for tmp in (Path("/tmp"), Path("/var/tmp")))


def render_systemd(p: Plan, o: RenderOptions, warnings: list[str]) -> dict[str, str]:
    c = p.choice
    assert c is not None
    engine = c.engine_impl
    unit = engine.unit_settings(c, o.user_unit)
    if "gguf" in engine.formats and c.artifact.format == "gguf":
        model = o.model_path or c.artifact.path
        if not model or not Path(model).is_file():
            raise ModelNotHere(
                f"a systemd unit runs the model from this machine, and {c.artifact.file} is not here yet. "
                f"To fix: download it first (`hf download {c.artifact.repo} {c.artifact.file}`"
                + (f" --revision {c.artifact.revision}" if c.artifact.revision else "")
                + ", or run `qwen-deploy up` once), or pass --model-file PATH."
            )
        model = str(Path(model).resolve())
        local = True
    else:
        model = o.model_path or c.model_ref
        local = bool(o.model_path or c.artifact.path)
    argv = list(engine.command(c.at(model_path=model if local else None, host=o.host, port=o.port), python=o.python))
    for path, what in [(Path(o.python), "the Python environment")] + ([(Path(model), "the model")] if local else []):
        if _hidden_by_private_tmp(path):
            warnings.append(
                f"{what} ({path}) lies under /tmp or /var/tmp, which the unit's PrivateTmp=yes hides: the service "
                "would not find it. Move it (e.g. to /opt/qwen-deploy or /var/lib/qwen-deploy) and render again."
            )
    if not o.user_unit and not _readable_by_others(Path(o.python).resolve()):
        warnings.append(
            f"{o.python} is not readable by other users, and the system unit runs as its own (dynamic) user: "
            "install qwen-deploy in a world-readable place (e.g. /opt/qwen-deploy) or render --user."
        )
    # the engine may download its checkpoint on its first start: allow for that too
    timeout = load_timeout_s(c, download=unit["downloads"] and not local)
    wait = [
        o.python, "-m", "qwen_deploy", "wait", "--url", url_for(o.host, o.port),
        "--model", c.served_name, "--timeout", str(timeout),
    ]  # fmt: skip
    under_home = local and (Path(model).is_relative_to("/root") or Path(model).is_relative_to("/home"))
    if local and not o.user_unit and not _readable_by_others(Path(model)):
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
        "env_file_required": _key_required(o),
        "key_var": engine.api_key_env,
        "timeout_s": timeout,
        "user_unit": o.user_unit,
        "gpu": c.device == "gpu",
        "memory_max_mib": mib(math.ceil(c.memory.total_bytes * MEMORY_LIMIT_FACTOR)) if unit["memory_max"] else None,
        "protect_home": "read-only" if under_home or o.user_unit else "yes",
        "cache_env": unit["cache_env"],
        "downloads": unit["downloads"] and not local,
        # a user unit's engine writes the user's own HF cache ('-': no error while it does not exist yet)
        "read_write_paths": ["-%C/huggingface"] if unit["writes_hf_cache"] and o.user_unit else [],
        # the strict sandbox (seccomp, W^X, /proc subset) is proven for engines on the CPU only
        "cpu_sandbox": unit.get("cpu_sandbox", c.device == "cpu"),
    }
    files = {f"{o.name}.service": _env().get_template("systemd.service.j2").render(**context)}
    if o.ui:
        ui_args = [
            o.python, "-m", "qwen_deploy", "ui", "--url", url_for(o.host, o.port),
            "--model", c.served_name, "--context", str(c.context), "--host", "127.0.0.1", "--port", str(o.ui_port),
        ]  # fmt: skip
        files[f"{o.name}-ui.service"] = (
            _env()
            .get_template("systemd-ui.service.j2")
            .render(name=o.name, exec_start=ui_args, env_file=context["env_file"], user_unit=o.user_unit)
        )
    return files


def _local_model(c: Candidate, o: RenderOptions) -> Path | None:
    path = o.model_path or c.artifact.path
    return Path(path).expanduser().resolve() if path else None


def render_compose(p: Plan, o: RenderOptions, warnings: list[str]) -> dict[str, str]:
    c = p.choice
    assert c is not None
    engine = c.engine_impl
    local = _local_model(c, o)
    mounts: list[dict[str, Any]] = []
    in_container = None
    if local is not None:
        # a file: its folder is mounted and the file named inside it; a checkpoint folder: mounted as it is
        folder, inner = (
            (local.parent, PurePosixPath(CONTAINER_MODEL_DIR) / local.name)
            if local.is_file()
            else (local, PurePosixPath(CONTAINER_MODEL_DIR))
        )
        mounts.append({"source": str(folder), "target": CONTAINER_MODEL_DIR})
        in_container = str(inner)
        if not _readable_by_others(local):
            warnings.append(f"{local} is not readable by other users; the container runs as a non-root user.")
    box = engine.container(c, in_container, model=p.model)
    publish_host = o.host if o.host not in ("0.0.0.0", "::") else ""
    name = _container_name(o, warnings)
    context = {
        "name": name,
        "model_id": p.model.id,
        "label": c.label(),
        "context": c.context,
        "publish": (f"{publish_host}:" if publish_host else "") + f"{o.port}:{box.port}",
        "start_period_s": load_timeout_s(c, download=box.downloads),
        "image": box.image,
        "command": box.args,
        "container_port": box.port,
        "uid": box.uid,
        "binds": mounts,
        "cache_dir": CACHE_DIR,
        "environment": box.env,
        "memory_mib": mib(box.memory_limit_bytes) if box.memory_limit_bytes and not box.gpus else None,
        "gpus": box.gpus,
        "shm": box.shm,
        "key_var": box.key_var,
        "health_path": box.health_path,
        "env_file_required": _key_required(o),
    }
    ui = None
    if o.ui:
        if o.source_dir:
            ui = {
                "context": o.source_dir,
                "args": [
                    "--url", f"http://{name}:{box.port}", "--model", c.served_name,
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
    replicas = o.replicas or c.replicas
    local = _local_model(c, o)
    in_volume = None
    if local is not None:
        # a cluster cannot see this machine's files: the model goes into the model-cache volume
        in_volume = str(PurePosixPath(CACHE_DIR) / local.name)
        warnings.append(
            f"the pods read {local.name} from their model-cache volume ({in_volume}): copy it there first, e.g. "
            f"`kubectl cp {local} POD:{in_volume}` into a helper pod that mounts the claim."
        )
    box = c.engine_impl.container(c, in_volume, all_replicas=False, model=p.model)  # replicas are pods here
    timeout = load_timeout_s(c, download=box.downloads)
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
        "image": box.image,
        "args": box.args,
        "port": box.port,
        "uid": box.uid,
        "env": box.env,
        "key_var": box.key_var,
        "cpu": box.cpu,
        "memory": f"{box.host_memory_gib}Gi" if box.gpus else f"{mib(box.memory_request_bytes or 0)}Mi",
        "memory_limit": f"{2 * box.host_memory_gib}Gi" if box.gpus else f"{mib(box.memory_limit_bytes or 0)}Mi",
        "gpus": box.gpus,
        "read_only_root": box.read_only_root,
        "shm": box.shm,
        "health_path": box.health_path,
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
    values = c.engine_impl.helm_values(c)  # raises for engines the chart does not serve
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
        "replicas": replicas,
        "storage": f"{cache_storage_gib(c)}Gi",
        **values,
    }
    template = c.engine_impl.helm_template
    assert template is not None
    return {"helm-values.yaml": _env(template).get_template(template.name).render(**context)}


RENDERERS = {
    "systemd": render_systemd,
    "compose": render_compose,
    "k8s": render_k8s,
    "helm-values": render_helm_values,
}


def _helm_applies(c: Candidate) -> bool:
    try:
        c.engine_impl.helm_values(c)
    except UsageError:
        return False
    return True


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
    helm = _helm_applies(p.choice)
    kinds = [k for k in KINDS if k != "helm-values" or helm] if kind == "all" else [kind]
    if kind == "all" and not helm:
        warnings.append(f"helm-values skipped: the production-stack chart serves vLLM, and this plan runs "
                        f"{p.choice.engine_impl.label}.")  # fmt: skip
    for k in kinds:
        if k not in RENDERERS:
            raise UsageError(f"cannot render {k!r}: choose one of {', '.join(KINDS)} or all.")
        try:
            files.update(RENDERERS[k](p, o, warnings))
        except ModelNotHere as exc:
            if kind != "all":
                raise
            warnings.append(f"systemd unit skipped: {exc}")  # the container files download it themselves
    if not is_loopback(o.host):
        how = "it does not start without its key file" if not o.insecure_no_api_key else "WITHOUT a required key"
        warnings.append(f"the server listens on {o.host} ({connect_host(o.host)} from here): {how}.")
    return files, warnings
