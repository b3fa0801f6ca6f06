"""ModelSpec: a model's geometry and the artifacts (checkpoints, GGUF files) each precision is served from.

Three sources: a built-in profile (profiles/models/*.yaml), a Hugging Face folder with config.json
(`--model DIR`), or a GGUF file (`--model FILE.gguf`, header read by qwen_deploy.gguf_header).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qwen_deploy.errors import UsageError

DEFAULT_MODEL = "qwen3-4b-instruct-2507"

VLLM_PRECISIONS = ("bf16", "fp16", "fp8", "awq")
GGUF_PRECISIONS = ("f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")


@dataclass(frozen=True)
class Artifact:
    """One way to get the weights: a HF repo (vLLM) or a GGUF file (llama.cpp)."""

    engine: str  # vllm | llamacpp
    precision: str  # bf16 | fp8 | awq | q4_k_m | ...
    repo: str
    file: str | None
    weights_bytes: int  # bytes of weights on disk (safetensors total_size, or the GGUF file size)
    quantization: str | None = None  # vLLM's --quantization method for this checkpoint, if any
    source: str = ""
    path: str | None = None  # a local file or folder, when the artifact is already here
    download_bytes: int | None = None  # bytes on disk after download (defaults to weights_bytes)
    sha256: str | None = None
    revision: str | None = None  # the Hugging Face commit the size and sha256 were read at (None: main)
    # GGUF only: (name, ggml type name, ne0, ne1, bytes) per tensor, for exact repack arithmetic.
    tensors: tuple[tuple[str, str, int, int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "file": self.file}


@dataclass(frozen=True)
class ModelSpec:
    id: str
    source: str
    architecture: str
    layers: int
    hidden_size: int
    intermediate_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int  # key length per head
    value_head_dim: int
    vocab_size: int
    max_context: int
    tied_embeddings: bool
    dtype: str = "bfloat16"
    sliding_window: int | None = None
    # Indices of layers that use sliding-window attention (empty: all layers attend to the full context).
    sliding_window_layers: tuple[int, ...] = ()
    parameters: int | None = None
    artifacts: tuple[Artifact, ...] = field(default=())
    name: str = ""
    # The model ships a chat template (a GGUF's tokenizer.chat_template; every built-in profile's GGUFs do).
    chat_template: bool = True
    # BPE merges in its GGUF tokenizer (tokenizer.ggml.merges; 0 for SentencePiece): llama.cpp holds them.
    tokenizer_merges: int = 0

    def artifact(self, engine: str, precision: str) -> Artifact | None:
        for art in self.artifacts:
            if art.engine == engine and art.precision == precision:
                return art
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "architecture": self.architecture,
            "layers": self.layers,
            "attention_heads": self.attention_heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "value_head_dim": self.value_head_dim,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_context": self.max_context,
            "tied_embeddings": self.tied_embeddings,
            "dtype": self.dtype,
            "sliding_window": self.sliding_window,
            "sliding_window_layers": list(self.sliding_window_layers),
            "parameters": self.parameters,
            "chat_template": self.chat_template,
            "tokenizer_merges": self.tokenizer_merges,
        }


def count_parameters(spec: ModelSpec, qk_norm: bool = False) -> int:
    """Parameters of a dense decoder with GQA attention and a gated MLP (no biases).

    embed V·h; per layer q h·(H·d), k and v h·(K·d) each, o (H·d)·h, gate/up/down 3·h·i, two RMSNorms 2·h
    (+ q/k norms 2·d for Qwen3); final norm h; an untied lm_head V·h.
    """
    h, d, dv = spec.hidden_size, spec.head_dim, spec.value_head_dim
    per_layer = (
        h * spec.attention_heads * d
        + h * spec.kv_heads * (d + dv)
        + spec.attention_heads * dv * h
        + 3 * h * spec.intermediate_size
        + 2 * h
        + (2 * d if qk_norm else 0)
    )
    embed = spec.vocab_size * h
    return embed + spec.layers * per_layer + h + (0 if spec.tied_embeddings else embed)


# --------------------------------------------------------------------------- built-in profiles


def _artifacts_from(entries: list[dict[str, Any]]) -> tuple[Artifact, ...]:
    return tuple(
        Artifact(
            engine=e["engine"],
            precision=e["precision"],
            repo=e["repo"],
            file=e.get("file"),
            weights_bytes=int(e["bytes"]),
            quantization=e.get("quantization"),
            source=e.get("source", ""),
            download_bytes=e.get("download_bytes"),
            sha256=e.get("sha256"),
            revision=e.get("revision"),
        )
        for e in entries
    )


def _spec_from_profile(name: str, raw: dict[str, Any]) -> ModelSpec:
    heads = raw["attention_heads"]
    head_dim = raw.get("head_dim") or raw["hidden_size"] // heads
    layers = raw["layers"]
    return ModelSpec(
        id=raw["id"],
        name=name,
        source=raw["source"],
        architecture=raw["architecture"],
        layers=layers,
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


def profile_names() -> list[str]:
    from qwen_deploy.resources import profiles_dir

    return sorted(p.stem for p in (profiles_dir() / "models").glob("*.yaml"))


def load_profile(name: str) -> ModelSpec:
    """A built-in model profile by name, alias or Hugging Face id (case-insensitive)."""
    from qwen_deploy.resources import load_profile_yaml

    wanted = name.strip().lower()
    names = profile_names()
    if wanted in names:  # the common case: parse one file, not all of them
        return _spec_from_profile(wanted, load_profile_yaml(f"models/{wanted}.yaml"))
    for candidate in names:
        raw = load_profile_yaml(f"models/{candidate}.yaml")
        keys = {candidate, raw["id"].lower(), *(str(a).lower() for a in raw.get("aliases", ()))}
        if wanted in keys:
            return _spec_from_profile(candidate, raw)
    import difflib

    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UsageError(
        f"unknown model {name!r}.{hint} Built-in profiles: {', '.join(names)}; "
        "or pass a folder with config.json or a .gguf file."
    )


def hub_repo_folder(repo: str) -> str:
    """A repo's folder in the Hugging Face cache: models--ORG--NAME."""
    return "models--" + repo.replace("/", "--")


