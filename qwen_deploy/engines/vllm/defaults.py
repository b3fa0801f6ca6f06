"""What vLLM picks when the command leaves it alone, per release: the GPU facts its defaults depend on
(compute capability, SM count, NVLS, consumer card), max_num_batched_tokens / max_num_seqs, the CUDA-graph
capture sizes, the sampler and the runner. Pure; used by rules.available_kv. Sources cited per rule, as in
rules.py (vLLM's own source in each release's wheel).
"""

from __future__ import annotations

from qwen_deploy.engines.vllm.versions import GiB, _v

# ----------------------------------------------------------------------------- GPU facts

# name fragment (lower case) -> (compute capability, SM count, NVLS-capable NVSwitch part, consumer card)
# SM counts: NVIDIA product pages / whitepapers (H100 SXM5 132, H100 PCIe 114, H200 132, A100 108, A10G 80,
# L40S 142, L4 58, RTX 3090 82, RTX 4090 128, RTX 5090 170, RTX 5070 Ti 70, RTX 5060 Ti 36, T4 40).
# The Triton top-k/top-p buffer (v1/sample/ops/topk_topp_triton.py @0.17.0) is sized by the SM count.
_GPUS: tuple[tuple[str, tuple[int, int], int, bool, bool], ...] = (
    ("h200", (9, 0), 132, True, False),
    ("h100 pcie", (9, 0), 114, False, False),
    ("h100", (9, 0), 132, True, False),
    ("h800", (9, 0), 132, True, False),
    ("b200", (10, 0), 148, True, False),
    ("gb200", (10, 0), 152, True, False),
    ("a100", (8, 0), 108, False, False),
    ("a800", (8, 0), 108, False, False),
    ("a30", (8, 0), 56, False, False),
    ("a10g", (8, 6), 80, False, False),
    ("a10", (8, 6), 72, False, False),
    ("l40s", (8, 9), 142, False, False),
    ("l40", (8, 9), 142, False, False),
    ("l4", (8, 9), 58, False, False),
    ("rtx 5090", (12, 0), 170, False, True),
    ("rtx 5080", (12, 0), 84, False, True),
    ("rtx 5070 ti", (12, 0), 70, False, True),
    ("rtx 5060 ti", (12, 0), 36, False, True),
    ("rtx 4090", (8, 9), 128, False, True),
    ("rtx 4080", (8, 9), 76, False, True),
    ("rtx 4060 ti", (8, 9), 34, False, True),
    ("rtx 3090", (8, 6), 82, False, True),
    ("rtx 3060", (8, 6), 28, False, True),
    ("rtx a6000", (8, 6), 84, False, False),
    ("rtx a4000", (8, 6), 48, False, False),
    ("t4", (7, 5), 40, False, False),
)


def gpu_facts(gpu_name: str, capability: tuple[int, int] | None = None) -> dict[str, object]:
    """(capability, sm_count, nvls, consumer) for a GPU name; unknown names get conservative defaults, and a
    known compute capability (the GPU catalog's, or NVML's) replaces the table's or the default's."""
    facts = _gpu_facts(gpu_name)
    if capability is not None and capability != (0, 0):
        facts = {**facts, "capability": capability}
    return facts


def _gpu_facts(gpu_name: str) -> dict[str, object]:
    n = " ".join(gpu_name.lower().replace("geforce", "").replace("nvidia", "").split())
    n = n.replace("rtx5", "rtx 5").replace("rtx4", "rtx 4").replace("rtx3", "rtx 3")
    for key, cc, sms, nvls, consumer in _GPUS:
        if key in n:
            return {"capability": cc, "sm_count": sms, "nvls": nvls, "consumer": consumer, "known": True}
    return {"capability": (8, 0), "sm_count": 132, "nvls": False, "consumer": "rtx" in n, "known": False}


# ----------------------------------------------------------------------------- defaults


