"""Read a plan file (`plan -o plan.yaml` / `--json`) back into a Plan that `up` (and `render`) can run.

The file is the contract: its choice's engine_args are what runs (a user may have edited them), read back
into the candidate by the engine that wrote them, every value checked as strictly as the CLI checks its own
options. The model, hardware and request are re-read so that `up` can re-plan one step down on
out-of-memory; the choice must still be one of the candidates the planner finds for them.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from qwen_deploy import values
from qwen_deploy.errors import NothingFitsError, UsageError


def _model_for(data: dict[str, Any], where: str):
    from qwen_deploy.model.profiles import load_profile, profile_names
    from qwen_deploy.model.resolve import resolve_model

    name = data.get("name")
    if isinstance(name, str) and name in profile_names():
        return load_profile(name)
    source = data.get("source")
    if isinstance(source, str) and source.isprintable() and (source.lower().endswith(".gguf") or Path(source).is_dir()):
        if Path(source).exists():
            return resolve_model(source)
        raise UsageError(f"{where}: the plan's model file {source!r} is not on this machine; copy it there first.")
    model_id = data.get("id")
    if isinstance(model_id, str):
        try:
            return load_profile(model_id)
        except UsageError:
            pass
    raise UsageError(
        f"{where}: the plan's model ({values.show(model_id or name)}) is neither a built-in profile nor a local file."
    )


def _request(data: Any, where: str):
    """The plan's request, every field checked (the same bounds as the command-line options)."""
    from qwen_deploy.candidates import Request

    data = values.mapping(data, f"{where}: request")
    known = {f.name for f in fields(Request)}
    kwargs = {k: v for k, v in data.items() if k in known}
    w = f"{where}: request"
    context = kwargs.get("context", "auto")
    if not (context in ("auto", "max") or (isinstance(context, int) and not isinstance(context, bool))):
        raise UsageError(f"{w}.context must be a number of tokens, 'auto' or 'max', not {values.show(context)}.")
    if isinstance(context, int):
        values.integer(context, f"{w}.context", 1, 1 << 30)
    if kwargs.get("min_context") is not None:
        values.integer(kwargs["min_context"], f"{w}.min_context", 1, 1 << 30)
    kwargs["concurrency"] = values.number(kwargs.get("concurrency", 1.0), f"{w}.concurrency", 1, 100_000)
    if kwargs.get("gpu_memory_utilization") is not None:
        values.number(kwargs["gpu_memory_utilization"], f"{w}.gpu_memory_utilization", 0, 1, lo_open=True)
    for key in ("engine", "precision", "kv_cache_dtype"):
        if kwargs.get(key) is not None:
            values.text(kwargs[key], f"{w}.{key}", 64)
    values.text(kwargs.get("prefer", "balanced"), f"{w}.prefer", 16)
    layers = kwargs.get("gpu_layers", "auto")
    if not (layers in ("auto", "all") or (isinstance(layers, int) and not isinstance(layers, bool))):
        raise UsageError(f"{w}.gpu_layers must be a number of layers, 'all' or 'auto', not {values.show(layers)}.")
    if isinstance(layers, int):
        values.integer(layers, f"{w}.gpu_layers", 0, 100_000)
    if "max_fill_time" in kwargs:
        kwargs["max_fill_time"] = values.number(kwargs["max_fill_time"], f"{w}.max_fill_time", 0, 1e7, lo_open=True)
    for key in ("tensor_parallel_size", "data_parallel_size"):
        if kwargs.get(key) is not None:
            values.integer(kwargs[key], f"{w}.{key}", 1, 64)
    versions = values.mapping(kwargs.get("engine_versions") or {}, f"{w}.engine_versions")
    for engine, entry in versions.items():
        entry = values.mapping(entry, f"{w}.engine_versions.{engine}")
        values.text(entry.get("version"), f"{w}.engine_versions.{engine}.version", 32)
        values.text(entry.get("source", "given"), f"{w}.engine_versions.{engine}.source", 64)
    kwargs["engine_versions"] = {str(k): dict(v) for k, v in versions.items()}
    values.host(kwargs.get("host", "127.0.0.1"), f"{w}.host")
    values.integer(kwargs.get("port", 8000), f"{w}.port", 1, 65535)
    return Request(**kwargs)


def load_plan(path: str):
    """The Plan in a plan file, its choice carrying the file's engine_args."""
    from qwen_deploy import engines, planner
    from qwen_deploy.hardware.files import hardware_from_dict
    from qwen_deploy.model.resolve import with_cached_files
    from qwen_deploy.paths import models_dir
    from qwen_deploy.resources import load_yaml_file

    where = f"plan file {path!r}"
    data = load_yaml_file(path, "plan file")
    if not isinstance(data, dict) or data.get("schema") != planner.PLAN_SCHEMA:
        raise UsageError(f"{where} is not a qwen-deploy plan (schema {planner.PLAN_SCHEMA}); make one with `plan -o`.")
    choice = data.get("choice")
    if not choice:
        raise NothingFitsError(f"{where} has no choice: nothing fitted when it was made. Run `qwen-deploy plan` again.")
    if not isinstance(choice, dict) or choice.get("engine") not in engines.names():
        raise UsageError(f"{where}: choice.engine must be one of {', '.join(engines.names())}.")
    for section in ("model", "hardware", "request"):
        if not isinstance(data.get(section), dict):
            raise UsageError(f"{where} has no {section} section.")
    hardware = hardware_from_dict(data["hardware"], where=f"{where}: hardware")
    model = with_cached_files(_model_for(data["model"], where), models_dir())
    result = planner.plan(model, hardware, _request(data["request"], where))
    key = (
        choice.get("engine"),
        choice.get("precision"),
        choice.get("kv_cache_dtype"),
        choice.get("tensor_parallel_size"),
    )
    match = next(
        (
            c
            for c in result.candidates
            if (c.engine, c.precision, c.kv_cache_dtype, c.tensor_parallel_size) == key and c.runnable
        ),
        None,
    )
    if match is None:
        raise UsageError(
            f"{where}: its choice ({values.show(choice.get('engine'))} {values.show(choice.get('precision'))}, "
            f"KV {values.show(choice.get('kv_cache_dtype'))}) is not a candidate for its own model and hardware "
            "(made by another version?). Run `plan` again."
        )
    chosen = match.engine_impl.apply_args(match, choice.get("engine_args", {}), where, model)
    return replace(result, choice=chosen)
