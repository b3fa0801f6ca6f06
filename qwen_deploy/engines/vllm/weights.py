"""What vLLM's 'Model loading took X GiB' counts, per checkpoint format: the tensors that stay on one GPU after
loading (quantized layouts: which tensors stay 16-bit, packing, scales), the rotary cache, and the PyTorch
caching allocator's rounding. From the geometry, or exactly from the checkpoint's safetensors headers.

Pure, stdlib only. Sources per rule in the comments (vLLM wheels 0.10-0.33.0, read 2026-12).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from qwen_deploy.engines.vllm.rules import Geometry, MiB, NotModelled, _v


def _param_counts(g: Geometry, tp: int) -> dict[str, int]:
    """Elements per TP rank, by role: 'linear' (quantizable matrices), 'embed', 'lm_head', 'small' (norms,
    biases: stay 16-bit). Vocab padded to a multiple of 64 then split (layers/vocab_parallel_embedding.py
    DEFAULT_VOCAB_PADDING_SIZE = 64, pad_vocab_size); K/V heads replicated when kv_heads < tp."""
    q = g.heads * g.head_dim // tp
    kv_heads = max(1, g.kv_heads // tp)
    kv = kv_heads * g.head_dim
    inter = g.intermediate // tp
    per_layer_linear = g.hidden * q + 2 * g.hidden * kv + q * g.hidden + 3 * g.hidden * inter
    per_layer_small = 2 * g.hidden  # input_layernorm + post_attention_layernorm (replicated)
    if g.qkv_bias:
        per_layer_small += q + 2 * kv
    if g.qk_norm:
        per_layer_small += 2 * g.head_dim
    vocab_pad = -(-g.vocab // (64 * tp)) * 64 * tp
    embed = vocab_pad // tp * g.hidden
    return {
        "linear": g.layers * per_layer_linear,
        "small": g.layers * per_layer_small + g.hidden,  # + final norm
        "embed": embed,
        "lm_head": 0 if g.tied_embeddings else embed,
    }


def _linear_shapes(g: Geometry, tp: int) -> list[tuple[int, int]]:
    """(in, out) of the fused linears vLLM builds per layer on one rank: qkv, o, gate_up, down."""
    q = g.heads * g.head_dim // tp
    kv = max(1, g.kv_heads // tp) * g.head_dim
    inter = g.intermediate // tp
    return [(g.hidden, q + 2 * kv), (q, g.hidden), (g.hidden, 2 * inter), (inter, g.hidden)]


def rope_cache_bytes(g: Geometry, dtype_bytes: int = 2) -> int:
    """cos_sin_cache: [max_position, rotary_dim] in the model dtype, one per model (get_rope caches
    instances); model_executor/layers/rotary_embedding/base.py @0.10.1.1..@0.33.0 RotaryEmbedding.__init__
    (cache.to(dtype); register_buffer). Counted by 'Model loading took' (allocated on the GPU in __init__)."""
    return g.max_position * (g.rotary_dim or g.head_dim) * dtype_bytes


def loaded_weights_bytes(
    version: str | tuple[int, int, int],
    geometry: Geometry,
    checkpoint_format: str,
    tp: int = 1,
    *,
    group_size: int = 128,
    zero_points: bool = False,
    desc_act: bool = False,
    dtype_bytes: int = 2,
    cpu_offload_bytes: int = 0,
) -> int:
    """What 'Model loading took X GiB' reports on one rank: torch.cuda.memory_allocated after minus before
    load_model (v1/worker/gpu_model_runner.py load_model with DeviceMemoryProfiler; platforms/cuda.py
    get_current_memory_usage = max_memory_allocated after reset_peak_memory_stats), i.e. the tensors that
    stay resident after process_weights_after_loading, plus the rotary cache.

    checkpoint_format:
      'bf16' / 'fp16'        every tensor 2 bytes.
      'fp8_tensor'           linear weights 1 B + one fp32 scale per fused shard (per-tensor W8A8).
      'fp8_channel'          linear weights 1 B + fp32 scale per output channel (compressed-tensors
                             FP8-dynamic; compressed_tensors_w8a8_fp8.py keeps weight_scale [out, 1]).
      'fp8_block'            linear weights 1 B + fp32 scale per 128 x 128 block (weight_block_size).
      'fp8_online'           --quantization fp8 on a 16-bit checkpoint: Fp8LinearMethod quantizes each
                             linear to fp8 with a per-tensor scale after loading (fp8.py
                             process_weights_after_loading); embedding and lm_head stay 16-bit.
      'awq' / 'gptq' / 'w4a16'  4-bit packed (0.5 B / weight, int32 qweight), 16-bit scales per group,
                             int32 zero points (AWQ always, GPTQ qzeros always stored, compressed-tensors
                             w4a16 only if asymmetric), GPTQ g_idx (+ Marlin sort indices with desc_act).
                             Embedding, lm_head, norms and biases stay 16-bit.
      'nvfp4'                4-bit (0.5 B) + fp8 scale per 16 weights + fp32 global scales.
    Online fp8 and the 16-bit tensors in quantized checkpoints are exactly the 'phantom KV' the old
    config.json-only rule missed.
    """
    _v(version)
    L = geometry.layers
    fmt = checkpoint_format.lower()
    per_layer: list[int] = []  # tensor sizes in bytes, one layer, one rank
    for i, o in _linear_shapes(geometry, tp):
        n = i * o
        if fmt in ("bf16", "fp16", "auto", "bfloat16", "float16"):
            per_layer.append(n * dtype_bytes)
        elif fmt in ("fp8_tensor", "fp8", "fp8_online"):
            per_layer += [n, 4]  # fp8 weight + per-tensor fp32 scale (fused shards requantized to one)
        elif fmt in ("fp8_channel", "int8_channel"):
            per_layer += [n, o * 4]  # weight_scale [out, 1] fp32 (compressed-tensors W8A8 fp8 or int8)
        elif fmt == "fp8_block":
            per_layer += [n, -(-i // 128) * -(-o // 128) * 4]
        elif fmt in ("awq", "gptq", "w4a16", "gptq_marlin", "awq_marlin", "compressed-tensors-w4a16"):
            groups = -(-i // group_size) if group_size > 0 else 1
            per_layer += [n // 2, groups * o * 2]  # int32-packed 4-bit weight (Marlin repack keeps the size), scales
            if fmt.startswith("awq") or fmt.startswith("gptq") or zero_points:
                per_layer.append(groups * (o // 8) * 4)  # int32 packed zero points
            if fmt.startswith("gptq"):
                per_layer.append(i * 4 * (2 if desc_act else 1))  # g_idx (+ Marlin sort indices)
        elif fmt == "nvfp4":
            per_layer += [n // 2, n // 16, 4, 4]
        else:
            raise ValueError(f"unknown checkpoint format {checkpoint_format!r}")
    c = _param_counts(geometry, tp)
    q = geometry.heads * geometry.head_dim // tp
    kv = max(1, geometry.kv_heads // tp) * geometry.head_dim
    small = [geometry.hidden, geometry.hidden]  # input_layernorm, post_attention_layernorm
    if geometry.qkv_bias:
        small.append(q + 2 * kv)  # fused qkv bias
    if geometry.qk_norm:
        small += [geometry.head_dim, geometry.head_dim]
    per_layer += [n * dtype_bytes for n in small]
    total = L * sum(cuda_alloc_bytes(b) for b in per_layer)
    total += cuda_alloc_bytes(c["embed"] * dtype_bytes)
    if c["lm_head"]:
        total += cuda_alloc_bytes(c["lm_head"] * dtype_bytes)
    total += cuda_alloc_bytes(geometry.hidden * dtype_bytes) + cuda_alloc_bytes(rope_cache_bytes(geometry, dtype_bytes))
    return max(0, total - cpu_offload_bytes)


def checkpoint_format_from_config(quantization_config: Mapping[str, object] | None) -> tuple[str, dict[str, object]]:
    """Map config.json's quantization_config to (checkpoint_format, loaded_weights_bytes kwargs); a malformed
    config (a group size that is not a number, ...) is NotModelled, with the reason."""
    try:
        return _checkpoint_format(quantization_config)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        if isinstance(exc, NotModelled):
            raise
        raise NotModelled(f"its quantization_config is malformed ({type(exc).__name__}: {exc})") from None


def _checkpoint_format(quantization_config: Mapping[str, object] | None) -> tuple[str, dict[str, object]]:
    """Map config.json's quantization_config to (checkpoint_format, loaded_weights_bytes kwargs).

    quant_method 'awq' (group_size, zero_point), 'gptq' (group_size, desc_act), 'fp8' (weight_block_size ->
    block, else per-tensor), 'compressed-tensors' (config_groups[*].weights: num_bits/type/strategy/
    group_size/symmetric; 8-bit float -> fp8_<strategy>, 8-bit int -> int8_channel, 4-bit int -> w4a16 with
    zero points when asymmetric), 'modelopt' / 'modelopt_fp4' with quant_algo NVFP4 -> nvfp4. None -> bf16.
    Names as in vllm/model_executor/layers/quantization/* get_config_filenames/from_config.
    """
    if not quantization_config:
        return "bf16", {}
    qc = dict(quantization_config)
    method = str(qc.get("quant_method", "")).lower()
    if method == "awq":
        return "awq", {"group_size": int(qc.get("group_size", 128)), "zero_points": bool(qc.get("zero_point", True))}
    if method == "gptq":
        return "gptq", {"group_size": int(qc.get("group_size", 128)), "desc_act": bool(qc.get("desc_act", False))}
    if method == "fp8":
        return ("fp8_block" if qc.get("weight_block_size") else "fp8_tensor"), {}
    if method in ("modelopt", "modelopt_fp4") or "nvfp4" in str(qc.get("quant_algo", "")).lower():
        return "nvfp4", {}
    if method == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        for grp in groups.values() if isinstance(groups, dict) else []:
            w = (grp or {}).get("weights") or {}  # type: ignore[union-attr]
            bits, typ = int(w.get("num_bits", 16)), str(w.get("type", "int"))
            strategy = str(w.get("strategy", "tensor"))
            if bits == 8 and typ == "float":
                return {"channel": "fp8_channel", "block": "fp8_block"}.get(strategy, "fp8_tensor"), {}
            if bits == 8:
                return "int8_channel", {}
            if bits == 4 and typ == "float":
                return "nvfp4", {}
            if bits == 4:
                gs = w.get("group_size")
                return "w4a16", {"group_size": int(gs) if gs else 0, "zero_points": not bool(w.get("symmetric", True))}
        raise NotModelled(f"compressed-tensors scheme not recognised: {groups!r}")
    raise NotModelled(f"quantization method {method!r} not modelled")


# PyTorch CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp): requests are rounded to 512 B; a request of
# >= kMinLargeAlloc (10 MiB) gets its own segment rounded up to kRoundLarge (2 MiB), and the block is split only if
# the remainder is > kSmallSize (1 MiB) - otherwise the whole segment is charged to the tensor and shows up in
# torch.cuda.memory_allocated, hence in 'Model loading took'. Check: Qwen2.5-7B tensors leave 0.5-1 MiB tails
# (qkv 31.5 MiB, gate_up 259 MiB, down 129.5 MiB, embed/lm_head 1039.5 MiB): +57 MiB at TP 1, +21.5 MiB at TP 2,
# +0.25 MiB at TP 4 against logged gaps of 0.057, 0.020 and 0.00 (+-0.005) GiB (v1-012/013/019); Qwen2.5-3B +36.5
# MiB vs 0.030 GiB (v1-044); Llama-3.1-8B, Qwen3-8B and Qwen3-14B tensors are whole multiples of 2 MiB (gap 0).
def cuda_alloc_bytes(size: int) -> int:
    size = max(512, -(-size // 512) * 512)
    if size < 10 * MiB:
        return size
    segment = -(-size // (2 * MiB)) * 2 * MiB
    return segment if segment - size <= MiB else size


_DTYPE_BYTES = {
    "BF16": 2,
    "F16": 2,
    "F32": 4,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I8": 1,
    "U8": 1,
    "I32": 4,
    "I64": 8,
    "I16": 2,
}


def loaded_weights_from_safetensors(
    version: str | tuple[int, int, int],
    tensors: Mapping[str, tuple[str, tuple[int, ...]]],
    geometry: Geometry,
    tp: int = 1,
    *,
    online_fp8: bool = False,
    dtype_bytes: int = 2,
) -> int:
    """Same quantity from the checkpoint's safetensors headers (name -> (dtype, shape)): exact tensor bytes,
    split across TP ranks (vocab-parallel embedding/lm_head padded to 64 × tp, norms replicated, K/V
    projections replicated when kv_heads < tp), plus the rotary cache. With online fp8 the 2-D linear weights
    become 1 byte per element. Tied checkpoints store the embedding once."""
    _v(version)
    kv_rep = geometry.kv_heads < tp
    fused: dict[str, int] = {}
    for name, (dtype, shape) in tensors.items():
        n = 1
        for s_ in shape:
            n *= s_
        b = n * _DTYPE_BYTES.get(dtype.upper(), 2)
        lname = name.lower()
        if "embed_tokens" in lname or "lm_head" in lname:
            if shape and shape[0] >= geometry.vocab - 64:
                rows = -(-geometry.vocab // (64 * tp)) * 64
                b = b // shape[0] * rows
            else:
                b = -(-b // tp)
        elif any(k in lname for k in ("norm", "layernorm")):
            pass  # replicated
        elif any(k in lname for k in ("k_proj", "v_proj")) and kv_rep:
            b = b * max(1, geometry.kv_heads // tp) // geometry.kv_heads
        else:
            b = -(-b // tp)
        if online_fp8 and len(shape) == 2 and "embed" not in lname and "lm_head" not in lname:
            b //= 2 if dtype.upper() in ("BF16", "F16") else 1
        # vLLM fuses q/k/v into qkv_proj and gate/up into gate_up_proj (one parameter each)
        key = re.sub(r"\b[qkv]_proj\b", "qkv_proj", lname)
        key = re.sub(r"\b(gate|up)_proj\b", "gate_up_proj", key)
        fused[key] = fused.get(key, 0) + b
    total = sum(cuda_alloc_bytes(b) for b in fused.values())
    return total + cuda_alloc_bytes(rope_cache_bytes(geometry, dtype_bytes))