def cudagraph_capture_sizes(
    version: str | tuple[int, int, int], max_num_seqs: int, max_num_batched_tokens: int
) -> list[int]:
    """Decode/mixed capture sizes, ascending.

    0.10.0-0.10.1: [1, 2, 4] + range(8, 513, 8) (scheduler cuda_graph_sizes default [512];
    config/__init__.py @0.10.1.1 VllmConfig._set_cudagraph_sizes, V1 branch) - 67 sizes, as the 0.10.1.1 logs
    show ('66/67'). From 0.10.2: max = min(2 × max_num_seqs, 512), sizes [1, 2, 4] + range(8, 256, 8) +
    range(256, max + 1, 16), then capped by max_num_batched_tokens (config/vllm.py @0.19.0 _set_cudagraph_sizes).
    """
    v = _v(version)
    if v < (0, 10, 2):
        sizes = [1, 2, 4, *range(8, 513, 8)]
    else:
        largest = min(2 * max_num_seqs, 512)
        sizes = [1, 2, 4, *range(8, 256, 8), *range(256, largest + 1, 16)]
        sizes = [s for s in sizes if s <= largest]
    return [s for s in sizes if s <= max_num_batched_tokens]


def defaults(
    version: str | tuple[int, int, int],
    gpu_total_bytes: int,
    gpu_name: str,
    *,
    nvml_total_bytes: int | None = None,
    architecture: str = "LlamaForCausalLM",
    quantized: bool = False,
    moe: bool = False,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    enforce_eager: bool = False,
    flashinfer_installed: bool | None = None,
    capability: tuple[int, int] | None = None,
) -> dict[str, object]:
    """What `vllm serve` picks when the user does not say (OPENAI_API_SERVER usage context). `capability`:
    the GPU's compute capability when the caller knows it (the name table is then only for the SM count)."""
    v = _v(version)
    facts = gpu_facts(gpu_name, capability)
    nvml = nvml_total_bytes or gpu_total_bytes
    name = gpu_name.lower()
    # engine/arg_utils.py EngineArgs.get_batch_defaults (@0.10.0 ... @0.27.1): device memory from NVML
    # (platforms/cuda.py get_device_total_memory = nvmlDeviceGetMemoryInfo.total); >= 70 GiB and not an A100:
    # 8192 tokens / 1024 seqs, else 2048 / 256. @0.28.0 adds >= 160 GiB: 16384 / 1024. @0.33.0 keeps GB10
    # (cc 12.1) on the small tier.
    if v >= (0, 28, 0) and nvml >= 160 * GiB:
        d_tokens, d_seqs = 16384, 1024
    elif nvml >= 70 * GiB and "a100" not in name and not (v >= (0, 33, 0) and facts["capability"] == (12, 1)):
        d_tokens, d_seqs = 8192, 1024
    else:
        d_tokens, d_seqs = 2048, 256
    seqs = max_num_seqs or d_seqs
    tokens = max_num_batched_tokens or d_tokens

    # config/cache.py: gpu_memory_utilization Field(default=0.9) through 0.19.1, 0.92 from 0.20.0.
    util = 0.92 if v >= (0, 20, 0) else 0.9
    # config/cache.py DEFAULT_BLOCK_SIZE = 16 (CUDA platform default for full attention).
    block_size = 16

    # Model Runner V2 default (config/vllm.py VllmConfig.use_v2_model_runner): 0.22.0 Qwen3ForCausalLM,
    # 0.23.0 + LlamaForCausalLM/MistralForCausalLM, 0.24.0 same dense set + some MoE, 0.25-0.28 MoE-only
    # architectures, all of them unquantized and non-MoE where listed dense; from 0.29.0 every model unless an
    # unsupported feature is used. Earlier: V1 GPUModelRunner only (VLLM_USE_V2_MODEL_RUNNER default 0).
    v2_dense = {
        (0, 22): {"Qwen3ForCausalLM"},
        (0, 23): {"Qwen3ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM"},
        (0, 24): {"Qwen3ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM"},
    }
    if v >= (0, 29, 0) or architecture in v2_dense.get(v[:2], set()) and not quantized and not moe:
        runner = "v2"
    else:
        runner = "v1"

    # Sampler top-k/top-p implementation used by the profile's dummy sampler run (top_k = vocab-1, top_p=0.9:
    # v1/worker/gpu_model_runner.py _dummy_sampler_run):
    #   0.10.0-0.11.0  FlashInfer when installed (v1/sample/ops/topk_topp_sampler.py: env None means on);
    #                  flashinfer is only the [flashinfer] extra of the pip wheel, but is in the official image.
    #   0.11.1-0.16.x  PyTorch sort (FlashInfer opt-in only, VLLM_USE_FLASHINFER_SAMPLER=1).
    #   0.17.0-0.20.x  Triton top-k/top-p for >= 8 rows (apply_top_k_top_p -> apply_top_k_top_p_triton).
    #   0.21.0+        FlashInfer again by default on cc 7.5-12.1 (envs.py default True;
    #                  flashinfer_sampler_supported, FlashInferBackend.supports_compute_capability).
    #   Model Runner V2 (v1/worker/gpu/sample/sampler.py): its own sampler, see _sampler_bytes.
    cc = facts["capability"]
    if runner == "v2":
        sampler = "mrv2_warmup" if v >= (0, 33, 0) else "mrv2"
    elif v < (0, 11, 1):
        sampler = "flashinfer" if flashinfer_installed is not False else "sort"
    elif v < (0, 17, 0):
        sampler = "sort"
    elif v < (0, 21, 0):
        sampler = "triton"
    else:
        sampler = "flashinfer" if (7, 5) <= cc <= (12, 1) else "triton"  # type: ignore[operator]

    sizes = [] if enforce_eager else cudagraph_capture_sizes(v, seqs, tokens)
    # Default cudagraph mode: PIECEWISE in 0.10.x; FULL_AND_PIECEWISE from 0.11.0 (config/vllm.py
    # __post_init__): FULL graphs for uniform decode batches up to max_num_seqs ('FULL=35 (largest=256)').
    full_sizes = [] if v < (0, 11, 0) else [s for s in sizes if s <= seqs]
    return {
        "gpu_memory_utilization": util,
        "max_num_seqs": seqs,
        "max_num_batched_tokens": tokens,
        "block_size": block_size,
        "cudagraph_mode": "NONE" if enforce_eager else ("PIECEWISE" if v < (0, 11, 0) else "FULL_AND_PIECEWISE"),
        "cudagraph_capture_sizes": sizes,
        "full_cudagraph_sizes": full_sizes,
        # gpu_worker.py: estimate from 0.18.0 (profile_cudagraph_memory); deducted when
        # VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS is on: default "0" @0.18.0-0.19.1, "1" from 0.20.0.
        "cudagraph_estimated": v >= (0, 18, 0) and not enforce_eager,
        "cudagraph_profiled_before_kv": v >= (0, 20, 0) and not enforce_eager,
        "model_runner": runner,
        "sampler": sampler,
        # gpu_worker.py init_device: snapshot taken before init_worker_distributed_environment in 0.10.x,
        # after it from 0.11.0 ('Initialize the distributed environment BEFORE taking memory snapshot').
        "snapshot_after_dist_init": v >= (0, 11, 0),
        # mem_utils.memory_profiling: torch-peak formula < 0.27.0, total_consumed + headroom from 0.27.0.
        "non_kv_formula": "total_consumed" if v >= (0, 27, 0) else "torch_peak",
        # gpu_worker.determine_available_memory: the CUDA-graph profiling ran inside the memory_profiling
        # window 0.18.0-0.26.0 (its non-torch residue is counted), outside it from 0.27.0.
        "cudagraph_profile_in_window": (0, 18, 0) <= v < (0, 27, 0) and not enforce_eager,
    }
