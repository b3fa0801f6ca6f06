"""Read a plan file (`plan -o plan.yaml` / `--json`) back into a Plan that `up` (and `render`) can run.

The file is the contract: its choice's engine_args are what runs (a user may have edited them). The
model, hardware and request are re-read so that `up` can re-plan one step down on out-of-memory; the
choice must still be one of the candidates the planner finds for them.
"""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from qwen_deploy.errors import NothingFitsError, UsageError


def _model_for(data: dict[str, Any], where: str):
    from qwen_deploy.model import load_profile, profile_names, resolve_model

    name = data.get("name")
    if isinstance(name, str) and name in profile_names():
        return load_profile(name)
    source = data.get("source")
    if isinstance(source, str) and (source.lower().endswith(".gguf") or Path(source).is_dir()):
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
        f"{where}: the plan's model ({model_id or name!r}) is neither a built-in profile nor a local file."
    )


def _check_args(args: Any, expected: dict[str, Any], where: str) -> dict[str, Any]:
    """engine_args from the file: the same flags the planner emits, scalar values without line breaks."""
    if not isinstance(args, dict):
        raise UsageError(f"{where}: choice.engine_args must be a mapping of flag to value.")
    unknown = sorted(set(args) - set(expected))
    if unknown:
        raise UsageError(f"{where}: choice.engine_args has flags qwen-deploy does not pass: {', '.join(unknown)}.")
    for key, value in args.items():
        planned = expected.get(key)
        numeric = isinstance(planned, (int, float)) and not isinstance(planned, bool)
        if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"{where}: choice.engine_args.{key} must be a number, not {value!r}.")
        if not isinstance(value, (str, int, float, bool)) or (isinstance(value, str) and not value.isprintable()):
            raise UsageError(f"{where}: choice.engine_args.{key} must be one printable value, not {value!r}.")
        if isinstance(value, str) and value.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", value):
            raise UsageError(f"{where}: choice.engine_args.{key} must not start with '-' ({value!r} reads as a flag).")
    return {**expected, **args}  # a flag left out of the file keeps the planner's value


def load_plan(path: str):
    """The Plan in a plan file, its choice carrying the file's engine_args."""
    from qwen_deploy import planner
    from qwen_deploy.engines import llamacpp, vllm
    from qwen_deploy.hardware import hardware_from_dict, models_dir
    from qwen_deploy.model import with_cached_files
    from qwen_deploy.resources import load_yaml_file

    where = f"plan file {path!r}"
    data = load_yaml_file(path, "plan file")
    if not isinstance(data, dict) or data.get("schema") != planner.PLAN_SCHEMA:
        raise UsageError(f"{where} is not a qwen-deploy plan (schema {planner.PLAN_SCHEMA}); make one with `plan -o`.")
    choice = data.get("choice")
    if not choice:
        raise NothingFitsError(f"{where} has no choice: nothing fitted when it was made. Run `qwen-deploy plan` again.")
    if not isinstance(choice, dict) or choice.get("engine") not in ("vllm", "llamacpp"):
        raise UsageError(f"{where}: choice.engine must be vllm or llamacpp.")
    for section in ("model", "hardware", "request"):
        if not isinstance(data.get(section), dict):
            raise UsageError(f"{where} has no {section} section.")
    hardware = hardware_from_dict(data["hardware"], where=f"{where}: hardware")
    model = with_cached_files(_model_for(data["model"], where), models_dir())
    known = {f.name for f in fields(planner.Request)}
    try:
        request = planner.Request(**{k: v for k, v in data["request"].items() if k in known})
    except TypeError as exc:
        raise UsageError(f"{where}: request: {exc}.") from None
    result = planner.plan(model, hardware, request)
    match = next(
        (
            c
            for c in result.candidates
            if (c.engine, c.precision, c.kv_cache_dtype, c.tensor_parallel_size)
            == (
                choice.get("engine"),
                choice.get("precision"),
                choice.get("kv_cache_dtype"),
                choice.get("tensor_parallel_size"),
            )
            and c.engine_args
        ),
        None,
    )
    if match is None:
        raise UsageError(
            f"{where}: its choice ({choice.get('engine')} {choice.get('precision')}, "
            f"KV {choice.get('kv_cache_dtype')}) is not a candidate for its own model and hardware "
            "(made by another version?). Run `plan` again."
        )
    args = _check_args(choice.get("engine_args"), match.engine_args, where)
    engine = llamacpp if match.engine == "llamacpp" else vllm
    context_key = "n_ctx" if match.engine == "llamacpp" else "max-model-len"
    try:
        context = int(args[context_key])
    except (TypeError, ValueError):
        raise UsageError(f"{where}: choice.engine_args.{context_key} must be a number of tokens.") from None
    chosen = replace(match, engine_args=args, command=tuple(engine.command(args)), context=context)
    return replace(result, choice=chosen)
