"""vLLM's available KV memory: the rules (qwen_deploy/engines/vllm/rules.py, weights.py) held against the
public V1 start-up logs (tests/data/vllm_v1_public_logs.yaml, one test per launch, the record id in the test
id), plus hand-worked arithmetic, release defaults and checkpoint formats.

Tolerances (stated per row in the test id):
  * launches with logged available KV >= 1 GiB: |predicted - logged| / logged <= 5 % (the issue's
    over-prediction bound; the current worst is 4.2 %, an under-prediction);
  * logged available KV < 1 GiB: -0.20 GiB <= predicted - logged <= +0.08 GiB (two identical launches,
    v1-035 and v1-036, printed 0.49 and 0.41 GiB: run-to-run jitter ~0.08 GiB bounds the over-prediction; the
    under-prediction allowance is the non-torch constant's known excess on the RTX 3090, ~0.08-0.1 GiB);
  * failed launches: the verdict must not be 'fits'.
Weights are predicted from the checkpoint format (bench/vllm_records.py mode (a)).
"""

from __future__ import annotations

import math

import pytest
import yaml

from bench import vllm_records as evaluate
from qwen_deploy.engines.vllm import rules, weights
from qwen_deploy.engines.vllm.rules import GiB, MiB

RECORDS = yaml.safe_load(evaluate.LOGS.read_text())


def _usable():
    out = []
    for rec in RECORDS:
        try:
            v = rules.parse_version(str(rec["engine_version"]))
            if v[:2] < rules.RULES_MIN:
                continue
        except ValueError:
            continue
        launch = evaluate.classify(rec)
        if isinstance(launch, str) or launch.category != "main":
            continue
        out.append(launch)
    return out


USABLE = _usable()


def _tid(launch) -> str:
    rec = launch.rec
    kv = rec.get("available_kv_gib")
    if rec["kind"] != "startup_ok":
        tol = "must-not-fit"
    elif kv is not None and abs(kv) < 1:
        tol = "abs-0.20..+0.08GiB"
    else:
        tol = "rel<=5%"
    return f"{rec['id']}-v{rec['engine_version'].split()[0]}-{launch.gpu_key.replace(' ', '_')}-tp{rec['tp']}-{tol}"


@pytest.mark.parametrize("launch", USABLE, ids=[_tid(x) for x in USABLE])
def test_record(launch) -> None:
    rec = launch.rec
    p = evaluate.predict(launch, "a")
    kv_log, _ = evaluate.logged_kv(rec, p["kv_bytes_per_token"])
    pred = p["available_kv"] / GiB
    if rec["kind"] != "startup_ok":
        assert p["verdict"] != "fits", f"failed launch {rec['id']} predicted to fit ({p['reason']})"
    if kv_log is None:
        return
    if abs(kv_log) < 1:
        assert -0.20 <= pred - kv_log <= 0.08
    else:
        assert abs(pred - kv_log) / kv_log <= 0.05
    assert pred <= kv_log * 1.05 + 0.08  # never over-predict by more than 5 % (or the jitter on tiny pools)


def test_shared_set_targets(capsys) -> None:
    """The issue's acceptance targets on mode (a): median <= 3 %, worst <= 8 %, no false fit."""
    res = evaluate.run("a", RECORDS)
    capsys.readouterr()
    assert res["median"] <= 3.0
    assert res["worst"] <= 8.0
    assert res["false_fits"] == []


# ----------------------------------------------------------------------------- versions and defaults


def test_parse_version() -> None:
    assert rules.parse_version("0.19.1") == (0, 19, 1)
    assert rules.parse_version("0.10.1.1") == (0, 10, 1)
    assert rules.parse_version("0.16.0 (container tag of the sweep)") == (0, 16, 0)
    assert rules.parse_version("v0.33.0+cu130") == (0, 33, 0)


def test_not_modelled() -> None:
    with pytest.raises(rules.NotModelled):
        rules.defaults("0.9.2", 80 * GiB, "NVIDIA H100 80GB HBM3")
    with pytest.raises(rules.NotModelled):
        rules.defaults("0.34.0", 80 * GiB, "NVIDIA H100 80GB HBM3")


