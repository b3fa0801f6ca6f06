"""The planner on described hardware: which candidates fit, why, what is chosen, and the commands."""

from dataclasses import replace

import pytest

from qwen_deploy.engines.vllm import memory as vm
from qwen_deploy.errors import UsageError
from qwen_deploy.hardware.catalog import simulate
from qwen_deploy.model.profiles import load_profile
from qwen_deploy.planner import Request, nothing_fits_message, plan, ram_budget
from tests.conftest import make_hardware

GiB = 1024**3
QWEN = load_profile("qwen3-4b-instruct-2507")


def gpu_box(*specs, ram_gib=64):
    return simulate(make_hardware(ram_gib=ram_gib), gpus=specs)


def pick(p, engine, precision, kv):
    return next(c for c in p.candidates if (c.engine, c.precision, c.kv_cache_dtype) == (engine, precision, kv))


def test_rtx_4090_bf16_numbers_follow_vllms_formula():
    """Qwen3-4B BF16 on an RTX 4090 by the rules of vLLM 0.33.0 (the pinned release), utilization 0.92 pinned.

    CUDA total 24563 MiB = 25,756,172,288 B (catalog); NVML 24564 MiB -> 2048 tokens / 256 seqs.
    budget      ceil(25,756,172,288 × 0.92)                                       = 23,695,678,505
    weights     36 layers × 203,435,008 (fused tensors, allocator-rounded) + embedding 778,043,392 + final norm
                5,120 + rope 262,144 × 128 × 2 = 67,108,864                     = 8,168,817,664
    activation  Model Runner V2 with the warm-up pass: 18 B × 256 rows × 151,936 = 700,121,088, + kept hidden
                2048 × 2560 × 2 + 2 × 256 × 2560 × 2 = 13,107,200, + cuBLAS (cc 8.9) 8,519,680 = 721,747,968
                (the forward, 2048 × (3·9728 + 4·2560) × 2 = 161,480,704, is smaller)
    non-torch   int(0.13 GiB)                                                     = 139,586,437
    persistent  2048 × 5149 + 256 × 151,936 × 4 + 256 × 4748 × 4 (0.27+ formula)  = 170,989,568
    graphs      51 piecewise + 35 full: 2 × int(0.18 GiB) + 84 × 6 MiB (deducted) = 915,029,360
    available   23,695,678,505 − 8,168,817,664 − 721,747,968 − 139,586,437 − 170,989,568 − 915,029,360
                                                                                  = 13,579,507,508
    blocks      // (16 × 147,456 = 2,359,296) = 5755 -> 'GPU KV cache size: 92,080 tokens'
    margin      MRV2 sampler ±6 B/logit 233,373,696 + 0.27+ formula 644,245,094 + graphs on an unobserved
                architecture 84 × 18 MiB + 30 % of the estimate 1,859,955,720     = 2,737,574,510
    planned     (13,579,507,508 − 2,737,574,510) // 2,359,296 = 4595 blocks, − 1 null block -> 73,504 tokens
    """
    p = plan(QWEN, gpu_box("RTX 4090"), Request(engine="vllm", precision="bf16", gpu_memory_utilization=0.92))
    c = p.choice
    m = c.memory
    assert (c.engine, c.precision, c.kv_cache_dtype) == ("vllm", "bf16", "auto")
    assert (m.budget_bytes, m.weights_bytes, m.kv_bytes_per_token) == (23_695_678_505, 8_168_817_664, 147_456)
    assert m.parts["activation_peak_bytes"] == 721_747_968
    assert m.parts["non_torch_bytes"] == 139_586_437 and m.parts["persistent_buffers_bytes"] == 170_989_568
    assert m.parts["cuda_graph_bytes"] == 915_029_360
    assert m.parts["available_kv_bytes"] == 13_579_507_508
    assert m.counts["kv_blocks"] == 5755 and m.kv_capacity_tokens == 92_080
    assert m.kv_cache_bytes == 5755 * 2_359_296
    assert m.parts["margin_bytes"] == 2_737_574_510 and m.counts["safe_kv_blocks"] == 4595
    assert c.context == c.max_context == 73_504
    assert c.concurrency == pytest.approx(4594 / (73_504 // 16))
    assert c.engine_args["max-model-len"] == 73_504
    assert c.engine_args["gpu-memory-utilization"] == 0.92
    assert c.engine_args["dtype"] == "bfloat16"
    assert "vLLM 0.33.0 rules" in c.reason and "2.55 GiB kept back" in c.reason
    assert [d.name for d in m.devices] == ["CUDA0"] and m.devices[0].kv_bytes == m.kv_cache_bytes
    assert "--api-key" not in c.command
    fp8 = plan(QWEN, gpu_box("RTX 4090"), Request(engine="vllm", precision="bf16", kv_cache_dtype="fp8")).choice
    assert fp8.memory.kv_bytes_per_token == 73_728
    assert fp8.engine_args["kv-cache-dtype"] == "fp8"


def test_24gb_cards_leave_the_sampler_warm_up_its_memory():
    """Unpinned, the utilization leaves 1.5 GiB beside the budget (a 24 GB card at 0.9 can size the KV cache and
    then fail the sampler warm-up: the public v1-028 launch): 25,756,172,288 − 0.5 GiB context − 1.5 GiB
    reserve = 23,608,688,640 = 0.9166 of the total -> 0.91; pinned 0.92, the plan says the risk."""
    auto = plan(QWEN, gpu_box("RTX 4090"), Request(engine="vllm", precision="bf16")).choice
    assert auto.engine_args["gpu-memory-utilization"] == 0.91
    assert "0.91, not 0.92: leaves 1.50 GiB" in auto.reason
    pinned = plan(QWEN, gpu_box("RTX 4090"), Request(engine="vllm", precision="bf16", gpu_memory_utilization=0.92))
    assert "risk: only 1.42 GiB stays outside the budget" in pinned.choice.reason
    h100 = plan(QWEN, gpu_box("H100 80GB"), Request(engine="vllm", precision="bf16")).choice
    assert h100.engine_args["gpu-memory-utilization"] == 0.92  # a data-center card keeps the default


def test_rules_follow_the_vllm_release():
    """The same launch under 0.19.1 (graphs not deducted, Triton sampler, utilization default 0.9) and under
    0.33.0: different budgets, each named in the reason; a release older than 0.10 is refused in a sentence."""
    old = plan(QWEN, gpu_box("H100 80GB"), Request(engine="vllm", precision="bf16",
               engine_versions={"vllm": {"version": "0.19.1", "source": "--vllm-version"}})).choice  # fmt: skip
    new = plan(QWEN, gpu_box("H100 80GB"), Request(engine="vllm", precision="bf16")).choice
    assert old.memory.parts["cuda_graph_bytes"] == 0 < new.memory.parts["cuda_graph_bytes"]
    assert old.engine_args["gpu-memory-utilization"] == 0.9 and new.engine_args["gpu-memory-utilization"] == 0.92
    assert "vLLM 0.19.1 rules (--vllm-version)" in old.reason and "vLLM 0.33.0 rules" in new.reason
    with pytest.raises(UsageError, match="0.9.2.*not modelled"):
        plan(QWEN, gpu_box("H100 80GB"), Request(engine_versions={"vllm": {"version": "0.9.2", "source": "x"}}))


def test_tensor_parallelism_on_request():
    """--tensor-parallel-size pins the layout: 2×H100 at TP 2 is one replica over both GPUs (per-GPU KV heads
    8 // 2 = 4: 73,728 B per token), against the planner's own choice of TP 1 × 2 replicas."""
    own = plan(QWEN, gpu_box("2xH100 80GB"), Request(engine="vllm", precision="bf16")).choice
    assert (own.tensor_parallel_size, own.replicas) == (1, 2)
    tp2 = plan(QWEN, gpu_box("2xH100 80GB"), Request(engine="vllm", precision="bf16", tensor_parallel_size=2)).choice
    assert (tp2.tensor_parallel_size, tp2.replicas) == (2, 1) and tp2.memory.kv_bytes_per_token == 73_728
    assert "per GPU, tensor parallel 2" in tp2.reason and [d.name for d in tp2.memory.devices] == ["CUDA0", "CUDA1"]
    assert tp2.engine_args["tensor-parallel-size"] == 2
    dp = plan(QWEN, gpu_box("2xH100 80GB"), Request(engine="vllm", precision="bf16", data_parallel_size=2)).choice
    assert (dp.tensor_parallel_size, dp.replicas) == (1, 2) and dp.engine_args["data-parallel-size"] == 2
    too_many = plan(QWEN, gpu_box("2xH100 80GB"), Request(engine="vllm", tensor_parallel_size=4))
    assert too_many.choice is None and all("needs 4 GPUs; this machine has 2" in c.reason for c in too_many.candidates)
    odd = plan(QWEN, gpu_box("8xH100 80GB"), Request(engine="vllm", tensor_parallel_size=3))
    assert all("does not divide the model's 32 attention heads" in c.reason for c in odd.candidates)


def test_full_context_needs_36_gib_of_16_bit_kv():
    """At 262,144 tokens 16-bit KV alone is 36 GiB: no 16-24 GB GPU holds it; an H100 does."""
    request = Request(context=262_144)
    for name in ("RTX 4060 Ti 16GB", "RTX 4080", "RTX 4090"):
        p = plan(QWEN, gpu_box(name), replace(request, engine="vllm", kv_cache_dtype="auto"))
        assert p.choice is None, name
        assert all("262,144 tokens need 36.00 GiB of KV" in c.reason for c in p.candidates if "cannot" not in c.reason)
    h100 = plan(QWEN, gpu_box("H100 80GB"), replace(request, engine="vllm"))
    assert h100.choice is not None and h100.choice.context == 262_144
    assert h100.choice.precision == "bf16"  # the highest precision that reaches the context
    # fp8 KV (18 GiB) with AWQ weights fits a 24 GB card? 2.5 GiB weights + ~2.4 GiB overhead + 18 GiB > 21.7 GiB
    p4090 = plan(QWEN, gpu_box("RTX 4090"), replace(request, engine="vllm", kv_cache_dtype="fp8"))
    assert p4090.choice is None


def test_auto_prefers_highest_gpu_precision_reaching_32k_and_gives_it_the_longest_context():
    p = plan(QWEN, gpu_box("RTX 4090"))
    assert p.choice.engine == "vllm" and p.choice.precision == "bf16" and p.choice.kv_cache_dtype == "auto"
    assert p.choice.context == p.choice.max_context >= 32_768


def test_auto_falls_back_to_longest_context_when_nothing_reaches_32k():
    # An 8 GiB RTX 4060 cannot hold BF16 (8.0 GB of weights); FP8 and AWQ fit, none reaches 32K,
    # so auto takes the longest context (AWQ weights with an fp8 KV cache).
    p = plan(QWEN, gpu_box("RTX 4060"), Request(engine="vllm"))
    fitting = [c for c in p.candidates if c.fits]
    assert fitting and all(c.context < 32_768 for c in fitting)
    assert p.choice.context == max(c.context for c in fitting)
    assert (p.choice.precision, p.choice.kv_cache_dtype) == ("awq", "fp8")
    assert pick(p, "vllm", "bf16", "auto").fits is False
    assert "no room for a KV cache" in pick(p, "vllm", "bf16", "auto").reason


def test_cpu_balanced_chooses_a_4_bit_quant_and_quality_the_highest():
    hw = make_hardware(ram_gib=32)
    balanced = plan(QWEN, hw)
    assert balanced.choice.engine == "llamacpp"
    assert balanced.choice.precision == "q4_k_m"
    assert balanced.choice.kv_cache_dtype == "f16"
    quality = plan(QWEN, hw, Request(prefer="quality"))
    assert quality.choice.precision == "q8_0"
    speed = plan(QWEN, hw, Request(prefer="speed"))
    # none reaches 32K within --max-fill-time here, so contexts of at least half the longest count alike, and
    # among those the fastest decode wins
    longest = max(c.context for c in speed.candidates if c.fits)
    alike = [c for c in speed.candidates if c.fits and 2 * c.context >= longest]
    assert not speed.choice.meets_target and len(alike) > 1
    assert speed.choice.decode_tokens_per_s == max(c.decode_tokens_per_s for c in alike)


def test_a_gpu_serving_every_user_at_half_the_context_beats_a_cpu_that_takes_minutes_to_fill():
    """RTX 3060 12GB, 32 GB RAM, 8 cores, four users: vLLM (AWQ, fp8 KV) holds 10,512 tokens each at ~89 tok/s;
    llama-server on the CPU 17,664 each (its ten-minute fill bound) at ~6. Neither reaches 32K; 2 × 10,512 >=
    17,664, so they count alike and the GPU comes first (the octave rule put the CPU first: 17,664 is 2^14+)."""
    hw = simulate(make_hardware(ram_gib=32, cores=8), gpus=("RTX 3060 12GB",))
    p = plan(QWEN, hw, Request(concurrency=4))
    cpu = max((c for c in p.candidates if c.fits and c.device == "cpu"), key=lambda c: c.context)
    assert p.choice.device == "gpu" and not p.choice.meets_target
    assert 2 * p.choice.context >= cpu.context > p.choice.context


def test_cpu_context_is_the_longest_that_fits_the_ram_budget():
    hw = make_hardware(ram_gib=16)
    c = plan(QWEN, hw, Request(context="max", kv_cache_dtype="f16")).choice
    budget = ram_budget(hw)  # 16 GiB − 1.6 GiB reserve
    assert budget == 16 * GiB - int(16 * GiB * 0.1)
    assert c.memory.total_bytes <= budget
    assert c.context % 256 == 0
    # 256 more tokens would not fit
    longer = plan(
        QWEN, hw, Request(context=c.context + 256, precision=c.precision, kv_cache_dtype="f16", engine="llamacpp")
    )
    assert longer.choice is None
    # llama.cpp flags are explicit, never the server's defaults
    args = c.engine_args
    assert args["n_ctx"] == c.context and args["logits_all"] is False and args["use_mlock"] is False
    # Q4_K tensors are repacked on this AVX2 CPU: read without mmap so the weights are held once
    assert c.memory.parts["repacked_weights_bytes"] > 0 and args["use_mmap"] is False
    assert args["flash_attn"] is True and args["n_threads"] == 8 and args["n_threads_batch"] == 16
    assert args["type_k"] == args["type_v"] == 1


def test_exact_context_fits_or_says_why():
    hw = make_hardware(ram_gib=8)
    ok = plan(QWEN, hw, Request(context=8192))
    assert ok.choice.context == 8192
    too_long = plan(QWEN, hw, Request(context=262_144, engine="llamacpp", kv_cache_dtype="f16"))
    assert too_long.choice is None
    assert all("does not fit" in c.reason for c in too_long.candidates)
    beyond = plan(QWEN, hw, Request(context=300_000))
    assert beyond.choice is None
    assert "beyond the model's limit of 262,144" in beyond.candidates[0].reason


def test_nothing_fits_message_ends_with_a_fix():
    hw = make_hardware(ram_gib=2)
    p = plan(QWEN, hw)
    assert p.choice is None
    message = nothing_fits_message(p)
    assert "Nothing fits" in message and "To fix:" in message
    assert "needs" in message  # names how much more the nearest candidates need


def test_max_orders_by_context_first():
    p = plan(QWEN, make_hardware(ram_gib=32), Request(context="max"))
    contexts = [c.context for c in p.candidates if c.fits]
    assert p.choice.context == max(contexts) == 262_144


def test_several_gpus_replicate_when_one_holds_the_target_and_split_when_not():
    two_l4 = plan(QWEN, gpu_box("2xL4"), Request(engine="vllm", precision="bf16", context=32_768))
    assert two_l4.choice.tensor_parallel_size == 1 and two_l4.choice.replicas == 2
    assert two_l4.choice.engine_args["data-parallel-size"] == 2
    # 131,072 tokens of 16-bit KV (18 GiB) + weights do not fit one L4 (22.5 GiB): split over both
    long = plan(QWEN, gpu_box("2xL4"), Request(engine="vllm", precision="bf16", kv_cache_dtype="auto", context=131_072))
    assert long.choice.tensor_parallel_size == 2 and long.choice.replicas == 1
    assert long.choice.memory.kv_bytes_per_token == 73_728  # 4 of 8 KV heads per rank


def test_compute_capability_rules():
    t4 = plan(QWEN, gpu_box("T4"), Request(engine="vllm"))
    bf16 = next(c for c in t4.candidates if c.artifact.precision == "bf16" and c.kv_cache_dtype == "auto")
    assert bf16.precision == "fp16" and bf16.engine_args["dtype"] == "float16"  # no bf16 below 8.0
    fp8_kv = [c for c in t4.candidates if c.kv_cache_dtype == "fp8"]
    assert fp8_kv and all(not c.fits and "compute capability 8.0" in c.reason for c in fp8_kv)
    v100 = plan(QWEN, gpu_box("V100 16GB"), Request(engine="vllm", precision="awq"))
    assert all("7.5 or newer" in c.reason for c in v100.candidates)


def test_busy_gpu_lowers_utilization_so_vllm_can_start():
    hw = gpu_box("RTX 4090")
    busy = replace(hw, gpus=(replace(hw.gpus[0], memory_free_bytes=20 * GiB),))
    c = plan(QWEN, busy, Request(engine="vllm", precision="bf16")).choice
    # (20 GiB − 0.5 GiB CUDA context) / 23.99 GiB (CUDA total 24563 MiB) = 0.8129 -> 0.81
    assert c.engine_args["gpu-memory-utilization"] == 0.81
    assert "lowered to 0.81" in c.reason
    pinned = plan(QWEN, busy, Request(engine="vllm", precision="bf16", gpu_memory_utilization=0.7)).choice
    assert pinned.engine_args["gpu-memory-utilization"] == 0.7


def test_pinned_utilization_on_a_busy_gpu_does_not_fit():
    hw = gpu_box("RTX 4090")
    busy = replace(hw, gpus=(replace(hw.gpus[0], memory_free_bytes=2 * GiB),))
    p = plan(QWEN, busy, Request(engine="vllm", gpu_memory_utilization=0.9))
    assert p.choice is None
    assert all("GPU memory is free" in c.reason for c in p.candidates)
    # unpinned: too little free memory to lower the fraction to something useful
    unpinned = plan(QWEN, replace(hw, gpus=(replace(hw.gpus[0], memory_free_bytes=GiB),)), Request(engine="vllm"))
    assert unpinned.choice is None
    assert all(c.engine_args.get("gpu-memory-utilization", 1) > 0 for c in unpinned.candidates)


def test_gpu_count_forms():
    for spec in ("2xL4", "2 x L4", "L4x2", "L4 x 2"):
        assert len(simulate(make_hardware(), gpus=(spec,)).gpus) == 2
    assert simulate(make_hardware(), gpus=("4090",)).gpus[0].name == "NVIDIA GeForce RTX 4090"
    assert len(simulate(make_hardware(), gpus=("4090x2",)).gpus) == 2


def test_quantized_cache_that_does_not_divide_into_blocks_cannot_run(tmp_path):
    from qwen_deploy.model.gguf import spec_from_gguf
    from tests.synthetic_gguf import SyntheticShape, write_synthetic_gguf

    path = write_synthetic_gguf(
        tmp_path / "odd.gguf",
        SyntheticShape(layers=2, heads=2, kv_heads=1, head_dim=40, hidden=80, ffn=64, vocab=300, context=4096),
    )
    p = plan(spec_from_gguf(path), make_hardware())
    by_kv = {c.kv_cache_dtype: c for c in p.candidates}
    assert by_kv["f16"].fits
    assert not by_kv["q8_0"].fits and "multiple of 32" in by_kv["q8_0"].reason


def test_tiny_context_models_plan_one_padded_step(tmp_path):
    from qwen_deploy.model.gguf import spec_from_gguf
    from tests.synthetic_gguf import SyntheticShape, write_synthetic_gguf

    path = write_synthetic_gguf(
        tmp_path / "short.gguf",
        SyntheticShape(layers=1, heads=2, kv_heads=1, head_dim=32, hidden=64, ffn=64, vocab=300, context=128),
    )
    p = plan(spec_from_gguf(path), make_hardware(), Request(context=64))
    assert p.choice is not None and p.choice.context == 64
    assert p.choice.memory.counts["n_ctx_padded"] == 256
    assert all(c.shortfall_bytes >= 0 for c in p.candidates)


def test_less_free_ram_than_planned_is_a_warning_not_a_different_plan():
    roomy = make_hardware(ram_gib=32)
    busy = make_hardware(ram_gib=32, available_gib=6)
    a, b = plan(QWEN, roomy, Request(context="max")), plan(QWEN, busy, Request(context="max"))
    assert a.choice.context == b.choice.context
    assert "is free now" in b.choice.reason and "is free now" not in a.choice.reason


def test_planning_is_pure_and_deterministic():
    hw = gpu_box("RTX 3090")
    before = (hw, QWEN)
    a, b = plan(QWEN, hw), plan(QWEN, hw)
    assert a.to_dict() == b.to_dict()
    assert (hw, QWEN) == before


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (Request(context=0), "positive"),
        (Request(context="huge"), "auto"),
        (Request(concurrency=0), "concurrency"),
        (Request(prefer="cheap"), "prefer"),
        (Request(gpu_memory_utilization=1.5), "fraction"),
        (Request(kv_cache_dtype="int3"), "kv-cache-dtype"),
        (Request(kv_cache_dtype="fp8", engine="llamacpp"), "not a cache type llama.cpp takes"),
        (Request(precision="q2_k"), "not available"),
    ],
)
def test_contradictory_or_bad_requests_are_usage_errors(request_, match):
    with pytest.raises(UsageError, match=match):
        plan(QWEN, make_hardware(), request_)


