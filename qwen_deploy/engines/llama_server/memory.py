"""RAM of llama.cpp's own `llama-server` (llama.cpp b11312 = 0c1e57098, the commit llama-cpp-python 0.3.36
vendors) on the CPU: pure arithmetic, no I/O. Reuses qwen_deploy.memory's llama.cpp functions where the
engine is the same code (KV rows, padding, model buffers, output buffer, work buffer, BPE merges) and
states what llama-server does differently (docs/sources-llama-server.md has the measurements and source citations):

* Slots and KV (server.cpp llama_server, llama-context.cpp llama_context ctor, llama-kv-cache.cpp):
  --ctx-size is the TOTAL across slots. n_ctx = pad256(ctx). Unified KV (one stream): n_ctx cells shared by
  all slots; each slot may grow to n_ctx (n_ctx_slot = n_ctx). Not unified: n_parallel streams of
  n_ctx_seq = pad256(n_ctx // n_parallel) cells each (the log's "cells" is per stream), n_ctx_slot =
  n_ctx_seq. --parallel given → kv_unified off unless --kv-unified; --parallel omitted → 4 slots, unified.
* Compute buffer (llama_context::sched_reserve): reserved for n_outputs = min(n_batch, n_parallel ·
  (1 + n_draft)) logits rows, not n_ubatch (tools/server/server-context.cpp server_output_limits), so the
  logits stage that dominates llama-cpp-python's buffer (297 MiB for a 152K vocabulary) is n_parallel rows.
  The context-dependent terms use the cells of ONE stream (a non-unified cache divides them by n_parallel).
  With flash attention the attention stage holds no f32 copy of the ubatch's K/V (measured: 2·Hkv·D·U·4
  less than memory.py's stage).
* Output buffer: 4 · n_vocab · n_parallel (memory.llamacpp_output_bytes with n_seq = n_parallel).
* Prompt cache (--cache-ram, default 8192 MiB): host copies of finished/idle slots' KV, up to the limit;
  counted in full (a plan must pass --cache-ram explicitly; -1 = unlimited is refused).
* Process: a C++ binary, no Python: server_process_bytes() (16 MiB + 450 B per vocabulary token + 12 B per
  token per slot: 85 MiB for a 152K vocabulary and 4 slots) instead of memory.py's 160 MiB.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwen_deploy.engines.llamacpp.memory import (
    LLAMACPP_BYTES_PER_MERGE,
    llamacpp_kv_bytes,
    llamacpp_output_bytes,
    llamacpp_work_bytes,
    pad_context,
)
from qwen_deploy.memory import MemoryEstimate

MiB = 1024 * 1024

# Resident memory of llama-server besides every buffer the formula names: measured VmHWM minus the logged
# buffers (model, KV, compute, output) and the merges, over 46 runs (docs/sources-llama-server.md, "process"), FA on:
#   vocabulary 49,152 (SmolLM2): 21-32 MiB;  151,936 (synthetic Qwen3 shape): 56-79 MiB
# i.e. a fixed part (binary and library text, heap, HTTP threads: 5-10 MiB; the static build 5 MiB less, no
# libssl) + the vocabulary in llama.cpp's structures (GGUF arrays, id_to_token, token_to_id, piece cache:
# ~450 B a token for the synthetic vocabulary's long filler names, less for real ones) + each slot's sampler
# (candidate arrays of n_vocab entries). Upper envelope with a 6 MiB margin:
LLAMA_SERVER_PROCESS_FIXED_BYTES = 16 * MiB
LLAMA_SERVER_BYTES_PER_VOCAB_TOKEN = 450
LLAMA_SERVER_BYTES_PER_VOCAB_TOKEN_PER_SLOT = 12
# Merges: measured 178.7 B each here (25.8 MiB for 151,385, synthetic GGUFs that differ only in them);
# memory.py's 218 B (llama-cpp-python) is kept: one pair of runs, ±3 MiB noise, and it errs high.
LLAMA_SERVER_BYTES_PER_MERGE = LLAMACPP_BYTES_PER_MERGE


def server_process_bytes(n_vocab: int, n_parallel: int) -> int:
    """llama-server's own resident memory outside the buffers (replaces memory.py's 160 MiB Python process)."""
    return (
        LLAMA_SERVER_PROCESS_FIXED_BYTES
        + LLAMA_SERVER_BYTES_PER_VOCAB_TOKEN * n_vocab
        + LLAMA_SERVER_BYTES_PER_VOCAB_TOKEN_PER_SLOT * n_vocab * n_parallel
    )


# common/common.h: cache_ram_mib = 8192 (the server's default prompt cache limit)
LLAMA_SERVER_DEFAULT_CACHE_RAM_MIB = 8192


@dataclass(frozen=True)
class ServerConfig:
    n_ctx: int  # --ctx-size: the total across all slots
    n_parallel: int = 1  # --parallel
    kv_unified: bool = False  # --kv-unified (the server's default when --parallel is given: off)
    type_k: str = "f16"
    type_v: str = "f16"
    n_batch: int = 512  # --batch-size (the server's own default is 2048; the plan passes it)
    n_ubatch: int = 512
    flash_attn: bool = True
    swa_full: bool = False  # llama-server's default (llama-cpp-python's Llama() uses the full-size SWA cache)
    use_mmap: bool = True  # --load-mode auto/mmap (true) or none (false)
    cache_ram_mib: int = 0  # --cache-ram; 0 disables the prompt cache
    n_draft: int = 0  # speculative draft tokens per slot (none planned)


@dataclass(frozen=True)
class KvLayout:
    streams: int  # KV streams: 1 when unified, n_parallel otherwise
    cells_per_stream: int  # the log's "N cells"
    n_ctx: int  # llama_context n_ctx after padding/rounding (streams × cells_per_stream)
    n_ctx_slot: int  # the most one slot (one request) can hold
    shared: bool  # whether the slots share the cells (unified)

    def describe(self, n_parallel: int) -> str:
        if n_parallel == 1:
            return f"1 slot of {self.n_ctx_slot} tokens"
        if self.shared:
            return (
                f"{n_parallel} slots share one cache of {self.n_ctx} tokens: any request may grow to "
                f"{self.n_ctx_slot} tokens, all requests together hold at most {self.n_ctx}"
            )
        return f"{n_parallel} slots of {self.n_ctx_slot} tokens each ({self.n_ctx} tokens in all)"


def kv_layout(n_ctx: int, n_parallel: int, kv_unified: bool, n_ctx_train: int | None = None) -> KvLayout:
    """llama_context ctor (llama-context.cpp): n_ctx = pad256; unified: n_ctx_seq = n_ctx; otherwise
    n_ctx_seq = pad256(n_ctx / n_seq_max) and n_ctx = n_ctx_seq · n_seq_max (which can round *up*)."""
    if n_parallel < 1:
        raise ValueError("n_parallel must be >= 1")
    total = pad_context(n_ctx)
    if kv_unified or n_parallel == 1:
        slot = total
        layout = KvLayout(1, total, total, slot, n_parallel > 1)
    else:
        seq = pad_context(total // n_parallel)
        if seq == 0:
            raise ValueError("n_ctx_seq == 0")
        layout = KvLayout(n_parallel, seq, seq * n_parallel, seq, False)
    if n_ctx_train:  # server-context.cpp: a slot is capped at the training context (with a warning)
        layout = KvLayout(layout.streams, layout.cells_per_stream, layout.n_ctx,
                          min(layout.n_ctx_slot, n_ctx_train), layout.shared)  # fmt: skip
    return layout


def server_n_outputs(n_batch: int, n_parallel: int, n_draft: int = 0) -> int:
    """server-context.cpp server_output_limits → common_speculative_get_output_limits."""
    return max(1, min(n_batch, n_parallel * (1 + max(0, n_draft))))


def server_compute_bytes(
    n_kv: int,
    *,
    n_ubatch: int,
    n_outputs: int,
    n_vocab: int,
    n_embd: int,
    n_ff: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    flash_attn: bool,
) -> int:
    """'sched_reserve: CPU compute buffer size' of llama-server: the largest of the worst-case graph's stages
    (memory.llamacpp_compute_bytes' stages, U = n_ubatch tokens, n_kv = the cells of one KV stream):
      mask       n_kv·U·2 (FA, f16) or n_kv·U·4
      attention  FA:    mask + (3E + 2·H·D)·U·4
                 no FA: mask + n_kv·U·H·4 (KQ) + (3E + 2·H·D + 2·Hkv·D)·U·4
      MLP        mask + (3F + 3E + max(E, H·D))·U·4
      output     (V·O + 2E·U)·4    O = n_outputs rows of logits
    """
    u = n_ubatch
    mask = n_kv * u * (2 if flash_attn else 4)
    if flash_attn:
        attention = mask + (3 * n_embd + 2 * n_head * head_dim) * u * 4
    else:
        rows = 3 * n_embd + 2 * n_head * head_dim + 2 * n_head_kv * head_dim
        attention = mask + n_kv * u * n_head * 4 + rows * u * 4
    # memory.py's (3F + 4E): one of the E-sized tensors is the attention output, H·D wide when H·D > E
    # (Qwen3-4B: 32 × 128 = 4096 vs 2560; measured +3.00 MiB at U 512 on the full-size shape)
    mlp = mask + (3 * n_ff + 3 * n_embd + max(n_embd, n_head * head_dim)) * u * 4
    output = (n_vocab * n_outputs + 2 * n_embd * u) * 4
    return max(attention, mlp, output)


def llama_server_memory(
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
    config: ServerConfig,
    repacked_bytes: int = 0,
    repacked_source_bytes: int = 0,
    n_swa: int | None = None,
    value_head_dim: int | None = None,
    tokenizer_merges: int = 0,
    n_ctx_train: int | None = None,
) -> MemoryEstimate:
    """RAM llama-server takes: model buffers + KV + compute + output + work + prompt cache + process + merges.

    Model buffers are memory.py's (same llama.cpp: CPU_Mapped/CPU + CPU_REPACK). Peak RSS stays below the
    total: the KV cache is resident from the start (zeroed), the compute/work buffers and the prompt cache
    only as far as requests reach.
    """
    if config.type_v != "f16" and not config.flash_attn:
        raise ValueError("a quantized V cache needs flash attention in llama.cpp")
    if config.cache_ram_mib < 0:
        raise ValueError("--cache-ram -1 (no limit) cannot be planned: pass a size in MiB, or 0")
    lay = kv_layout(config.n_ctx, config.n_parallel, config.kv_unified, n_ctx_train)
    n_batch = min(lay.n_ctx, config.n_batch)  # llama_context: causal attention caps n_batch at n_ctx
    n_ubatch = min(n_batch, config.n_ubatch)
    per_stream_kv, _ = llamacpp_kv_bytes(
        lay.cells_per_stream,
        full_layers=layers - swa_layers,
        swa_layers=swa_layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        type_k=config.type_k,
        type_v=config.type_v,
        n_swa=n_swa,
        swa_full=config.swa_full,
        # llama-kv-cache-iswa.cpp: SWA cells = pad(min(size_base, n_swa·(unified ? n_seq_max : 1) + n_ubatch))
        n_seq=config.n_parallel if lay.streams == 1 else 1,
        n_ubatch=n_ubatch,
        value_head_dim=value_head_dim,
    )
    kv = per_stream_kv * lay.streams
    n_tokens = min(lay.n_ctx, n_ubatch)
    outputs = server_n_outputs(n_batch, config.n_parallel, config.n_draft)
    compute = server_compute_bytes(
        lay.cells_per_stream,
        n_ubatch=n_tokens,
        n_outputs=outputs,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=kv_heads,
        head_dim=head_dim,
        flash_attn=config.flash_attn,
    )
    work = llamacpp_work_bytes(lay.cells_per_stream, n_ubatch=n_tokens, n_head=n_head, flash_attn=config.flash_attn)
    output = llamacpp_output_bytes(n_vocab, config.n_parallel)
    prompt_cache = config.cache_ram_mib * MiB
    tokenizer = tokenizer_merges * LLAMA_SERVER_BYTES_PER_MERGE
    process = server_process_bytes(n_vocab, config.n_parallel)
    model = weights_bytes + repacked_bytes - (0 if config.use_mmap else repacked_source_bytes)
    overhead = compute + work + output + prompt_cache + process + tokenizer
    return MemoryEstimate(
        budget_bytes=budget_bytes,
        weights_bytes=model,
        kv_bytes_per_token=kv // lay.n_ctx,
        kv_cache_bytes=kv,
        overhead_bytes=overhead,
        total_bytes=model + kv + overhead,
        kv_capacity_tokens=lay.n_ctx,
        parts={
            "repacked_weights_bytes": repacked_bytes,
            "compute_buffer_bytes": compute,
            "compute_resident_bytes": compute,
            "work_buffer_bytes": work,
            "output_buffer_bytes": output,
            "prompt_cache_bytes": prompt_cache,
            "process_bytes": process,
            "tokenizer_merges_bytes": tokenizer,
        },
        counts={
            "n_ctx_padded": lay.n_ctx,
            "n_parallel": config.n_parallel,
            "kv_streams": lay.streams,
            "kv_cells_per_stream": lay.cells_per_stream,
            "n_ctx_slot": lay.n_ctx_slot,
            "n_outputs_max": outputs,
        },
    )
