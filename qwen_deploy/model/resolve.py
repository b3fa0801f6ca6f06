"""`--model REF` to a ModelSpec (a profile name or id, a Hugging Face folder, a .gguf file), and the
artifacts already in the Hugging Face cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qwen_deploy.errors import UsageError
from qwen_deploy.model.types import DEFAULT_MODEL, ModelSpec


def hub_repo_folder(repo: str) -> str:
    """A repo's folder in the Hugging Face cache: models--ORG--NAME."""
    return "models--" + repo.replace("/", "--")


def with_cached_files(spec: ModelSpec, hub_cache: Path) -> ModelSpec:
    """The spec with `path` filled in for GGUF artifacts already in the Hugging Face cache
    (hub_cache/models--ORG--NAME/snapshots/REV/FILE), so plans name the file the engine will load."""
    arts = []
    for art in spec.artifacts:
        if art.format == "gguf" and art.file and not art.path:
            folder = hub_cache / hub_repo_folder(art.repo) / "snapshots"
            found = sorted(folder.glob(f"*/{art.file}")) if folder.is_dir() else []
            if found:
                art = replace(art, path=str(found[-1]))
        arts.append(art)
    return replace(spec, artifacts=tuple(arts))


def resolve_model(ref: str | None) -> ModelSpec:
    """--model: a profile name/id, an HF folder with config.json, or a .gguf file."""
    from qwen_deploy import values
    from qwen_deploy.model.profiles import load_profile

    if ref is None:
        return load_profile(DEFAULT_MODEL)
    values.text(ref, "--model", 4096)
    path = Path(ref).expanduser()
    if path.is_dir():
        from qwen_deploy.model.hf import spec_from_hf_dir

        return spec_from_hf_dir(path)
    if path.suffix.lower() == ".gguf" or path.exists():
        if not path.exists():
            raise UsageError(f"model file {ref!r} does not exist.")
        from qwen_deploy.model.gguf import spec_from_gguf

        return spec_from_gguf(path)
    return load_profile(ref)
