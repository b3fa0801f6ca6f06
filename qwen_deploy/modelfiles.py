"""Get the weights a plan needs onto this machine, and check a GGUF before an engine is given it.

Downloads go to the shared Hugging Face cache (HF_HUB_CACHE / HF_HOME; the same place vLLM and other tools
read) through huggingface_hub, which resumes partial downloads and shows a progress bar. Before anything
is downloaded the free disk space is checked. With HF_HUB_OFFLINE=1 nothing is downloaded: a file that is
not cached is an error naming the repo, the file and the folder it belongs in.
"""

from __future__ import annotations

import os
from pathlib import Path

from qwen_deploy.errors import QwenDeployError, UsageError
from qwen_deploy.model.resolve import hub_repo_folder
from qwen_deploy.model.types import Artifact, ModelSpec
from qwen_deploy.units import format_size

# Head-room kept free on the disk after a download (logs, the partial file's rename, other programs).
DISK_MARGIN_BYTES = 256 * 1024**2


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(cache: Path, needed_bytes: int, what: str) -> None:
    """Refuse a download that cannot fit on the disk holding the cache, before a byte is fetched."""
    import shutil

    free = shutil.disk_usage(_existing_parent(cache)).free
    if free < needed_bytes + DISK_MARGIN_BYTES:
        raise QwenDeployError(
            f"not enough disk space to download {what}: it needs {format_size(needed_bytes)} "
            f"(+{format_size(DISK_MARGIN_BYTES)} head-room) and {cache} has {format_size(free)} free. "
            "To fix: free space there, point HF_HUB_CACHE at a bigger disk, or pass --model-file PATH."
        )


def _not_cached(art: Artifact, cache: Path) -> QwenDeployError:
    what = f"{art.file} from {art.repo}" if art.file else art.repo
    rev = f" --revision {art.revision}" if art.revision else ""
    get = f"hf download {art.repo} {art.file or ''}{rev}".rstrip()
    return QwenDeployError(
        f"{what} is not in the Hugging Face cache ({cache}) and downloads are off (HF_HUB_OFFLINE=1). "
        f"To fix: unset HF_HUB_OFFLINE, or run `{get}` where there is a network and copy {cache} here, "
        "or pass --model-file PATH to a copy of the file."
    )


def sha256_file(path: Path, chunk: int = 8 * 1024**2) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_gguf(art: Artifact, cache: Path) -> Path:
    """The local path of a GGUF artifact: already here, in the cache, or downloaded now."""
    if art.path and Path(art.path).is_file():
        return Path(art.path)
    if not art.file:
        raise UsageError(f"the plan's GGUF artifact ({art.repo}) names no file.")
    if offline():
        raise _not_cached(art, cache)
    partial = sum(p.stat().st_size for p in (cache / hub_repo_folder(art.repo) / "blobs").glob("*.incomplete"))
    check_disk(cache, max(0, (art.download_bytes or art.weights_bytes) - partial), f"{art.file} from {art.repo}")
    from huggingface_hub import hf_hub_download  # heavy (httpx): only when a download is needed

    try:
        path = Path(hf_hub_download(art.repo, art.file, revision=art.revision, cache_dir=str(cache)))
    except Exception as exc:  # network, auth, missing repo/file: huggingface_hub raises many kinds
        raise QwenDeployError(
            f"could not download {art.file} from {art.repo}: {type(exc).__name__}: {exc}. "
            "To fix: check the network (or HF_ENDPOINT / HF_TOKEN), or pass --model-file PATH."
        ) from None
    if art.sha256:
        actual = sha256_file(path)
        if actual != art.sha256:
            raise QwenDeployError(
                f"{path} does not have the sha256 the profile records ({actual} != {art.sha256}); "
                "delete it and download it again."
            )
    return path


def fetch_snapshot(art: Artifact, cache: Path) -> str:
    """A vLLM checkpoint: a local folder, or the repo id once its files are in the shared cache (vLLM then
    reads them from there; downloading first gives a progress bar and a disk check)."""
    if art.path and Path(art.path).is_dir():
        return art.path
    folder = cache / hub_repo_folder(art.repo) / "snapshots"
    cached = folder.is_dir() and any(folder.glob("*/config.json")) and any(folder.glob("*/*.safetensors"))
    if cached and not any((cache / hub_repo_folder(art.repo) / "blobs").glob("*.incomplete")):
        return art.repo  # already here: vLLM reads it from the shared cache
    if offline():
        raise _not_cached(art, cache)
    check_disk(cache, art.download_bytes or art.weights_bytes, art.repo)
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(
            art.repo,
            revision=art.revision,
            cache_dir=str(cache),
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"],
        )
    except Exception as exc:
        raise QwenDeployError(
            f"could not download {art.repo}: {type(exc).__name__}: {exc}. "
            "To fix: check the network (or HF_ENDPOINT / HF_TOKEN for gated models)."
        ) from None
    return art.repo


def fetch(art: Artifact, cache: Path) -> str:
    """What the engine loads for an artifact, by its format: a GGUF file's local path, or a checkpoint's
    folder or repo id once its files are in the shared cache."""
    if art.format == "gguf":
        return str(fetch_gguf(art, cache))
    if art.format == "safetensors":
        return fetch_snapshot(art, cache)
    raise UsageError(f"qwen-deploy cannot fetch {art.format} artifacts ({art.repo}).")


def check(fmt: str, path: Path, model: ModelSpec) -> ModelSpec | None:
    """Check a local model file against the plan's model before an engine gets it: a GGUF's header
    (returning the file's own spec; a plan made from this very file is not read again). A checkpoint is
    read by its engine."""
    if fmt != "gguf":
        return None
    if model.source.endswith(".gguf") and Path(model.source).resolve() == path.resolve():
        return model
    return check_gguf(path, model)


def check_gguf(path: Path, model: ModelSpec) -> ModelSpec:
    """Read the GGUF header and tensor table and check it is the model the plan is for.

    Raises UsageError naming the file when it is unreadable, truncated or a different model; returns
    the file's own spec.
    """
    from qwen_deploy.model.gguf import spec_from_gguf

    if not path.is_file():
        raise UsageError(f"model file {str(path)!r} does not exist.")
    found = spec_from_gguf(path)  # a truncated file fails here: the tensor table points past its end
    mismatches = [
        f"{label} {getattr(found, attr)} != {getattr(model, attr)}"
        for attr, label in (
            ("layers", "layers"),
            ("kv_heads", "KV heads"),
            ("head_dim", "head size"),
            ("hidden_size", "hidden size"),
            ("vocab_size", "vocabulary"),
        )
        if getattr(found, attr) != getattr(model, attr)
    ]
    if mismatches:
        raise UsageError(
            f"{path} is not the model the plan is for ({model.id}): " + ", ".join(mismatches) + ". "
            "To fix: pass the plan's GGUF file, or plan for this file with --model PATH."
        )
    return found
