"""llama.cpp on the GPUs people own, through the planner: full offload on 8 GB laptop cards, the split on a
4 GB card, Metal within its working set on a 16 GB Mac, the --gpu-layers pin, one ranking with vLLM, and the
sentences for what cannot run."""

from __future__ import annotations

import pytest

from qwen_deploy.hardware.catalog import simulate
from qwen_deploy.model.profiles import load_profile
from qwen_deploy.planner import Request, plan
from tests.conftest import make_hardware

GiB, MiB = 1024**3, 1024**2
QWEN = load_profile("qwen3-4b-instruct-2507")


def box(*gpus, ram_gib=32):
    return simulate(make_hardware(ram_gib=ram_gib), gpus=gpus)


def test_an_8gb_laptop_gpu_runs_llama_cpp_fully_offloaded_with_32k():
    p = plan(QWEN, box("RTX 4060 Laptop"))
    c = p.choice
    assert (c.engine, c.device, c.gpu_layers) == ("llamacpp", "gpu", "37/37")
    assert c.context >= 32_768 and c.fits
    names = [d.name for d in c.memory.devices]
    assert names == ["CUDA0", "CPU"]
    cuda = c.memory.devices[0]
    # the budget is what CUDA can allocate: its free memory (all of it on a described card), at most the
    # CUDA total (NVML's 8188 MiB less the 1.5 % the driver keeps, as no CUDA print was found for this card)
    assert cuda.total_bytes <= cuda.budget_bytes == p.hardware.gpus[0].cuda_total == int(8188 * MiB * 0.985)
    assert c.engine_args["n_gpu_layers"] == 37
    # vLLM competes under the same policy and loses on context: its AWQ plan stays short on 8 GB
    vllm = [x for x in p.candidates if x.engine == "vllm" and x.fits]
    assert all(x.context < c.context for x in vllm)


def test_a_4gb_card_gets_a_partial_offload_with_its_split():
    c = plan(QWEN, box("GTX 1650")).choice
    on, _, of = c.gpu_layers.partition("/")
    assert c.engine == "llamacpp" and 0 < int(on) < int(of) == 37
    assert c.context >= 32_768
    devices = {d.name: d for d in c.memory.devices}
    assert set(devices) == {"CUDA0", "CPU"} and devices["CPU"].kv_bytes > 0 and devices["CUDA0"].kv_bytes > 0
    assert devices["CUDA0"].total_bytes <= devices["CUDA0"].budget_bytes
    assert f"{37 - int(on)} of 37 layers stay on the CPU" in c.reason
    assert c.precision in ("q4_k_m", "q4_0")  # decoding is memory-bound on the CPU's share: a 4-bit quant


def test_a_16gb_mac_gets_a_metal_plan_within_its_working_set():
    """M2 16 GB: Metal working set 16 GiB × 2/3 = 11,453,246,122 B; the budget keeps 512 MiB for the window
    server: 10,916,375,210 B. RAM: 16 GiB − 1.6 GiB reserve holds the Metal and the host buffers together."""
    p = plan(QWEN, box("M2 16GB"))
    c = p.choice
    assert (c.engine, c.gpu_layers) == ("llamacpp", "37/37")
    metal = next(d for d in c.memory.devices if d.name == "MTL0")
    assert metal.budget_bytes == 11_453_246_122 - 512 * MiB
    assert metal.total_bytes <= metal.budget_bytes
    assert c.memory.total_bytes <= p.hardware.memory.total_bytes
    assert "Metal budget = the working set" in c.reason
    assert not any(x.engine == "vllm" for x in p.candidates)  # vLLM runs on CUDA only


def test_gpu_layers_pins_the_split():
    ten = plan(QWEN, box("RTX 4060 Laptop"), Request(gpu_layers=10, engine="llamacpp", precision="q4_k_m")).choice
    assert ten.gpu_layers == "10/37" and ten.engine_args["n_gpu_layers"] == 10
    assert "10 of 37 layers on the GPU (--gpu-layers)" in ten.reason
    cpu = plan(QWEN, box("RTX 4060 Laptop"), Request(gpu_layers=0, engine="llamacpp")).choice
    assert cpu.device == "cpu" and cpu.gpu_layers == "0/37"
    too_many = plan(QWEN, box("RTX 4060 Laptop"), Request(gpu_layers=40, engine="llamacpp"))
    assert too_many.choice is None and all("from 0 to 37" in x.reason for x in too_many.candidates)


def test_full_offload_with_a_quantized_cache_wins_over_spilling_layers():
    """On 6 GB (RTX 2060) 16-bit KV cannot reach 32K with every layer on the GPU; an 8-bit or 4-bit cache can:
    that wins over keeping layers on the CPU."""
    c = plan(QWEN, box("RTX 2060")).choice
    assert c.gpu_layers == "37/37" and c.kv_cache_dtype in ("q8_0", "q4_0") and c.context >= 32_768


def test_a_gpu_too_small_for_one_layer_says_so():
    p = plan(QWEN, simulate(make_hardware(ram_gib=32), vram="1GiB"), Request(engine="llamacpp", gpu_layers="all"))
    gpu = [c for c in p.candidates if c.device == "gpu"]
    assert gpu and not any(c.fits for c in gpu)
    assert all("exceed the budgets" in c.reason or "not even the output layer fits" in c.reason for c in gpu)


def test_an_unsupported_compute_capability_is_a_sentence(tmp_path):
    from dataclasses import replace

    hw = box("GTX 1650")
    old = replace(hw, gpus=(replace(hw.gpus[0], compute_capability="3.5"),))
    gpu = [c for c in plan(QWEN, old).candidates if c.engine == "llamacpp" and c.device == "gpu"]
    assert gpu and all("compute capability 5.0 or newer" in c.reason for c in gpu)


@pytest.mark.parametrize("spec", ["RTX 4060 Laptop", "GTX 1650", "M2 16GB", "RTX 3060", "M3 Max 64GB"])
def test_no_device_is_planned_past_its_budget(spec):
    for c in plan(QWEN, box(spec)).candidates:
        if c.fits and c.engine == "llamacpp":
            for d in c.memory.devices:
                assert d.total_bytes <= d.budget_bytes, (spec, c.label(), d)