def with_cached_files(spec: ModelSpec, hub_cache: Path) -> ModelSpec:
    """The spec with `path` filled in for GGUF artifacts already in the Hugging Face cache
    (hub_cache/models--ORG--NAME/snapshots/REV/FILE), so plans name the file the engine will load."""
    arts = []
    for art in spec.artifacts:
        if art.engine == "llamacpp" and art.file and not art.path:
            folder = hub_cache / hub_repo_folder(art.repo) / "snapshots"
            found = sorted(folder.glob(f"*/{art.file}")) if folder.is_dir() else []
            if found:
                art = replace(art, path=str(found[-1]))
        arts.append(art)
    return replace(spec, artifacts=tuple(arts))


def resolve_model(ref: str | None) -> ModelSpec:
    """--model: a profile name/id, an HF folder with config.json, or a .gguf file."""
    if ref is None:
        return load_profile(DEFAULT_MODEL)
    path = Path(ref).expanduser()
    if path.is_dir():
        return spec_from_hf_dir(path)
    if path.suffix.lower() == ".gguf" or path.is_file():
        if not path.exists():
            raise UsageError(f"model file {ref!r} does not exist.")
        return spec_from_gguf(path)
    return load_profile(ref)


# --------------------------------------------------------------------------- Hugging Face folders

_QUANT_PRECISION = {"fp8": "fp8", "awq": "awq", "gptq": "gptq", "compressed-tensors": "compressed-tensors"}


