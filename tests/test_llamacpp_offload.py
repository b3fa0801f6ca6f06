"""llama.cpp with GPU offload (engines/llamacpp/offload.py): hand-worked arithmetic for Qwen3-4B, and one test
per public start-up log (tests/data/llamacpp_gpu_public_logs.yaml, bench/llamacpp_gpu_records.py).

Qwen3-4B: 36 layers, n_embd E = 2560, n_ff F = 9728, 32 query heads, 8 KV heads, head_dim 128, vocab
V = 151936, tied embeddings, Q4_K_M (the standard llama-quantize mix). Settings as qwen-deploy launches
llama-cpp-python: n_ctx 4096, f16 K/V, flash attention on, n_batch = n_ubatch = 512, mmap on.
Budgets: 6 GB card with 5932 MiB free (the GTX 1060 record's 'using device CUDA0 ... 5932 MiB free'),
8 GB card with 7068 MiB free (the RTX 4070 Laptop record, 'llama.cpp saw 7,068 MiB free'), 16 GB Mac
with the classic working set 2/3 x 16 GiB = 10922.67 MiB.
"""

from __future__ import annotations

import pytest
import yaml

from bench import llamacpp_gpu_records as evaluate
from qwen_deploy.engines.llamacpp import offload as r
from qwen_deploy.hardware.catalog import metal_working_set_bytes

MiB = r.MiB
Q = evaluate.QWEN3_4B
TENSORS = r.gguf_tensors(Q, "q4_k_m")
BASE = dict(
    geometry=Q, tensors=TENSORS, n_ctx=4096, type_k="f16", type_v="f16", flash_attn=True, n_ubatch=512, n_batch=512
)
FREE_6GB = 5932 * MiB
FREE_8GB = 7068 * MiB
MAC_16GB = metal_working_set_bytes(16 * r.GiB)

# ---- the pieces, by hand (bytes)
# Q4_K: 144 B per 256 weights; Q6_K: 210 B per 256; F32 norms.
TOK_EMBD = 151936 * 2560 * 210 // 256  # Q6_K (tied -> output treatment)        = 319,065,600
ATTN_Q = 2560 * 4096 * 144 // 256  # 5,898,240 (attn_output the same)
ATTN_KV_Q4 = 2560 * 1024 * 144 // 256  # 1,474,560
ATTN_V_Q6 = 2560 * 1024 * 210 // 256  # 2,150,400
FFN_Q4 = 2560 * 9728 * 144 // 256  # 14,008,320 (gate, up; down in Q4_K layers)
FFN_DOWN_Q6 = 9728 * 2560 * 210 // 256  # 20,428,800
NORMS = (2560 + 2560 + 128 + 128) * 4  # attn_norm, ffn_norm, q_norm, k_norm   = 21,504
LAYER_Q4 = 2 * ATTN_Q + 2 * ATTN_KV_Q4 + 3 * FFN_Q4 + NORMS  # = 56,792,064
LAYER_Q6_EXTRA = (ATTN_V_Q6 - ATTN_KV_Q4) + (FFN_DOWN_Q6 - FFN_Q4)  # = 7,096,320
# use_more_bits(i, 36): i < 4, i >= 31, or (i - 4) % 3 == 2 -> 18 layers with Q6_K attn_v / ffn_down
Q6_LAYERS = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31, 32, 33, 34, 35]
OUTPUT = 2560 * 4 + TOK_EMBD  # output_norm + the duplicated tied matrix = 319,075,840
KV_LAYER = 2 * (1024 * 2) * 4096  # K and V rows of 8 x 128 f16, 4096 cells = 16 MiB
LOGITS_STAGE = (151936 + 2560) * 512 * 4  # (V + E) x n_outputs x 4 = 316,407,808 = 301.75 MiB
MASK = 4096 * 512 * 2  # f16 KQ mask (flash attention)
HOST_COMPUTE = MASK + 2 * 2560 * 512 * 4 + 512 * (4 + 4 + 8 + 8) + 512 * 4  # = 14,694,400 = 14.01 MiB
OUT_BUF = 151936 * 4  # 0.58 MiB


def layers_bytes(ids):
    ids = list(ids)
    return len(ids) * LAYER_Q4 + sum(1 for i in ids if i in Q6_LAYERS) * LAYER_Q6_EXTRA


