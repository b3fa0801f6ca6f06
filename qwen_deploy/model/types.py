"""ModelSpec: a model's geometry and the artifacts (checkpoints, GGUF files) each precision is served from.

Pure types and the geometry checks every loader applies (profiles, Hugging Face folders, GGUF headers):
the planner divides by these numbers, so they are whole, positive and consistent before it sees them.
An artifact has a format (gguf, safetensors); which engines load a format is the engines' business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qwen_deploy import values
from qwen_deploy.errors import UsageError

DEFAULT_MODEL = "qwen3-4b-instruct-2507"
FORMATS = ("safetensors", "gguf")

# Bounds no dense decoder comes near; they keep a hostile file's numbers from reaching the arithmetic.
MAX_LAYERS = 10_000
MAX_WIDTH = 1_000_000  # hidden, intermediate, head_dim
MAX_HEADS = 100_000
MAX_VOCAB = 100_000_000
MAX_CONTEXT = 1 << 30


@dataclass(frozen=True)
class Artifact:
    """One way to get the weights: a Hugging Face checkpoint (safetensors) or a GGUF file."""

    format: str  # safetensors | gguf
    precision: str  # bf16 | fp8 | awq | q4_k_m | ...
    repo: str
    file: str | None
    weights_bytes: int  # bytes of weights on disk (safetensors total_size, or the GGUF's tensor data)
    quantization: str | None = None  # vLLM's --quantization method for this checkpoint, if any
    source: str = ""
    path: str | None = None  # a local file or folder, when the artifact is already here
    download_bytes: int | None = None  # bytes on disk after download (defaults to weights_bytes)
    sha256: str | None = None
    revision: str | None = None  # the Hugging Face commit the size and sha256 were read at (None: main)
    # GGUF only: (name, ggml type name, ne0, ne1, bytes) per tensor, for exact repack/offload arithmetic.
    tensors: tuple[tuple[str, str, int, int, int], ...] = ()
    # safetensors only: how the checkpoint is quantized, read from its config (method, bits, group size ...)
    quant_config: dict[str, Any] = field(default_factory=dict)
    # safetensors only, when the folder is here: (name, dtype, shape) of every tensor, from the headers
    safetensors: tuple[tuple[str, str, tuple[int, ...]], ...] = ()

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

    def artifact(self, fmt: str, precision: str) -> Artifact | None:
        for art in self.artifacts:
            if art.format == fmt and art.precision == precision:
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


def check_geometry(spec: ModelSpec, where: str) -> ModelSpec:
    """Refuse geometry the memory arithmetic cannot use: every count a positive integer within bounds,
    attention heads a multiple of the KV heads (grouped-query attention), sliding-window layers in range."""
    for attr, hi in (
        ("layers", MAX_LAYERS),
        ("hidden_size", MAX_WIDTH),
        ("intermediate_size", MAX_WIDTH * 16),
        ("attention_heads", MAX_HEADS),
        ("kv_heads", MAX_HEADS),
        ("head_dim", MAX_WIDTH),
        ("value_head_dim", MAX_WIDTH),
        ("vocab_size", MAX_VOCAB),
        ("max_context", MAX_CONTEXT),
    ):
        values.integer(getattr(spec, attr), f"{where}: {attr}", 1, hi)
    if spec.attention_heads % spec.kv_heads:
        raise UsageError(
            f"{where}: {spec.attention_heads} attention heads are not a multiple of {spec.kv_heads} KV heads; "
            "grouped-query attention needs whole groups."
        )
    if spec.sliding_window is not None:
        values.integer(spec.sliding_window, f"{where}: sliding_window", 1, MAX_CONTEXT)
    if any(not 0 <= i < spec.layers for i in spec.sliding_window_layers):
        raise UsageError(f"{where}: a sliding-window layer index lies outside the model's {spec.layers} layers.")
    values.integer(spec.tokenizer_merges, f"{where}: tokenizer merges", 0, MAX_VOCAB)
    for art in spec.artifacts:
        if art.format not in FORMATS:
            raise UsageError(f"{where}: artifact format must be one of {', '.join(FORMATS)}, not {art.format!r}.")
        values.integer(art.weights_bytes, f"{where}: weights of {art.precision}", 1, values.MAX_BYTES)
    return spec


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