def test_concurrency_on_cpu_gives_llama_server_slots():
    """llama-cpp-python's server answers one request at a time: above one, llama-server's slots win."""
    p = plan(QWEN, make_hardware(), Request(concurrency=4))
    assert p.choice.engine == "llama-server" and p.choice.parallel == 4
    assert p.choice.engine_args["parallel"] == 4 and p.choice.engine_args["ctx-size"] == 4 * p.choice.context
    assert all("one request at a time" in c.reason for c in p.candidates if c.engine == "llamacpp")
    # one request: llama-cpp-python's server first (the engine scripts/install-llamacpp installs by default)
    assert plan(QWEN, make_hardware()).choice.engine == "llamacpp"


def test_vllm_concurrency_scales_the_context():
    one = plan(QWEN, gpu_box("RTX 4090"), Request(engine="vllm", precision="bf16", kv_cache_dtype="auto")).choice
    four = plan(
        QWEN, gpu_box("RTX 4090"), Request(engine="vllm", precision="bf16", kv_cache_dtype="auto", concurrency=4)
    ).choice
    assert four.context == ((one.memory.counts["safe_kv_blocks"] - 1) // 4) * vm.VLLM_BLOCK_SIZE
    assert four.concurrency >= 4


def test_plan_json_follows_the_schema():
    d = plan(QWEN, gpu_box("RTX 4090")).to_dict()
    assert d["schema"] == "qwen-deploy/plan/v1"
    assert set(d) == {"schema", "model", "hardware", "request", "choice", "candidates"}
    choice = d["choice"]
    for key in (
        "engine",
        "device",
        "precision",
        "artifact",
        "kv_cache_dtype",
        "context",
        "concurrency",
        "tensor_parallel_size",
        "replicas",
        "fits",
        "reason",
        "memory",
        "engine_args",
        "command",
    ):
        assert key in choice
    for key in (
        "budget_bytes",
        "weights_bytes",
        "kv_bytes_per_token",
        "kv_cache_bytes",
        "overhead_bytes",
        "total_bytes",
        "kv_capacity_tokens",
    ):
        assert isinstance(choice["memory"][key], int)
    assert d["candidates"][0] == choice
