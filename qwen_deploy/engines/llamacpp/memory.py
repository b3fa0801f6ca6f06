"""llama.cpp's memory, as the engine allocates it: KV cells, model buffers (mmap'd or repacked), compute and
output buffers, the process, the tokenizer's merges. Shared by every engine built on llama.cpp.

Pure. Sources read (2026-11): llama.cpp as vendored in llama-cpp-python 0.3.36. Log figures: our own runs of
the server (bench/accuracy_llamacpp.py) and shared/calibration/public_engine_logs.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwen_deploy.memory import MemoryEstimate, kv_row_bytes
from qwen_deploy.units import MiB

# ----------------------------------------------------------------------------- llama.cpp

# llama.cpp pads n_ctx up to a multiple of 256 (observed: n_ctx 5000 -> 'n_ctx = 5120' with
# llama-cpp-python 0.3.36; llama-context.cpp pads n_ctx to the KV cache's padding).
LLAMACPP_CTX_PAD = 256

# Resident memory of `python -m llama_cpp.server` before any model buffer: the interpreter, uvicorn,
# fastapi, pydantic and libllama/libggml (measured here: bench/accuracy_llamacpp.py prints it).
LLAMACPP_PROCESS_BYTES = 160 * MiB

# A BPE tokenizer's merges live in llama.cpp's vocabulary as a map of string pairs to ranks: 218 B each
# (measured: two GGUFs that differ only in 2 vs 151,387 merges, the count of every Qwen2/Qwen3 GGUF, peak
# 795.6 vs 827.1 MiB RSS under the same load: 31.5 MiB / 151,385). SentencePiece vocabularies have none.
LLAMACPP_BYTES_PER_MERGE = 218


def pad_context(n_ctx: int, pad: int = LLAMACPP_CTX_PAD) -> int:
    return -(-n_ctx // pad) * pad


def llamacpp_kv_bytes(
    n_ctx: int,
    *,
    full_layers: int,
    swa_layers: int,
    kv_heads: int,
    head_dim: int,
    type_k: str,
    type_v: str,
    n_swa: int | None = None,
    swa_full: bool = True,
    n_seq: int = 1,
    n_ubatch: int = 512,
    value_head_dim: int | None = None,
) -> tuple[int, int]:
    """(KV bytes, padded n_ctx) llama.cpp allocates: per layer n_embd_k_gqa × cells × row bytes of K, same for V.

    Sliding-window layers get every cell when swa_full (llama-cpp-python's Llama() creates the iSWA cache
    'using full-size SWA cache'), else pad(n_swa × n_seq + n_ubatch) cells (llama-kv-cache-iswa.cpp).
    """
    cells = pad_context(n_ctx)
    v_dim = head_dim if value_head_dim is None else value_head_dim
    per_cell = kv_row_bytes(kv_heads * head_dim, type_k) + kv_row_bytes(kv_heads * v_dim, type_v)
    swa_cells = cells
    if swa_layers and not swa_full and n_swa:
        swa_cells = min(cells, pad_context(n_swa * n_seq + n_ubatch))
    return per_cell * (full_layers * cells + swa_layers * swa_cells), cells


def llamacpp_compute_bytes(
    n_ctx: int,
    *,
    n_ubatch: int,
    n_vocab: int,
    n_embd: int,
    n_ff: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    flash_attn: bool,
) -> int:
    """The CPU compute buffer ('sched_reserve: CPU compute buffer size'): the peak of the worst-case graph
    (n_tokens = n_outputs = U = n_ubatch, n_kv = the padded n_ctx; llama_context::sched_reserve).

    ggml's allocator reuses memory, so the buffer is the largest of three stages (E n_embd, H heads of
    D, F n_ff, V vocab; 4-byte floats):
      mask       n_kv·U·2 with flash attention (f16), n_kv·U·4 without (f32); live through every layer
      attention  mask + (no flash attention: the f32 KQ scores n_kv·U·H·4) + (3E + 2·H·D + 2·Hkv·D)·U·4
      MLP        mask + (3F + 4E)·U·4
      output     (V + 2E)·U·4   (logits for U outputs; this build always adds the out_ids get_rows copy)
    Fitted to the engine's own reservation over 11 real model shapes, n_ctx 512-32768, U 256-1024, flash
    attention on and off: 76 of 80 within 0.05 MiB, the rest up to 9% above (allocator fragmentation).
    """
    u = n_ubatch
    mask = n_ctx * u * (2 if flash_attn else 4)
    kq = 0 if flash_attn else n_ctx * u * n_head * 4
    attention = mask + kq + (3 * n_embd + 2 * n_head * head_dim + 2 * n_head_kv * head_dim) * u * 4
    mlp = mask + (3 * n_ff + 4 * n_embd) * u * 4
    output = (n_vocab + 2 * n_embd) * u * 4
    return max(attention, mlp, output)


def llamacpp_work_bytes(n_ctx: int, *, n_ubatch: int, n_head: int, flash_attn: bool) -> int:
    """The CPU backend's unlogged work buffer (ggml_graph_plan): without flash attention the f16 copy of
    the KQ scores for kqv = mul_mat(v, kq), n_kv·U·H·2; with it only small per-thread tiles."""
    return 0 if flash_attn else n_ctx * n_ubatch * n_head * 2


def llamacpp_output_bytes(n_vocab: int, n_seq: int = 1) -> int:
    """'CPU output buffer size': logits of one output per sequence, f32 (logits_all off)."""
    return 4 * n_vocab * n_seq


@dataclass(frozen=True)
class LlamacppConfig:
    n_ctx: int
    type_k: str = "f16"
    type_v: str = "f16"
    n_ubatch: int = 512
    flash_attn: bool = True
    n_seq: int = 1
    swa_full: bool = True
    use_mmap: bool = True


def llamacpp_memory(
    *,
    layers: int,
    swa_layers: int,
    kv_heads: int,
    head_dim: int,
    n_head: int,
    n_embd: int,
    n_ff: int,
    n_vocab: int,
    weights_bytes: int,
    budget_bytes: int,
    config: LlamacppConfig,
    repacked_bytes: int = 0,
    repacked_source_bytes: int = 0,
    n_swa: int | None = None,
    value_head_dim: int | None = None,
    tokenizer_merges: int = 0,
) -> MemoryEstimate:
    """RAM the llama-cpp-python server takes at n_ctx: model buffers, KV, compute/output buffers, process
    (and the tokenizer's BPE merges).

    Model buffers: with mmap the whole tensor data stays mapped and resident once read ('CPU_Mapped'), and
    CPUs with repack kernels add a repacked copy of some matrices ('CPU_REPACK'); without mmap the file is
    read into anonymous buffers and repacked tensors exist once ('CPU' + 'CPU_REPACK'). The planner turns
    mmap off whenever something is repacked, so weights are never held twice.

    The compute buffer is reserved for U outputs, but with logits_all off each ubatch asks for one, so the
    logits rows are never touched: the total counts the resident part (compute_resident_bytes).
    """
    if config.type_v != "f16" and not config.flash_attn:
        raise ValueError("a quantized V cache needs flash attention in llama.cpp")
    kv, cells = llamacpp_kv_bytes(
        config.n_ctx,
        full_layers=layers - swa_layers,
        swa_layers=swa_layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        type_k=config.type_k,
        type_v=config.type_v,
        n_swa=n_swa,
        swa_full=config.swa_full,
        n_seq=config.n_seq,
        n_ubatch=config.n_ubatch,
        value_head_dim=value_head_dim,
    )
    shape = {"n_ubatch": config.n_ubatch, "n_embd": n_embd, "n_ff": n_ff, "n_head": n_head, "n_head_kv": kv_heads}
    compute = llamacpp_compute_bytes(cells, n_vocab=n_vocab, head_dim=head_dim, flash_attn=config.flash_attn, **shape)
    # one output row per ubatch: the logits stage shrinks from (V + 2E)·U·4 to (V + 2E·U)·4
    resident = min(
        compute,
        max(
            llamacpp_compute_bytes(cells, n_vocab=0, head_dim=head_dim, flash_attn=config.flash_attn, **shape),
            4 * (n_vocab + 2 * n_embd * config.n_ubatch),
        ),
    )
    work = llamacpp_work_bytes(cells, n_ubatch=config.n_ubatch, n_head=n_head, flash_attn=config.flash_attn)
    output = llamacpp_output_bytes(n_vocab, config.n_seq)
    model = weights_bytes + repacked_bytes - (0 if config.use_mmap else repacked_source_bytes)
    tokenizer = tokenizer_merges * LLAMACPP_BYTES_PER_MERGE
    overhead = resident + work + output + LLAMACPP_PROCESS_BYTES + tokenizer
    return MemoryEstimate(
        budget_bytes=budget_bytes,
        weights_bytes=model,
        kv_bytes_per_token=kv // cells,
        kv_cache_bytes=kv,
        overhead_bytes=overhead,
        total_bytes=model + kv + overhead,
        kv_capacity_tokens=cells,
        counts={"n_ctx_padded": cells},
        parts={
            "repacked_weights_bytes": repacked_bytes,
            "compute_buffer_bytes": compute,
            "compute_resident_bytes": resident,
            "work_buffer_bytes": work,
            "output_buffer_bytes": output,
            "process_bytes": LLAMACPP_PROCESS_BYTES,
            "tokenizer_merges_bytes": tokenizer,
        },
    )


def llamacpp_max_context(fits, limit: int, minimum: int = LLAMACPP_CTX_PAD) -> int:
    """Largest multiple of 256 in [minimum, limit] for which fits(n_ctx) holds (memory grows with n_ctx),
    or 0 when even `minimum` does not fit."""
    lo, hi = -(-minimum // LLAMACPP_CTX_PAD), limit // LLAMACPP_CTX_PAD
    if hi < lo or not fits(lo * LLAMACPP_CTX_PAD):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * LLAMACPP_CTX_PAD):
            lo = mid
        else:
            hi = mid - 1
    return lo * LLAMACPP_CTX_PAD


# ----------------------------------------------------------------------------- llama.cpp repacked weights

# (bytes per block, elements per block) of the ggml types -- ggml/src/ggml-common.h block_* structs.
GGML_BLOCKS: dict[str, tuple[int, int]] = {
    "F32": (4, 1),
    "F16": (2, 1),
    "BF16": (2, 1),
    "Q4_0": (18, 32),
    "Q4_1": (20, 32),
    "Q5_0": (22, 32),
    "Q5_1": (24, 32),
    "Q8_0": (34, 32),
    "Q2_K": (84, 256),
    "Q3_K": (110, 256),
    "Q4_K": (144, 256),
    "Q5_K": (176, 256),
    "Q6_K": (210, 256),
    "IQ4_NL": (18, 32),
    "IQ4_XS": (136, 256),
}

# AMX (ggml-cpu/amx/common.h qtype_has_amx_kernels, amx.cpp supports_op): these types, plus F16 copied
# unpacked; K (ne0) a multiple of 32 (legacy quants) / 256 (K-quants) / 16 (F16), N (ne1) of 32.
_AMX_ALIGN = {"Q4_0": 32, "Q4_1": 32, "Q8_0": 32, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ4_XS": 256, "F16": 16}


def _amx_bytes(type_name: str, ne0: int, ne1: int) -> int:
    """ggml_backend_amx_get_alloc_size: N rows of get_row_size<type>(K) (VNNI packing adds per-block
    compensation for q8_0, 4 B per block for q4_K/q5_K, 2 B for iq4_xs); F16 is copied as is."""
    block_bytes, block = GGML_BLOCKS[type_name]
    if type_name == "F16":
        return ne0 * ne1 * 2
    kb = ne0 // block
    row = kb * block_bytes
    if type_name in ("Q8_0", "Q4_K", "Q5_K"):
        row += kb * 4
    if type_name == "IQ4_XS":
        row += kb * 2
    return ne1 * row


def _repack_supported(type_name: str, ne1: int, flags: frozenset[str]) -> bool:
    """ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type (x86 and arm64 branches)."""
    avx2 = "avx2" in flags
    avx512 = "avx512f" in flags
    neon = "neon" in flags or "asimd" in flags
    dotprod = neon and ("asimddp" in flags or "dotprod" in flags)
    i8mm = neon and "i8mm" in flags
    if type_name == "Q4_0":
        return (avx2 and ne1 % 8 == 0) or ((i8mm or dotprod) and ne1 % 4 == 0)
    if type_name == "Q4_K":
        return (avx2 or i8mm or dotprod) and ne1 % 8 == 0
    if type_name == "Q2_K":
        return avx512 and ne1 % 8 == 0
    if type_name in ("Q5_K", "Q6_K"):
        return (i8mm or dotprod) and ne1 % 8 == 0
    if type_name == "IQ4_NL":
        return (avx2 and ne1 % 8 == 0) or (dotprod and ne1 % 4 == 0)
    if type_name == "Q8_0":
        return (i8mm or dotprod) and ne1 % 4 == 0
    return False


def llamacpp_repack(
    tensors: tuple[tuple[str, str, int, int, int], ...], cpu_flags: tuple[str, ...], amx: bool = False
) -> tuple[int, int]:
    """(bytes of the tensors llama.cpp repacks, bytes of the 'AMX' / 'CPU_REPACK' buffers holding the copies).

    Every matrix a MUL_MAT reads goes to the first extra buffer type that takes it (AMX, then REPACK):
    the 2-D weights, and token_embd too when there is no separate output.weight (tied embeddings). Checked
    against the engine's own 'AMX model buffer size' lines (tests/test_engine_llamacpp.py).

    AMX is a compile-time choice (a native build on a Sapphire Rapids or newer Xeon); that build segfaults
    on quantized weights (ggml-org/llama.cpp#20824), so qwen-deploy installs the portable AVX2 build and
    plans without AMX unless told otherwise.
    """
    flags = frozenset(cpu_flags)
    names = {t[0] for t in tensors}
    amx = amx and "amx_int8" in flags
    source = total = 0
    for name, type_name, ne0, ne1, nbytes in tensors:
        if ne1 <= 1 or type_name not in GGML_BLOCKS:
            continue
        if name == "token_embd.weight" and "output.weight" in names:
            continue  # only read by GET_ROWS, which stays on the plain CPU buffer
        if amx and type_name in _AMX_ALIGN and ne0 % _AMX_ALIGN[type_name] == 0 and ne1 % 32 == 0:
            source, total = source + nbytes, total + _amx_bytes(type_name, ne0, ne1)
        elif _repack_supported(type_name, ne1, flags):
            source, total = source + nbytes, total + nbytes
    return source, total


# Main ggml type of each GGUF precision, for estimating tensors when only a profile (no file) is known.
# Q*_K_M files mix in some Q6_K (attn_v, ffn_down on some layers); the estimate uses the main type.
GGUF_MAIN_TYPE = {
    "q4_k_m": "Q4_K",
    "q5_k_m": "Q5_K",
    "q6_k": "Q6_K",
    "q8_0": "Q8_0",
    "q4_0": "Q4_0",
    "f16": "F16",
    "bf16": "BF16",
}


def estimate_gguf_tensors(
    *,
    layers: int,
    hidden: int,
    intermediate: int,
    attention_heads: int,
    kv_heads: int,
    head_dim: int,
    vocab: int,
    tied: bool,
    precision: str,
    file_bytes: int,
) -> tuple[tuple[str, str, int, int, int], ...]:
    """The matrices of a dense GQA decoder in `precision`, scaled so they add up to the file's size."""
    type_name = GGUF_MAIN_TYPE.get(precision, "Q4_K")
    q, kv = attention_heads * head_dim, kv_heads * head_dim
    shapes = [("token_embd.weight", hidden, vocab)]
    if not tied:
        shapes.append(("output.weight", hidden, vocab))
    for i in range(layers):
        p = f"blk.{i}."
        shapes += [
            (p + "attn_q.weight", hidden, q),
            (p + "attn_k.weight", hidden, kv),
            (p + "attn_v.weight", hidden, kv),
            (p + "attn_output.weight", q, hidden),
            (p + "ffn_gate.weight", hidden, intermediate),
            (p + "ffn_up.weight", hidden, intermediate),
            (p + "ffn_down.weight", intermediate, hidden),
        ]
    block_bytes, block = GGML_BLOCKS[type_name]
    raw = [(n, ne0, ne1, ne0 * ne1 * block_bytes // block) for n, ne0, ne1 in shapes]
    scale = file_bytes / max(1, sum(r[3] for r in raw))
    return tuple((n, type_name, ne0, ne1, int(b * scale)) for n, ne0, ne1, b in raw)