def test_hand_pieces_match_the_tensor_list():
    assert LAYER_Q4 == 56_792_064 and LAYER_Q6_EXTRA == 7_096_320
    assert sum(t[4] for t in TENSORS) == TOK_EMBD + layers_bytes(range(36)) + 2560 * 4
    # the whole CUDA0 buffer at full offload, as four public logs print it: 2375.91 MiB
    assert round((layers_bytes(range(36)) + OUTPUT) / MiB, 2) == 2375.91
    assert round(TOK_EMBD / MiB, 2) == 304.28


def test_layer_assignment_output_first():
    # i_gpu_start = max(n_layer + 1 - ngl, 0); index 36 is the output layer (PR #18148)
    assert r.gpu_layer_range(36, 37) == (0, 37)
    assert r.gpu_layer_range(36, 10) == (27, 10)  # layers 27..35 + output
    assert r.gpu_layer_range(36, 1) == (36, 1)  # only the output layer
    assert r.gpu_layer_range(36, 0) == (37, 0)
    devs = r.layer_devices(36, 10, ["CUDA0"])
    assert devs[:27] == ["CPU"] * 27 and devs[27:] == ["CUDA0"] * 10
    assert r.gpu_layers_label(36, 37) == "37/37" and r.gpu_layers_label(36, 99) == "37/37"
    assert r.gpu_layers_label(36, 10) == "10/37" and r.gpu_layers_label(36, -1) == "37/37"


def test_cuda_ngl37_full_offload_6gb_and_8gb():
    b = r.device_breakdown(n_gpu_layers=37, **BASE)
    gpu, cpu = b["CUDA0"], b["CPU"]
    # CUDA0: 36 layers + output matrix; all 36 KV layers; the logits stage; the CUDA context allowance
    assert gpu["model_bytes"] == layers_bytes(range(36)) + OUTPUT == 2_491_323_904  # 2375.91 MiB
    assert gpu["kv_bytes"] == 36 * KV_LAYER == 576 * MiB
    # compute = max(attention 4 + 26.0 MiB, mlp 4 + (3F + 4E) x 512 x 4 = 81.0 MiB, logits 301.75 MiB)
    assert gpu["compute_bytes"] == LOGITS_STAGE
    assert gpu["total_bytes"] == 2_491_323_904 + 576 * MiB + LOGITS_STAGE + r.CUDA_OVERHEAD_BYTES
    assert round(gpu["total_bytes"] / MiB, 1) == 3765.7  # 2375.91 + 576 + 301.75 + 512
    # host: token_embd (CPU_Mapped) + pinned CUDA_Host compute (mask + 2 E x U inputs) + pinned output
    assert cpu["model_bytes"] == TOK_EMBD
    assert cpu["compute_bytes"] == HOST_COMPUTE and cpu["output_bytes"] == OUT_BUF
    assert cpu["pinned_bytes"] == HOST_COMPUTE + OUT_BUF and cpu["kv_bytes"] == 0
    assert b["_buffers"]["CPU_Mapped model"] == TOK_EMBD and "CPU_REPACK model" not in b["_buffers"]
    # fits both cards: 3765.7 MiB <= 5932 and <= 7068
    assert r.fits(r.device_breakdown(n_gpu_layers=37, budgets={"CUDA0": FREE_6GB}, **BASE))
    assert r.fits(r.device_breakdown(n_gpu_layers=37, budgets={"CUDA0": FREE_8GB}, **BASE))


def test_cuda_ngl10_partial():
    b = r.device_breakdown(n_gpu_layers=10, **BASE)
    gpu, cpu = b["CUDA0"], b["CPU"]
    # GPU: layers 27..35 (7 of them Q6 layers: 27, 30..35) + output
    assert gpu["model_bytes"] == layers_bytes(range(27, 36)) + OUTPUT == 879_878_656  # 839.12 MiB
    assert cpu["model_bytes"] == TOK_EMBD + layers_bytes(range(27)) == 1_930_510_848  # 1841.08 MiB
    assert gpu["kv_bytes"] == 9 * KV_LAYER == 144 * MiB and cpu["kv_bytes"] == 27 * KV_LAYER == 432 * MiB
    # op offload: the CPU layers' 512-token batches run on CUDA0 with their weights copied in, one matrix
    # at a time: mlp stage 4 MiB mask + 77 MiB + the largest ffn matrix (a Q6_K ffn_down, 9728 x 2560 x
    # 210/256 B = 20,428,800) = 100.5 MiB; the logits stage (301.75 MiB) is still the peak.
    assert gpu["compute_bytes"] == LOGITS_STAGE
    assert gpu["layers"] == 10
    # 839.12 + 144 + 301.75 + 512 = 1796.9 MiB on the GPU
    assert round(gpu["total_bytes"] / MiB, 1) == 1796.9
    assert b["_buffers"]["CUDA_Host output"] == OUT_BUF  # output layer on CUDA0 -> pinned host output
    assert r.fits(r.device_breakdown(n_gpu_layers=10, budgets={"CUDA0": FREE_6GB}, **BASE))