def safetensors_bytes(folder: Path) -> int | None:
    """Exact tensor bytes from the safetensors headers in `folder` (no tensor data is read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        try:
            with open(file, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > 100 * 1024**2:
                    raise ValueError("header longer than 100 MiB")
                header = json.loads(handle.read(length))
        except (OSError, ValueError, struct.error) as exc:
            raise UsageError(f"{file} is not a readable safetensors file ({exc}).") from None
        try:
            for key, info in header.items():
                if key != "__metadata__":
                    start, end = info["data_offsets"]
                    total += int(end) - int(start)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise UsageError(f"{file} has a malformed safetensors header (tensor offsets unreadable).") from None
    return total


def spec_from_hf_dir(folder: Path) -> ModelSpec:
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{folder} has no config.json; pass a Hugging Face model folder or a .gguf file.") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {config_path}: {exc}.") from None
    if not isinstance(config, dict):
        raise UsageError(f"{config_path} is not a JSON object.")
    text_config = config.get("text_config")
    if isinstance(text_config, dict):  # multimodal wrappers keep the LM in text_config
        config = {**text_config, **config}

    def positive(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UsageError(f"{config_path}: {key!r} must be a positive integer, not {value!r}.")
        return value

    def need(*keys: str) -> int:
        for key in keys:
            if key in config:
                return positive(key, config[key])
        raise UsageError(f"{config_path} lacks {keys[0]!r} (a positive integer); is this a decoder LM?")

    def optional(key: str, default: int) -> int:
        return positive(key, config[key]) if config.get(key) is not None else default

    layers = need("num_hidden_layers", "n_layer", "num_layers")
    hidden = need("hidden_size", "n_embd", "d_model")
    heads = need("num_attention_heads", "n_head")
    kv_heads = optional("num_key_value_heads", heads)
    if hidden // heads == 0 and config.get("head_dim") is None:
        raise UsageError(f"{config_path}: hidden_size {hidden} is smaller than num_attention_heads {heads}.")
    head_dim = optional("head_dim", hidden // heads)
    window = config.get("sliding_window")
    if window is not None and not (isinstance(window, int) and not isinstance(window, bool) and window > 0):
        window = None
    swa_layers: tuple[int, ...] = ()
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == layers:
        swa_layers = tuple(i for i, t in enumerate(layer_types) if t == "sliding_attention")
    elif window and config.get("use_sliding_window", True):
        max_window_layers = config.get("max_window_layers")
        if config.get("use_sliding_window") is True and isinstance(max_window_layers, int):
            swa_layers = tuple(range(max(0, max_window_layers), layers))  # Qwen2 convention
        elif "use_sliding_window" not in config:
            swa_layers = tuple(range(layers))  # Mistral/Phi-3 style: every layer slides
    if not swa_layers:
        window = None
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    quant = config.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower() if isinstance(quant, dict) else ""
    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else config.get("model_type")
    precision = _QUANT_PRECISION.get(method) or ("fp16" if "16" in dtype and "b" not in dtype else "bf16")
    weights = safetensors_bytes(folder)
    base = ModelSpec(
        id=str(config.get("_name_or_path") or folder.name),
        name=folder.name,
        source=str(config_path),
        architecture=str(architecture or "unknown"),
        layers=layers,
        hidden_size=hidden,
        intermediate_size=optional("intermediate_size", 4 * hidden),
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        value_head_dim=head_dim,
        vocab_size=need("vocab_size"),
        max_context=optional("max_position_embeddings", optional("n_positions", 4096)),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        dtype=dtype,
        sliding_window=window,
        sliding_window_layers=swa_layers,
    )
    params = count_parameters(base, qk_norm=config.get("model_type") == "qwen3")
    exact = weights is not None
    if weights is None:
        bytes_per_param = {"fp8": 1, "awq": 0.5, "gptq": 0.5}.get(precision, 2)
        weights = int(params * bytes_per_param)
    artifact = Artifact(
        engine="vllm",
        precision=precision,
        repo=str(folder.resolve()),
        file=None,
        weights_bytes=weights,
        # vLLM detects the method from quantization_config and picks the best kernel (awq -> awq_marlin);
        # passing --quantization awq would force the slower fp16-only kernel
        quantization="fp8" if method == "fp8" else None,
        source="safetensors headers" if exact else "parameter count x bytes per parameter",
        path=str(folder.resolve()),
    )
    return replace(base, parameters=params, artifacts=(artifact,))


# --------------------------------------------------------------------------- GGUF files

# llama.cpp sets the sliding-window layout of some architectures in code, not in the GGUF (llama-model.cpp
# load_hparams: gemma2 'set_swa_pattern(2)', gemma3 'set_swa_pattern(6)'; cohere2 4): a pattern n means
# every n-th layer (1-based) is full attention and the others slide.
_SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "cohere2": 4}

_FILE_TYPE_PRECISION = {
    0: "f32",
    1: "f16",
    2: "q4_0",
    3: "q4_1",
    7: "q8_0",
    8: "q5_0",
    9: "q5_1",
    10: "q2_k",
    11: "q3_k_s",
    12: "q3_k_m",
    13: "q3_k_l",
    14: "q4_k_s",
    15: "q4_k_m",
    16: "q5_k_s",
    17: "q5_k_m",
    18: "q6_k",
    32: "bf16",
}


def spec_from_gguf(path: Path) -> ModelSpec:
    """Geometry and exact tensor bytes from a GGUF header (tensor data is not read)."""
    from qwen_deploy.gguf_header import GGUFError, read_header

    try:
        header = read_header(path)
    except (GGUFError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable GGUF file: {exc}. Download it again or check the path.") from None
    arch = header.get("general.architecture")
    if not isinstance(arch, str):
        raise UsageError(f"{path}: GGUF header has no general.architecture; the file is corrupt or not a model.")

    def key(suffix: str) -> Any:
        return header.get(f"{arch}.{suffix}")

    layers = key("block_count")
    hidden = key("embedding_length")
    heads = key("attention.head_count")
    if isinstance(heads, list):  # per-layer counts (some architectures); the planner takes the largest
        heads = max(heads, default=0)
    if not all(isinstance(v, int) and v > 0 for v in (layers, hidden, heads)):
        raise UsageError(f"{path}: GGUF header lacks block_count/embedding_length/head_count for {arch!r}.")
    kv_heads = key("attention.head_count_kv") or heads
    if isinstance(kv_heads, list):
        kv_heads = max(kv_heads, default=heads)
    head_dim = key("attention.key_length") or hidden // heads
    value_dim = key("attention.value_length") or head_dim
    window = key("attention.sliding_window")
    swa_layers: tuple[int, ...] = ()
    pattern = key("attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) == layers:
        swa_layers = tuple(i for i, is_swa in enumerate(pattern) if is_swa)
    elif window and arch in _SWA_PATTERNS:
        n = _SWA_PATTERNS[arch]
        swa_layers = tuple(i for i in range(layers) if (i + 1) % n != 0)
    vocab = key("vocab_size") or header.array_lengths.get("tokenizer.ggml.tokens")
    if not vocab:
        raise UsageError(f"{path}: GGUF header has no vocabulary size.")
    tensor_bytes = sum(t.n_bytes for t in header.tensors)
    names = {t.name for t in header.tensors}
    file_type = header.get("general.file_type")
    precision = _FILE_TYPE_PRECISION.get(file_type, f"gguf_type_{file_type}") if file_type is not None else "gguf"
    name = header.get("general.name") or path.stem
    spec = ModelSpec(
        id=str(name),
        name=path.stem,
        source=str(path),
        architecture=arch,
        layers=layers,
        hidden_size=hidden,
        intermediate_size=key("feed_forward_length") or 4 * hidden,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        value_head_dim=value_dim,
        vocab_size=vocab,
        max_context=key("context_length") or 4096,
        tied_embeddings="output.weight" not in names,
        dtype=precision,
        sliding_window=window if swa_layers else None,
        sliding_window_layers=swa_layers,
        parameters=sum(t.n_elements for t in header.tensors),
        chat_template="tokenizer.chat_template" in header.fields,
        tokenizer_merges=header.array_lengths.get("tokenizer.ggml.merges", 0),
    )
    tensors = tuple(
        (t.name, t.type_name, t.shape[0], t.shape[1] if len(t.shape) > 1 else 1, t.n_bytes) for t in header.tensors
    )
    artifact = Artifact(
        engine="llamacpp",
        precision=precision,
        repo=str(path.resolve().parent),
        file=path.name,
        weights_bytes=tensor_bytes,
        source="GGUF tensor table",
        path=str(path.resolve()),
        download_bytes=path.stat().st_size,
        tensors=tensors,
    )
    return replace(spec, artifacts=(artifact,))