@pytest.mark.parametrize(
    "version,nvml_gib,name,tokens,seqs,util",
    [
        ("0.19.0", 79.65, "NVIDIA H100 80GB HBM3", 8192, 1024, 0.9),
        ("0.19.1", 40.0, "NVIDIA A100-SXM4-40GB", 2048, 256, 0.9),
        ("0.19.1", 80.0, "NVIDIA A100-SXM4-80GB", 2048, 256, 0.9),  # A100 excluded by name
        ("0.17.1", 24.0, "NVIDIA GeForce RTX 3090", 2048, 256, 0.9),
        ("0.20.0", 79.65, "NVIDIA H100 80GB HBM3", 8192, 1024, 0.92),
        ("0.27.1", 140.4, "NVIDIA H200", 8192, 1024, 0.92),
        ("0.28.0", 178.0, "NVIDIA B200", 16384, 1024, 0.92),  # >= 160 GiB tier from 0.28
    ],
)
def test_batch_defaults(version, nvml_gib, name, tokens, seqs, util) -> None:
    d = rules.defaults(version, int(nvml_gib * GiB), name)
    assert (d["max_num_batched_tokens"], d["max_num_seqs"], d["gpu_memory_utilization"]) == (tokens, seqs, util)


def test_cudagraph_defaults() -> None:
    # 0.10.1: [1,2,4] + 8..512 step 8 = 67 PIECEWISE sizes (the 0.10.1.1 logs show '66/67'), no FULL.
    d = rules.defaults("0.10.1.1", 80 * GiB, "NVIDIA A100-SXM4-80GB")
    assert len(d["cudagraph_capture_sizes"]) == 67 and d["full_cudagraph_sizes"] == []
    # 0.19: 256 seqs -> 'PIECEWISE=51 (largest=512), FULL=35 (largest=256)' (v1-002's log line).
    d = rules.defaults("0.19.1", 40 * GiB, "NVIDIA A100-SXM4-40GB")
    assert len(d["cudagraph_capture_sizes"]) == 51 and max(d["cudagraph_capture_sizes"]) == 512
    assert len(d["full_cudagraph_sizes"]) == 35 and max(d["full_cudagraph_sizes"]) == 256
    assert d["cudagraph_estimated"] and not d["cudagraph_profiled_before_kv"]
    assert rules.defaults("0.20.0", 40 * GiB, "NVIDIA A100-SXM4-40GB")["cudagraph_profiled_before_kv"]
    assert not rules.defaults("0.17.1", 24 * GiB, "NVIDIA GeForce RTX 3090")["cudagraph_estimated"]


def test_sampler_and_runner_by_version() -> None:
    h100 = "NVIDIA H100 80GB HBM3"
    got = {
        v: rules.defaults(v, 80 * GiB, h100, architecture="Qwen3ForCausalLM")["sampler"]
        for v in ("0.10.1.1", "0.11.2", "0.16.0", "0.17.0", "0.20.0", "0.21.0", "0.23.0", "0.27.1", "0.33.0")
    }
    assert got == {
        "0.10.1.1": "flashinfer",
        "0.11.2": "sort",
        "0.16.0": "sort",
        "0.17.0": "triton",
        "0.20.0": "triton",
        "0.21.0": "flashinfer",
        "0.23.0": "mrv2",
        "0.27.1": "flashinfer",
        "0.33.0": "mrv2_warmup",
    }
    # quantized checkpoints stay on the V1 runner in 0.23 (v1-005..v1-007 post)
    assert (
        rules.defaults(
            "0.23.0", 16 * GiB, "NVIDIA GeForce RTX 5070 Ti", architecture="Qwen3ForCausalLM", quantized=True
        )["model_runner"]
        == "v1"
    )


# ----------------------------------------------------------------------------- weights


def test_weights_qwen3_4b_bf16_by_hand() -> None:
    g = evaluate.GEOMETRY["Qwen/Qwen3-4B"]
    # Tensors on one rank, as vLLM fuses them, charged as PyTorch's caching allocator does (rules.cuda_alloc_bytes:
    # >= 10 MiB requests get a 2 MiB-rounded segment, the tail is charged when it is <= 1 MiB):
    #   qkv_proj 2560 x 6144 x 2 = 30 MiB (exact)         -> 31,457,280
    #   o_proj   4096 x 2560 x 2 = 20 MiB (exact)         -> 20,971,520
    #   gate_up  2560 x 19456 x 2 = 95 MiB, tail 1 MiB    -> 96 MiB = 100,663,296
    #   down     9728 x 2560 x 2 = 47.5 MiB, tail 0.5 MiB -> 48 MiB = 50,331,648
    #   2 layer norms 2 x 5,120 + q_norm/k_norm 2 x 512 (256 B rounded to 512) = 11,264
    #   per layer 203,435,008; x 36 layers = 7,323,660,288
    #   tied embedding 151936 x 2560 x 2 = 741.875 MiB    -> 742 MiB = 778,043,392
    #   final norm 5,120; rope cache 40960 x 128 x 2 = 10 MiB = 10,485,760
    # total 8,112,194,560 B = 7.555 GiB (raw tensor bytes 8,112,194,560 = 7.502 GiB; the allocator tails add 54 MiB)
    assert weights.loaded_weights_bytes("0.19.0", g, "bf16") == 36 * 203_435_008 + 778_043_392 + 5_120 + 10_485_760
    assert weights.loaded_weights_bytes("0.19.0", g, "bf16") == 8_112_194_560