def test_cuda_ngl0_still_reserves_cuda0():
    b = r.device_breakdown(n_gpu_layers=0, **BASE)
    gpu, cpu = b["CUDA0"], b["CPU"]
    assert gpu["model_bytes"] == 0 and gpu["kv_bytes"] == 0 and gpu["layers"] == 0
    # the output matmul (512 rows >= 32) is offloaded: its Q6_K matrix is copied into the compute buffer
    # next to the logits: 301.75 + 304.28 = 606.03 MiB
    assert gpu["compute_bytes"] == LOGITS_STAGE + TOK_EMBD
    assert round(gpu["compute_bytes"] / MiB, 2) == 606.03
    # everything else is host memory; with mmap the tied duplicate maps the same bytes (no extra copy)
    assert cpu["model_bytes"] == TOK_EMBD + layers_bytes(range(36)) + 2560 * 4
    assert cpu["kv_bytes"] == 576 * MiB
    assert b["_buffers"]["CPU output"] == OUT_BUF  # output layer on the CPU -> plain CPU output buffer
    assert b["_buffers"]["CUDA_Host compute"] == HOST_COMPUTE
    # without op offload (op_offload=False) or batches below 32 tokens there is no CUDA0 buffer at all
    assert "CUDA0" not in r.device_breakdown(n_gpu_layers=0, op_offload=False, **BASE)


def test_one_output_a_sequence_keeps_the_output_matmul_on_the_cpu():
    """llama-server and llama-cli reserve one output row a sequence (n_outputs_max = 1): the output
    matmul's batch is 1 < 32, so at -ngl 0 ggml-cuda's offload_op refuses it and no output matrix is
    copied up; the CPU layers' matmuls (512 rows) still run on CUDA0, one weight matrix at a time.
    By hand, Qwen3-4B Q4_K_M at 4096 tokens, flash attention:
      mlp stage  mask 4,194,304 + idxs 512 x 20 B + (3 x 9728 + 4 x 2560) x 512 x 4 = 84,944,896 (81.01 MiB)
      + the largest CPU-layer matrix, a Q6_K ffn_down 9728 x 2560 x 210/256 = 20,428,800
      = 105,373,696 B = 100.49 MiB (the logits stage of 1 row is 0.59 MiB)."""
    one = dict(BASE, n_outputs_max=1)
    mlp = MASK + 512 * 20 + (3 * 9728 + 4 * 2560) * 512 * 4
    assert mlp == 84_944_896
    ngl0 = r.device_breakdown(n_gpu_layers=0, **one)["CUDA0"]
    assert ngl0["compute_bytes"] == mlp + FFN_DOWN_Q6 == 105_373_696
    # the same at -ngl 10 (layers 0..26 on the CPU include Q6_K ffn_down layers)
    assert r.device_breakdown(n_gpu_layers=10, **one)["CUDA0"]["compute_bytes"] == mlp + FFN_DOWN_Q6
    # full offload: no copies
    assert r.device_breakdown(n_gpu_layers=37, **one)["CUDA0"]["compute_bytes"] == mlp
    # the logits stay on the host below 32 rows: at 1 row they fit in the inputs' space (HOST_COMPUTE);
    # at 31 rows (V + E) x 31 x 4 = 19,157,504 B is more than the inputs, and the host buffer grows to it
    thirty_one = r.device_breakdown(n_gpu_layers=0, **dict(BASE, n_outputs_max=31))["_buffers"]
    assert r.device_breakdown(n_gpu_layers=0, **one)["_buffers"]["CUDA_Host compute"] == HOST_COMPUTE - 512 * 4 + 4
    assert thirty_one["CUDA_Host compute"] == (151936 + 2560) * 31 * 4 == 19_157_504
    assert thirty_one["CUDA0 compute"] == mlp + FFN_DOWN_Q6
    # with 512 output rows (llama-cpp-python) the output matmul is offloaded and its matrix copied
    assert r.device_breakdown(n_gpu_layers=0, **BASE)["CUDA0"]["compute_bytes"] == LOGITS_STAGE + TOK_EMBD


