"""A Hugging Face model folder (`--model DIR`): geometry from config.json, the weights' exact bytes from the
safetensors headers (no tensor data is read), and how the checkpoint is quantized."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

from qwen_deploy import values
from qwen_deploy.errors import UsageError
from qwen_deploy.model.types import Artifact, ModelSpec, check_geometry, count_parameters

MAX_SAFETENSORS_HEADER = 100 * 1024**2
MAX_SHARDS = 10_000

# quantization_config.quant_method -> the precision the planner calls it
_QUANT_PRECISION = {"fp8": "fp8", "awq": "awq", "gptq": "gptq", "compressed-tensors": "compressed-tensors"}


def safetensors_tensors(folder: Path) -> tuple[tuple[str, str, tuple[int, ...], int], ...] | None:
    """(name, dtype, shape, bytes) of every tensor in the folder's *.safetensors headers; None without any."""
    from qwen_deploy.resources import regular_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    if len(files) > MAX_SHARDS:
        raise UsageError(f"{folder} has {len(files):,} safetensors files; that is not one model.")
    out = []
    for file in files:
        regular_file(file, "safetensors file", max_bytes=None)
        try:
            with open(file, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > MAX_SAFETENSORS_HEADER:
                    raise ValueError("header longer than 100 MiB")
                header = json.loads(handle.read(length))
        except (OSError, ValueError, struct.error, RecursionError) as exc:
            raise UsageError(f"{file} is not a readable safetensors file ({type(exc).__name__}: {exc}).") from None
        if not isinstance(header, dict):
            raise UsageError(f"{file} has a malformed safetensors header (not a JSON object).")
        try:
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                start, end = (values.integer(v, "offset", 0, values.MAX_BYTES) for v in info["data_offsets"])
                shape = tuple(values.integer(d, "dimension", 0, values.MAX_BYTES) for d in info["shape"])
                if end < start:
                    raise ValueError("a tensor ends before it starts")
                out.append((str(key), str(info["dtype"]), shape, end - start))
        except (AttributeError, KeyError, TypeError, ValueError, UsageError):
            raise UsageError(f"{file} has a malformed safetensors header (tensor offsets unreadable).") from None
    return tuple(out)


def safetensors_bytes(folder: Path) -> int | None:
    """Exact tensor bytes from the safetensors headers in `folder`."""
    tensors = safetensors_tensors(folder)
    return None if tensors is None else sum(t[3] for t in tensors)


def _read_config(folder: Path) -> tuple[Path, dict[str, Any]]:
    from qwen_deploy.resources import read_text

    config_path = folder / "config.json"
    if not config_path.exists():
        raise UsageError(f"{folder} has no config.json; pass a Hugging Face model folder or a .gguf file.")
    text = read_text(config_path, "config.json")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"cannot read {config_path}: {type(exc).__name__}: {exc}.") from None
    if not isinstance(config, dict):
        raise UsageError(f"{config_path} is not a JSON object.")
    text_config = config.get("text_config")
    if isinstance(text_config, dict):  # multimodal wrappers keep the LM in text_config
        config = {**text_config, **config}
    return config_path, config


def spec_from_hf_dir(folder: Path) -> ModelSpec:
    config_path, config = _read_config(folder)
    where = str(config_path)

    def positive(key: str, value: Any) -> int:
        return values.integer(value, f"{where}: {key!r}", 1, 1 << 30)

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
    quant = quant if isinstance(quant, dict) else {}
    method = str(quant.get("quant_method", "")).lower()
    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else config.get("model_type")
    precision = _QUANT_PRECISION.get(method) or ("fp16" if "16" in dtype and "b" not in dtype else "bf16")
    tensors = safetensors_tensors(folder)
    weights = None if tensors is None else sum(t[3] for t in tensors)
    name = config.get("_name_or_path")
    base = ModelSpec(
        id=values.text(name, f"{where}: _name_or_path", 512) if isinstance(name, str) and name else folder.name,
        name=folder.name,
        source=str(config_path),
        architecture=str(architecture or "unknown")[:200],
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
        dtype=dtype[:40],
        sliding_window=window,
        sliding_window_layers=swa_layers,
    )
    check_geometry(base, where)
    params = count_parameters(base, qk_norm=config.get("model_type") == "qwen3")
    exact = weights is not None
    if weights is None:
        bytes_per_param = {"fp8": 1, "awq": 0.5, "gptq": 0.5}.get(precision, 2)
        weights = int(params * bytes_per_param)
    artifact = Artifact(
        format="safetensors",
        precision=precision,
        repo=str(folder.resolve()),
        file=None,
        weights_bytes=max(1, weights),
        # vLLM detects the method from quantization_config and picks the best kernel (awq -> awq_marlin);
        # passing --quantization awq would force the slower fp16-only kernel
        quantization="fp8" if method == "fp8" else None,
        source="safetensors headers" if exact else "parameter count x bytes per parameter",
        path=str(folder.resolve()),
        quant_config=quant if len(json.dumps(quant, default=str)) < 65536 else {},
        safetensors=tuple((t[0], t[1], t[2]) for t in tensors or ()),
    )
    return replace(base, parameters=params, artifacts=(artifact,))
