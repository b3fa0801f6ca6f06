"""A GGUF file (`--model FILE.gguf`): geometry and exact tensor bytes from its header (read by
qwen_deploy.model.gguf_header; no tensor data is read)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from qwen_deploy import values
from qwen_deploy.errors import UsageError
from qwen_deploy.model.types import MAX_CONTEXT, Artifact, ModelSpec, check_geometry

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


def _count(value: Any, where: str, default: int | None = None, hi: int = MAX_CONTEXT) -> int:
    """A header count: an integer, or a per-layer list of them (the largest is what memory is planned for)."""
    if value is None and default is not None:
        return default
    if isinstance(value, list) and value:
        return max(values.integer(v, where, 0, hi) for v in value) or (default or 0)
    return values.integer(value, where, 1, hi)


def spec_from_gguf(path: Path) -> ModelSpec:
    """Geometry and exact tensor bytes from a GGUF header (tensor data is not read)."""
    from qwen_deploy.model.gguf_header import GGUFError, read_header
    from qwen_deploy.resources import regular_file

    regular_file(path, "model file", max_bytes=None)
    try:
        header = read_header(path)
    except (GGUFError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable GGUF file: {exc}. Download it again or check the path.") from None
    arch = header.get("general.architecture")
    if not isinstance(arch, str) or not arch.isprintable() or not 0 < len(arch) <= 64:
        raise UsageError(f"{path}: GGUF header has no general.architecture; the file is corrupt or not a model.")
    where = f"{path}: GGUF {arch}"

    def key(suffix: str) -> Any:
        return header.get(f"{arch}.{suffix}")

    if key("block_count") is None or key("embedding_length") is None or key("attention.head_count") is None:
        raise UsageError(f"{path}: GGUF header lacks block_count/embedding_length/head_count for {arch!r}.")
    layers = _count(key("block_count"), f"{where}.block_count")
    hidden = _count(key("embedding_length"), f"{where}.embedding_length")
    heads = _count(key("attention.head_count"), f"{where}.attention.head_count")
    kv_heads = _count(key("attention.head_count_kv"), f"{where}.attention.head_count_kv", default=heads)
    head_dim = _count(key("attention.key_length"), f"{where}.attention.key_length", default=max(1, hidden // heads))
    value_dim = _count(key("attention.value_length"), f"{where}.attention.value_length", default=head_dim)
    window = key("attention.sliding_window")
    window = _count(window, f"{where}.attention.sliding_window") if window is not None else None
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
    vocab = _count(vocab, f"{where}.vocab_size")
    tensor_bytes = sum(t.n_bytes for t in header.tensors)
    if tensor_bytes <= 0:
        raise UsageError(f"{path}: GGUF header lists no tensor data; the file is not a model.")
    names = {t.name for t in header.tensors}
    file_type = header.get("general.file_type")
    if file_type is not None and (isinstance(file_type, bool) or not isinstance(file_type, int)):
        raise UsageError(f"{path}: general.file_type must be a number, not {values.show(file_type)}.")
    precision = _FILE_TYPE_PRECISION.get(file_type, f"gguf_type_{file_type}") if file_type is not None else "gguf"
    name = header.get("general.name")
    name = name if isinstance(name, str) and name.isprintable() and 0 < len(name) <= 200 else path.stem
    spec = ModelSpec(
        id=str(name),
        name=path.stem,
        source=str(path),
        architecture=arch,
        layers=layers,
        hidden_size=hidden,
        intermediate_size=_count(key("feed_forward_length"), f"{where}.feed_forward_length", default=4 * hidden),
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        value_head_dim=value_dim,
        vocab_size=vocab,
        max_context=_count(key("context_length"), f"{where}.context_length", default=4096),
        tied_embeddings="output.weight" not in names,
        dtype=precision,
        sliding_window=window if swa_layers else None,
        sliding_window_layers=swa_layers,
        parameters=sum(t.n_elements for t in header.tensors),
        chat_template="tokenizer.chat_template" in header.fields,
        tokenizer_merges=header.array_lengths.get("tokenizer.ggml.merges", 0),
    )
    tensors = tuple(
        (t.name, t.type_name, t.shape[0] if t.shape else 1, t.shape[1] if len(t.shape) > 1 else 1, t.n_bytes)
        for t in header.tensors
    )
    artifact = Artifact(
        format="gguf",
        precision=precision,
        repo=str(path.resolve().parent),
        file=path.name,
        weights_bytes=tensor_bytes,
        source="GGUF tensor table",
        path=str(path.resolve()),
        download_bytes=path.stat().st_size,
        tensors=tensors,
    )
    return check_geometry(replace(spec, artifacts=(artifact,)), where)