def test_no_kv_offload_keeps_kv_on_host():
    b = r.device_breakdown(n_gpu_layers=37, offload_kqv=False, **BASE)
    assert b["CUDA0"]["kv_bytes"] == 0 and b["CPU"]["kv_bytes"] == 576 * MiB
    # each layer's K and V views (2 x 8 MiB) are copied up for the attention: attention stage grows
    assert b["CUDA0"]["compute_bytes"] == LOGITS_STAGE  # still below the logits stage here


def test_mmap_off_uses_pinned_host_buffer():
    b = r.device_breakdown(n_gpu_layers=10, use_mmap=False, **BASE)
    assert b["_buffers"]["CUDA_Host model"] == TOK_EMBD + layers_bytes(range(27))
    assert b["CPU"]["pinned_bytes"] >= TOK_EMBD


def test_metal_16gb_mac_default_all_layers():
    assert 16 * r.GiB * 2 // 3 == MAC_16GB  # 10922.67 MiB = 11453.25 MB as ggml-metal prints it
    b = r.device_breakdown(n_gpu_layers=-1, backend="metal", budgets={"MTL0": MAC_16GB}, **BASE)
    mtl, cpu = b["MTL0"], b["CPU"]
    assert mtl["model_bytes"] == layers_bytes(range(36)) + OUTPUT  # MTL0_Mapped 2375.91 MiB
    assert b["_buffers"]["MTL0_Mapped model"] == mtl["model_bytes"]
    assert mtl["kv_bytes"] == 576 * MiB and mtl["compute_bytes"] == LOGITS_STAGE
    assert mtl["overhead_bytes"] == 0  # the working set counts only Metal buffers (unaccounted 0)
    assert round(mtl["total_bytes"] / MiB, 2) == 3253.66  # 2375.91 + 576 + 301.75 <= 10922.67
    assert r.fits(b)
    # Metal has no host buffer type: the host compute/output buffers are plain 'CPU'
    assert b["_buffers"]["CPU compute"] == HOST_COMPUTE and b["_buffers"]["CPU output"] == OUT_BUF
    assert cpu["model_bytes"] == TOK_EMBD


@pytest.mark.parametrize("ngl", [0, 10, 37])
def test_metal_partial_16gb(ngl):
    b = r.device_breakdown(n_gpu_layers=ngl, backend="metal", budgets={"MTL0": MAC_16GB}, **BASE)
    assert r.fits(b)
    if ngl == 0:
        # Metal only offloads MUL_MAT from host buffers, and CPU-layer weights the Apple CPU can repack live
        # in CPU_REPACK (not a host buffer): the CPU runs the layers, its buffer follows the CPU formula
        # (source-derived; no public Metal partial-offload log was found)
        assert "MTL0" not in b
        assert b["CPU"]["compute_bytes"] == (151936 + 2 * 2560) * 512 * 4  # logits stage, 306.75 MiB


def test_no_false_fit_long_context():
    # 40960 cells x 144 KiB = 5760 MiB of KV: with 2375.91 MiB of weights it fits neither card at -ngl 37
    long = dict(BASE, n_ctx=40960)
    assert not r.fits(r.device_breakdown(n_gpu_layers=37, budgets={"CUDA0": FREE_6GB}, **long))
    assert not r.fits(r.device_breakdown(n_gpu_layers=37, budgets={"CUDA0": FREE_8GB}, **long))
    k6 = r.max_gpu_layers(budgets={"CUDA0": FREE_6GB}, **long)
    assert 0 <= k6 < 37
    assert r.fits(r.device_breakdown(n_gpu_layers=k6, budgets={"CUDA0": FREE_6GB}, **long))
    assert not r.fits(r.device_breakdown(n_gpu_layers=k6 + 1, budgets={"CUDA0": FREE_6GB}, **long))


def test_quantized_v_needs_flash_attention():
    with pytest.raises(ValueError):
        r.device_breakdown(n_gpu_layers=37, **dict(BASE, type_v="q8_0", flash_attn=False))