def test_quantized_weights_keep_16bit_embeddings() -> None:
    g = evaluate.GEOMETRY["meta-llama/Llama-3.1-8B-Instruct"]
    bf16 = weights.loaded_weights_bytes("0.19.0", g, "bf16")
    gptq = weights.loaded_weights_bytes("0.19.0", g, "gptq")
    online = weights.loaded_weights_bytes("0.19.0", g, "fp8_online")
    embed_and_head = 2 * 128256 * 4096 * 2
    # 4-bit linear weights but 16-bit embed + lm_head: far above 0.5 B/param (the old rule's phantom KV)
    assert gptq > embed_and_head + 0.5 * (bf16 - embed_and_head) / 2
    assert abs(gptq / GiB - 5.38) < 0.02  # v1-015 'Model loading took 5.38 GiB'
    assert abs(online / GiB - 8.49) < 0.01  # v1-018 'Model loading took 8.49 GiB'


def _synthetic_header(g: rules.Geometry) -> dict[str, tuple[str, tuple[int, ...]]]:
    t: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.embed_tokens.weight": ("BF16", (g.vocab, g.hidden)),
        "model.norm.weight": ("BF16", (g.hidden,)),
    }
    if not g.tied_embeddings:
        t["lm_head.weight"] = ("BF16", (g.vocab, g.hidden))
    q, kv = g.heads * g.head_dim, g.kv_heads * g.head_dim
    for i in range(g.layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = ("BF16", (q, g.hidden))
        t[p + "self_attn.k_proj.weight"] = ("BF16", (kv, g.hidden))
        t[p + "self_attn.v_proj.weight"] = ("BF16", (kv, g.hidden))
        t[p + "self_attn.o_proj.weight"] = ("BF16", (g.hidden, q))
        t[p + "mlp.gate_proj.weight"] = ("BF16", (g.intermediate, g.hidden))
        t[p + "mlp.up_proj.weight"] = ("BF16", (g.intermediate, g.hidden))
        t[p + "mlp.down_proj.weight"] = ("BF16", (g.hidden, g.intermediate))
        t[p + "input_layernorm.weight"] = ("BF16", (g.hidden,))
        t[p + "post_attention_layernorm.weight"] = ("BF16", (g.hidden,))
        if g.qk_norm:
            t[p + "self_attn.q_norm.weight"] = ("BF16", (g.head_dim,))
            t[p + "self_attn.k_norm.weight"] = ("BF16", (g.head_dim,))
    return t


@pytest.mark.parametrize("tp", [1, 2])
def test_safetensors_variant_matches_geometry(tp) -> None:
    for key in ("Qwen/Qwen3-4B", "Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B-Instruct"):
        g = evaluate.GEOMETRY[key]
        a = weights.loaded_weights_bytes("0.19.0", g, "bf16", tp)
        b = weights.loaded_weights_from_safetensors("0.19.0", _synthetic_header(g), g, tp)
        assert abs(a - b) <= 64 * 1024, key  # same fused tensors, same allocator rounding


def test_safetensors_online_fp8() -> None:
    g = evaluate.GEOMETRY["meta-llama/Llama-3.1-8B-Instruct"]
    b = weights.loaded_weights_from_safetensors("0.19.0", _synthetic_header(g), g, online_fp8=True)
    assert abs(b / GiB - 8.49) < 0.01  # v1-018


# ----------------------------------------------------------------------------- hand-worked Qwen3-4B, one per bucket
#
# Setting for every bucket: Qwen/Qwen3-4B bf16 (geometry above), one H100 80GB (CUDA total 79.19 GiB, NVML 81559
# MiB -> 8192 tokens / 1024 seqs in every release read), --gpu-memory-utilization 0.9, --max-model-len 8192, TP 1.
#   requested = ceil(79.19 GiB x 0.9)                    = 76,526,653,538 B (71.271 GiB)
#   weights   = 8,112,194,560 B (7.555 GiB)              (test_weights_qwen3_4b_bf16_by_hand)
#   rows      = min(8192, 1024) = 1024;  logits = 1024 x 151936 = 155,582,464
#   kept      = hidden 8192x2560x2 + (last_hidden + rand_like) 2x1024x2560x2 = 52,428,800 B
#   forward   = 8192 x (3x9728 + 4x2560) x 2 = 645,922,816 B  (smaller than the sampler phase everywhere)
#   cuBLAS    = 32 MiB (cc 9.0)                          = 33,554,432 B
#   KV/token  = 2 x 36 x 8 x 128 x 2 = 147,456 B; block = 16 tokens = 2,359,296 B
# CUDA-graph estimate where deducted (51 PIECEWISE + 51 FULL): 2 x int(0.18 GiB) + 100 x 6 MiB = 1,015,692,656 B.

REQ = math.ceil(int(79.19 * GiB) * 0.9)
W = 8_112_194_560
LOGITS = 1024 * 151936
KEPT = 52_428_800
CUBLAS = 33_554_432
CG = 2 * int(0.18 * GiB) + 100 * 6 * MiB
BLOCK = 16 * 147_456

HAND = {
    # 0.10.1.1 (bucket 0.10-0.11.0): FlashInfer top-k/top-p (14 B/logit), no graph deduction, non-torch 0.13 GiB
    #   act = 14 x 155,582,464 + 52,428,800 + 33,554,432 = 2,264,137,728 (2.109 GiB)
    #   KV  = 76,526,653,538 - 8,112,194,560 - 2,264,137,728 - 139,586,437 = 66,010,734,813 (61.48 GiB)
    "0.10.1.1": (14 * LOGITS + KEPT + CUBLAS, int(0.13 * GiB), 0, 0),
    # 0.16.0 (bucket 0.11.1-0.16): PyTorch sort, 38 B/logit
    #   act = 38 x 155,582,464 + 52,428,800 + 33,554,432 = 5,998,116,864 (5.586 GiB)
    #   KV  = 76,526,653,538 - 8,112,194,560 - 5,998,116,864 - 139,586,437 = 62,276,755,677 (58.00 GiB)
    "0.16.0": (38 * LOGITS + KEPT + CUBLAS, int(0.13 * GiB), 0, 0),
    # 0.19.0 (bucket 0.17-0.19): Triton, 14 B/logit + buffer 132 x 151936 x 4 = 80,222,208; graph estimate
    # printed but not deducted; non-torch 0.25 GiB (graph profiling inside the window)
    #   act = 2,178,154,496 + 52,428,800 + 80,222,208 + 33,554,432 = 2,344,359,936 (2.183 GiB)
    #   KV  = 76,526,653,538 - 8,112,194,560 - 2,344,359,936 - 268,435,456 = 65,801,663,586 (61.28 GiB)
    "0.19.0": (14 * LOGITS + KEPT + 132 * 151936 * 4 + CUBLAS, int(0.25 * GiB), 0, 0),
    # 0.23.0 (bucket 0.20-0.26): Qwen3ForCausalLM unquantized -> Model Runner V2 (6 B/logit); graphs deducted
    #   act = 6 x 155,582,464 + 52,428,800 + 33,554,432 = 1,019,478,016 (0.949 GiB)
    #   KV  = 76,526,653,538 - 8,112,194,560 - 1,019,478,016 - 268,435,456 - 1,015,692,656 = 66,110,852,850 (61.57 GiB)
    "0.23.0": (6 * LOGITS + KEPT + CUBLAS, int(0.25 * GiB), 0, CG),
    # 0.27.1 (bucket 0.27-0.33): V1 runner, FlashInfer 14 B/logit; total_consumed formula adds the runner's
    # persistent buffers 8192 x (2x2560 + 29) = 42,180,608; graph profiling outside the window -> 0.13 GiB
    #   KV  = 76,526,653,538 - 8,112,194,560 - 2,264,137,728 - 139,586,437 - 42,180,608 - 1,015,692,656 = 64,952,861,549 (60.49 GiB)
    "0.27.1": (14 * LOGITS + KEPT + CUBLAS, int(0.13 * GiB), 8192 * 5149, CG),
    # 0.33.0 (bucket 0.27-0.33): MRV2 with the warm-up pass, 18 B/logit; persistent adds the penalty state
    # output_bin_counts 1024 x 151936 x 4 = 622,329,856 and prompt_bin_mask 1024 x 4748 x 4 = 19,447,808
    #   act = 18 x 155,582,464 + 52,428,800 + 33,554,432 = 2,886,467,584 (2.688 GiB)
    #   KV  = 76,526,653,538 - 8,112,194,560 - 2,886,467,584 - 139,586,437 - 683,958,272 - 1,015,692,656 = 63,688,754,029 (59.31 GiB)
    "0.33.0": (18 * LOGITS + KEPT + CUBLAS, int(0.13 * GiB), 8192 * 5149 + 1024 * 151936 * 4 + 1024 * 4748 * 4, CG),
}


@pytest.mark.parametrize("version", sorted(HAND))
def test_qwen3_4b_hand_worked(version) -> None:
    act, non_torch, persistent, cg = HAND[version]
    g = evaluate.GEOMETRY["Qwen/Qwen3-4B"]
    r = rules.available_kv(
        version,
        geometry=g,
        weights_bytes=W,
        gpu_total_bytes=int(79.19 * GiB),
        gpu_name="NVIDIA H100 80GB HBM3",
        max_model_len=8192,
        gpu_memory_utilization=0.9,
        nvml_total_bytes=81559 * MiB,
    )
    assert r["requested"] == REQ == 76_526_653_538
    assert r["activation_peak"] == act
    assert r["non_torch"] == non_torch
    assert r["persistent"] == persistent
    assert r["cuda_graph_deducted"] == cg
    expected = REQ - W - act - non_torch - persistent - cg
    assert r["available_kv"] == expected
    assert r["kv_blocks"] == expected // BLOCK
    assert r["kv_tokens"] == expected // BLOCK * 16
    assert r["usable_kv_tokens"] == (expected // BLOCK - 1) * 16  # the null block


def test_max_model_len_check() -> None:
    # v1-031: 'To serve at least one request with the models's max seq len (8192), (1.0 GiB KV cache is needed'
    g = evaluate.GEOMETRY["meta-llama/Llama-3.1-8B-Instruct"]
    r = rules.available_kv(
        "0.17.1",
        geometry=g,
        weights_bytes=int(14.99 * GiB),
        gpu_total_bytes=int(23.54 * GiB),
        gpu_name="NVIDIA GeForce RTX 3090",
        max_model_len=8192,
        gpu_memory_utilization=0.7,
    )
    assert r["max_len_needed"] == 8192 // 16 * 16 * 131072 == 1 * GiB
    assert r["verdict"] == "no"


def test_warmup_risk_on_24gb_cards() -> None:
    """v1-028: util 0.9 on a 24 GB RTX 3090 sized the KV cache, then the sampler warm-up OOMed; 0.86 started."""
    g = evaluate.GEOMETRY["meta-llama/Llama-3.1-8B-Instruct"]
    kw = dict(
        geometry=g,
        weights_bytes=int(14.99 * GiB),
        gpu_total_bytes=int(23.54 * GiB),
        gpu_name="NVIDIA GeForce RTX 3090",
        max_model_len=8192,
    )
    assert rules.available_kv("0.17.1", gpu_memory_utilization=0.9, **kw)["verdict"] == "risk"
    assert rules.available_kv("0.17.1", gpu_memory_utilization=0.86, **kw)["verdict"] == "fits"


def test_moe_not_modelled() -> None:
    with pytest.raises(rules.NotModelled):
        rules.available_kv(
            "0.23.0",
            geometry=evaluate.GEOMETRY["Qwen/Qwen3-30B-A3B"],
            weights_bytes=16 * GiB,
            gpu_total_bytes=16 * GiB,
            gpu_name="NVIDIA GeForce RTX 5070 Ti",
            max_model_len=8192,
        )


@pytest.mark.parametrize(
    "qc,fmt",
    [
        (None, "bf16"),
        ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}, "awq"),
        ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True}, "gptq"),
        ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8_block"),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}},
            },
            "fp8_channel",
        ),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {
                    "g": {
                        "weights": {
                            "num_bits": 4,
                            "type": "int",
                            "strategy": "group",
                            "group_size": 128,
                            "symmetric": True,
                        }
                    }
                },
            },
            "w4a16",
        ),
    ],
)
def test_checkpoint_format_from_config(qc, fmt) -> None:
    # compressed-tensors no longer falls through to 2 bytes per parameter
    assert weights.checkpoint_format_from_config(qc)[0] == fmt
