"""The memory model against numbers worked out by hand (arithmetic in each comment) and against the
engines' own log lines (quoted)."""

import pytest

from qwen_deploy import memory
from qwen_deploy.engines.llamacpp import memory as lm
from qwen_deploy.engines.vllm import memory as vm

MiB, GiB = 1024**2, 1024**3

# Qwen3-4B-Instruct-2507: 36 layers, 8 KV heads, head_dim 128, hidden 2560, intermediate 9728, vocab 151936.
QWEN = {"layers": 36, "kv_heads": 8, "head_dim": 128}


@pytest.mark.parametrize(
    ("dtype", "tp", "expected"),
    [
        ("f16", 1, 147_456),  # 2 × 36 × 8 × 128 × 2 B
        ("auto", 1, 147_456),
        ("fp8", 1, 73_728),  # 2 × 36 × 8 × 128 × 1 B
        ("q8_0", 1, 78_336),  # 2 × 36 × (1024 / 32 × 34 B = 1088)
        ("q4_0", 1, 41_472),  # 2 × 36 × (1024 / 32 × 18 B = 576)
        ("f16", 2, 73_728),  # 4 KV heads per rank: 2 × 36 × 4 × 128 × 2
        ("f16", 16, 18_432),  # max(1, 8 // 16) = 1 head per rank: 2 × 36 × 128 × 2
    ],
)
def test_kv_bytes_per_token_qwen3_4b(dtype, tp, expected):
    assert memory.kv_bytes_per_token(**QWEN, dtype=dtype, tp=tp) == expected


def test_kv_bytes_other_models():
    assert memory.kv_bytes_per_token(32, 8, 128, "f16") == 131_072  # Llama-3-8B / Mistral-7B: 2 × 32 × 8 × 128 × 2
    assert memory.kv_bytes_per_token(32, 32, 96, "f16") == 393_216  # Phi-3-mini: 2 × 32 × 32 × 96 × 2


def test_full_context_qwen3_4b_is_36_gib_and_18_in_fp8():
    # design.md: 36 GiB at 262,144 tokens in 16-bit, 18 GiB in FP8.
    assert 262_144 * memory.kv_bytes_per_token(**QWEN, dtype="f16") == 36 * GiB
    assert 262_144 * memory.kv_bytes_per_token(**QWEN, dtype="fp8") == 18 * GiB


def test_quantized_rows_must_be_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        memory.kv_row_bytes(48, "q8_0")


# ----------------------------------------------------------------------------- llama.cpp


def test_llamacpp_pads_context_to_256():
    assert lm.pad_context(5000) == 5120  # engine log: n_ctx 5000 -> 'llama_context: n_ctx = 5120'
    assert lm.pad_context(4096) == 4096
    assert lm.pad_context(1) == 256


def test_llamacpp_kv_matches_engine_log_lines():
    # 'llama_kv_cache: size =  576.00 MiB (  4096 cells,  36 layers,  1/1 seqs), K (f16):  288.00 MiB, V (f16):  288.00 MiB'
    kv, cells = lm.llamacpp_kv_bytes(
        4096, full_layers=36, swa_layers=0, kv_heads=8, head_dim=128, type_k="f16", type_v="f16"
    )
    assert (kv, cells) == (576 * MiB, 4096)
    # q8_0 at 32768: 36 layers × 2 × 1088 B × 32768 cells = 2,566,914,048 B = 2448.00 MiB (engine: 2448.00 MiB)
    kv, _ = lm.llamacpp_kv_bytes(
        32768, full_layers=36, swa_layers=0, kv_heads=8, head_dim=128, type_k="q8_0", type_v="q8_0"
    )
    assert kv == 2_566_914_048 == 2448 * MiB