def test_kv_q8_0_rows():
    b = r.device_breakdown(n_gpu_layers=37, **dict(BASE, type_k="q8_0", type_v="q8_0"))
    assert b["CUDA0"]["kv_bytes"] == 36 * 2 * (1024 // 32 * 34) * 4096  # 306 MiB


def test_metal_working_set_defaults():
    gib = r.GiB
    assert metal_working_set_bytes(8 * gib) // MiB == 5461
    assert abs(metal_working_set_bytes(32 * gib) / 1e6 - 22906.50) < 1.05  # whole MiB (Apple's value is finer)
    assert abs(metal_working_set_bytes(36 * gib) / 1e6 - 28991.03) < 0.01
    assert abs(metal_working_set_bytes(64 * gib) / 1e6 - 51539.61) < 0.01
    assert metal_working_set_bytes(32 * gib, wired_limit_mb=26000) == 26000 * MiB
    assert metal_working_set_bytes(36 * gib, macos="26") // MiB == 28753  # floor(36864 x 0.78)


def test_two_gpus_split_and_output_on_the_last():
    b = r.device_breakdown(n_gpu_layers=37, n_gpus=2, **BASE)
    devs = r.layer_devices(36, 37, ["CUDA0", "CUDA1"])
    assert devs[36] == "CUDA1" and devs[0] == "CUDA0"
    assert b["CUDA0"]["kv_bytes"] + b["CUDA1"]["kv_bytes"] == 576 * MiB
    # pipeline parallelism (2 GPUs, all layers): 3 extra copies of the split inputs on top of the stage:
    # mask 4 MiB + n_embd x 512 x 4 = 5 MiB + index inputs 10 KiB per copy
    assert b["CUDA1"]["compute_bytes"] == LOGITS_STAGE + 3 * (MASK + 2560 * 512 * 4 + 512 * 20)
    assert b["CPU"]["compute_bytes"] == 4 * HOST_COMPUTE
    # no pipeline at partial offload: one copy
    p = r.device_breakdown(n_gpu_layers=30, n_gpus=2, **BASE)
    assert p["CPU"]["compute_bytes"] == HOST_COMPUTE


# ---------------------------------------------------------------------------- public records

RECORDS = yaml.safe_load(evaluate.LOGS.read_text(encoding="utf-8"))["records"]
LAUNCHES = [x for x in RECORDS if x["kind"] == "launch"]
KNOWN_MISSES = {("cuda-qwen3-4b-q4km-llama-server-8192", "CUDA_Host compute")}  # see NOTES.md


@pytest.mark.parametrize("rec", LAUNCHES, ids=[x["id"] for x in LAUNCHES])
def test_public_record(rec):
    rows = evaluate.evaluate_launch(rec)
    for row in rows:
        if row["ok"] is None:
            continue
        if (rec["id"], row["buffer"]) in KNOWN_MISSES:
            continue
        assert row["ok"], row


@pytest.mark.parametrize("rec", LAUNCHES, ids=[x["id"] for x in LAUNCHES])
def test_public_record_no_false_fit(rec):
    """On every GPU whose model, KV and compute buffers were all logged, the predicted device total
    (buffers + the CUDA overhead allowance) is at least what the log shows the engine allocated."""
    pred = evaluate.predict(rec)
    for dev in ("CUDA0", "MTL0"):
        logged = {k: v for k, v in rec["buffers"].items() if k.split(" ")[0].replace("_Mapped", "") == dev}
        kinds = {k.rsplit(" ", 1)[1] for k in logged}
        if {"model", "KV", "compute"} <= kinds and dev in pred and rec.get("ftype"):
            assert pred[dev]["total_bytes"] >= sum(logged.values()) * MiB


@pytest.mark.parametrize(
    "rec",
    [x for x in RECORDS if x["kind"] == "working_set"],
    ids=[x["id"] for x in RECORDS if x["kind"] == "working_set"],
)
def test_public_working_set(rec):
    assert evaluate.evaluate_working_set(rec)["ok"]


def test_gpu_check_reads_a_public_cuda_log_per_device():
    """scripts/gpu-check's reader (bench/gpu_check.py) on the first record's quoted lines (a GTX 1060, Qwen3-4B
    Q4_K_M, -ngl 37, 8192 tokens): CUDA0 holds 2375.91 MiB of model, 1152.00 of KV, 554.00 of compute; the
    host holds CPU_Mapped 304.28 (model), CUDA_Host 21.01 (compute) and 0.58 (output)."""
    from bench.gpu_check import MiB as mib
    from bench.gpu_check import logged_devices

    record = yaml.safe_load(evaluate.LOGS.read_text())["records"][0]
    devices = logged_devices("\n".join(record["quoted_lines"]))
    assert set(devices) == {"CUDA0", "CPU"}
    assert devices["CUDA0"] == {
        "model_bytes": round(2375.91 * mib), "kv_bytes": round(1152.00 * mib), "compute_bytes": round(554.00 * mib),
        "other_bytes": 0,
    }  # fmt: skip
    assert devices["CPU"] == {
        "model_bytes": round(304.28 * mib), "kv_bytes": 0, "compute_bytes": round(21.01 * mib),
        "other_bytes": round(0.58 * mib),
    }  # fmt: skip
