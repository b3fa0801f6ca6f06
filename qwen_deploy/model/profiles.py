"""Built-in model profiles (profiles/models/*.yaml, read through their JSON copy): geometry with sources,
and the artifacts each precision is served from."""

from __future__ import annotations

from typing import Any

from qwen_deploy.errors import UsageError
from qwen_deploy.model.types import Artifact, ModelSpec, check_geometry


def _artifacts_from(entries: list[dict[str, Any]]) -> tuple[Artifact, ...]:
    return tuple(
        Artifact(
            format=e["format"],
            precision=e["precision"],
            repo=e["repo"],
            file=e.get("file"),
            weights_bytes=int(e["bytes"]),
            quantization=e.get("quantization"),
            source=e.get("source", ""),
            download_bytes=e.get("download_bytes"),
            sha256=e.get("sha256"),
            revision=e.get("revision"),
            quant_config=dict(e.get("quant_config") or {}),
        )
        for e in entries
    )


def spec_from_profile(name: str, raw: dict[str, Any]) -> ModelSpec:
    heads = raw["attention_heads"]
    head_dim = raw.get("head_dim") or raw["hidden_size"] // heads
    spec = ModelSpec(
        id=raw["id"],
        name=name,
        source=raw["source"],
        architecture=raw["architecture"],
        layers=raw["layers"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        attention_heads=heads,
        kv_heads=raw["kv_heads"],
        head_dim=head_dim,
        value_head_dim=raw.get("value_head_dim", head_dim),
        vocab_size=raw["vocab_size"],
        max_context=raw["max_context"],
        tied_embeddings=bool(raw["tied_embeddings"]),
        dtype=raw.get("dtype", "bfloat16"),
        sliding_window=raw.get("sliding_window"),
        sliding_window_layers=tuple(raw.get("sliding_window_layers", ())),
        parameters=raw.get("parameters"),
        artifacts=_artifacts_from(raw.get("artifacts", [])),
        tokenizer_merges=int(raw.get("tokenizer_merges", 0)),
    )
    return check_geometry(spec, f"profile {name}")


def profile_names() -> list[str]:
    from qwen_deploy.resources import load_profile_data

    return sorted(load_profile_data("models"))


def load_profile(name: str) -> ModelSpec:
    """A built-in model profile by name, alias or Hugging Face id (case-insensitive)."""
    from qwen_deploy.resources import load_profile_data

    wanted = name.strip().lower()
    profiles = load_profile_data("models")
    if wanted in profiles:
        return spec_from_profile(wanted, profiles[wanted])
    for candidate, raw in sorted(profiles.items()):
        keys = {candidate, raw["id"].lower(), *(str(a).lower() for a in raw.get("aliases", ()))}
        if wanted in keys:
            return spec_from_profile(candidate, raw)
    import difflib

    from qwen_deploy.values import show

    names = sorted(profiles)
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UsageError(
        f"unknown model {show(name)}.{hint} Built-in profiles: {', '.join(names)}; "
        "or pass a folder with config.json or a .gguf file."
    )