def test_llamacpp_sliding_window_layers():
    # Gemma 3 270M: 18 layers (every 6th full: 3 full, 15 SWA), 1 KV head of 256, n_swa 512.
    # Full-size SWA cache (llama-cpp-python default): 18 × 8192 × (2 × 256 × 2 B) = 144 MiB (engine: 24 + 120 MiB).
    common = {
        "full_layers": 3,
        "swa_layers": 15,
        "kv_heads": 1,
        "head_dim": 256,
        "type_k": "f16",
        "type_v": "f16",
        "n_swa": 512,
    }
    kv, _ = lm.llamacpp_kv_bytes(8192, **common)
    assert kv == 144 * MiB
    # Trimmed SWA cache: pad(512 × 1 + 512) = 1024 cells: 3 × 8192 × 1024 B + 15 × 1024 × 1024 B
    kv, _ = lm.llamacpp_kv_bytes(8192, **common, swa_full=False)
    assert kv == 3 * 8192 * 1024 + 15 * 1024 * 1024


@pytest.mark.parametrize(
    ("shape", "n_ctx", "flash_attn", "expected_mib"),
    [
        # Qwen3-4B, U = 512, flash attention: logits stage (151936 + 2 × 2560) × 512 × 4 B = 306.75 MiB
        (
            {"n_vocab": 151936, "n_embd": 2560, "n_ff": 9728, "n_head": 32, "n_head_kv": 8, "head_dim": 128},
            4096,
            True,
            306.75,
        ),
        # Synthetic Qwen3 shape with n_embd 64: (151936 + 128) × 2048 B = 297.00 MiB (engine: 297.00 MiB)
        (
            {"n_vocab": 151936, "n_embd": 64, "n_ff": 128, "n_head": 32, "n_head_kv": 8, "head_dim": 128},
            4096,
            True,
            297.0,
        ),
        # Same without flash attention at 32768: f32 mask 32768 × 512 × 4 (64 MiB) + KQ 32768 × 512 × 32 × 4
        # (2048 MiB) + (3 × 64 + 2 × 32 × 128 + 2 × 8 × 128) × 512 × 4 (20.375 MiB) = 2132.375 (engine: 2132.38 MiB)
        (
            {"n_vocab": 151936, "n_embd": 64, "n_ff": 128, "n_head": 32, "n_head_kv": 8, "head_dim": 128},
            32768,
            False,
            2132.375,
        ),
        # SmolLM2-135M (vocab 49152, n_embd 576): (49152 + 1152) × 2048 B = 98.25 MiB (engine: 98.25 MiB)
        (
            {"n_vocab": 49152, "n_embd": 576, "n_ff": 1536, "n_head": 9, "n_head_kv": 3, "head_dim": 64},
            4096,
            True,
            98.25,
        ),
    ],
)
def test_llamacpp_compute_buffer(shape, n_ctx, flash_attn, expected_mib):
    got = lm.llamacpp_compute_bytes(n_ctx, n_ubatch=512, flash_attn=flash_attn, **shape)
    assert got == expected_mib * MiB


def test_llamacpp_output_buffer():
    assert lm.llamacpp_output_bytes(151936) == 607_744  # 'CPU  output buffer size = 0.58 MiB'


def test_llamacpp_memory_adds_up():
    """Qwen3-4B Q4_K_M file at n_ctx 4000 (-> 4096 cells), f16 KV, flash attention, U = 512.

    KV        576 MiB
    compute   reserved 306.75 MiB (logits stage); resident: the MLP stage, one logits row per ubatch:
              mask 4096 × 512 × 2 = 4,194,304 + (3 × 9728 + 4 × 2560) × 512 × 4 = 80,740,352 -> 84,934,656
    output    151936 × 4 = 607,744;  process 160 MiB
    weights   mmap: the file's tensors + the repacked copy; without mmap the repacked tensors count once
    """
    common = dict(
        layers=36,
        swa_layers=0,
        kv_heads=8,
        head_dim=128,
        n_head=32,
        n_embd=2560,
        n_ff=9728,
        n_vocab=151936,
        weights_bytes=2_497_281_120,
        budget_bytes=20 * GiB,
        repacked_bytes=1_000_000,
        repacked_source_bytes=1_000_000,
    )
    est = lm.llamacpp_memory(**common, config=lm.LlamacppConfig(n_ctx=4000))
    assert est.kv_capacity_tokens == 4096
    assert est.kv_cache_bytes == 576 * MiB
    assert est.parts["compute_buffer_bytes"] == int(306.75 * MiB)
    assert est.parts["compute_resident_bytes"] == 84_934_656
    assert est.overhead_bytes == 84_934_656 + 607_744 + 160 * MiB
    assert est.weights_bytes == 2_497_281_120 + 1_000_000
    assert est.total_bytes == est.weights_bytes + 576 * MiB + est.overhead_bytes
    no_mmap = lm.llamacpp_memory(**common, config=lm.LlamacppConfig(n_ctx=4000, use_mmap=False))
    assert no_mmap.weights_bytes == 2_497_281_120
    # the Qwen tokenizer's 151,387 BPE merges: 151,387 × 218 B = 33,002,366 B (31.5 MiB) more
    bpe = lm.llamacpp_memory(**common, tokenizer_merges=151_387, config=lm.LlamacppConfig(n_ctx=4000))
    assert bpe.parts["tokenizer_merges_bytes"] == 33_002_366
    assert bpe.total_bytes - est.total_bytes == 33_002_366


def test_quantized_v_cache_needs_flash_attention():
    with pytest.raises(ValueError, match="flash attention"):
        lm.llamacpp_memory(
            layers=2,
            swa_layers=0,
            kv_heads=2,
            head_dim=64,
            n_head=4,
            n_embd=128,
            n_ff=256,
            n_vocab=1024,
            weights_bytes=1,
            budget_bytes=GiB,
            config=lm.LlamacppConfig(n_ctx=512, type_k="q8_0", type_v="q8_0", flash_attn=False),
        )


def test_max_context_is_the_largest_fitting_multiple_of_256():
    assert lm.llamacpp_max_context(lambda n: n <= 10_000, 262_144) == 9984  # 39 × 256
    assert lm.llamacpp_max_context(lambda n: True, 5000) == 4864  # capped by the limit, 19 × 256
    assert lm.llamacpp_max_context(lambda n: False, 262_144) == 0


def test_repacked_bytes_follow_the_engine_rules():
    tensors = (
        ("token_embd.weight", "Q6_K", 2560, 151936, 319_094_784),
        ("output.weight", "Q6_K", 2560, 151936, 319_094_784),
        ("blk.0.attn_q.weight", "Q4_K", 2560, 4096, 5_898_240),
        ("blk.0.attn_v.weight", "Q4_0", 2560, 1028, 1_480_320),  # ne1 % 8 != 0: not repacked
        ("blk.0.ffn_down.weight", "Q8_0", 9728, 2560, 26_460_160),
        ("blk.0.attn_norm.weight", "F32", 2560, 1, 10_240),
    )
    # AVX2: Q4_0/Q4_K with ne1 % 8 == 0 -> only attn_q; the repacked copy has the same size
    assert lm.llamacpp_repack(tensors, ("avx2",)) == (5_898_240, 5_898_240)
    # arm64 with dotprod: Q4_K, Q6_K (ne1 % 8), Q4_0 and Q8_0 (ne1 % 4: 1028 qualifies); token_embd stays on
    # the plain buffer because an output.weight exists
    arm = 319_094_784 + 5_898_240 + 1_480_320 + 26_460_160
    assert lm.llamacpp_repack(tensors, ("neon", "asimddp")) == (arm, arm)
    # No SIMD flags: nothing
    assert lm.llamacpp_repack(tensors, ()) == (0, 0)
    # AMX build: Q6_K row = 10 blocks × 210 B; Q4_K row = 10 × 144 + 10 × 4; Q8_0 row = 304 × 34 + 304 × 4
    source, amx = lm.llamacpp_repack(tensors, ("amx_int8", "avx2"), amx=True)
    assert amx == 151936 * 2100 + 4096 * 1480 + 2560 * 304 * 38  # attn_v: ne1 % 32 != 0 and not AVX2-repackable
    assert source == 319_094_784 + 5_898_240 + 26_460_160


# ----------------------------------------------------------------------------- vLLM (the budget's terms: tests/test_calibration_vllm.py)


def test_vllm_concurrency_formula():
    # blocks / ceil(M / 16): 5480 blocks, 32768-token requests need 2048 blocks -> 2.68x
    assert vm.vllm_concurrency(87_680, 32_768) == pytest.approx(5480 / 2048)
    assert vm.vllm_concurrency(87_680, 0) == 0.0
