"""The seed article's hardware table, redone by the planner: what each machine really allows for
Qwen3-4B-Instruct-2507 by default (`--context auto`: the longest context worth having, its whole prompt
prefilled within 10 minutes), at 32K and at 262,144 tokens, and for four users at once; with the predicted
decode and prefill speeds and the time to fill the context.

    python bench/hardware_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwen_deploy.hardware.catalog import simulate
from qwen_deploy.hardware.types import CPU, Disk, Hardware, Memory  # noqa: E402
from qwen_deploy.model.profiles import load_profile  # noqa: E402
from qwen_deploy.planner import Request, nothing_fits_message, plan  # noqa: E402
from qwen_deploy.units import format_size  # noqa: E402

GiB = 1024**3


def desktop(ram_gib: int, cores: int) -> Hardware:
    return Hardware(
        cpu=CPU(
            model="x86-64 with AVX2",
            physical_cores=cores,
            logical_cores=2 * cores,
            flags=("avx", "avx2", "f16c", "fma"),
        ),
        memory=Memory(total_bytes=ram_gib * GiB, available_bytes=ram_gib * GiB),
        disk=Disk(path="/models", free_bytes=500 * GiB),
    )


MACHINES = [
    ("RTX 4090 (24 GB) + 64 GB RAM", simulate(desktop(64, 16), gpus=("RTX 4090",))),
    ("RTX 3060 12GB + 32 GB RAM", simulate(desktop(32, 8), gpus=("RTX 3060 12GB",))),
    ("RTX 4060 Ti 16GB + 32 GB RAM", simulate(desktop(32, 8), gpus=("RTX 4060 Ti 16GB",))),
    ("RTX 4060 Laptop (8 GB) + 16 GB RAM", simulate(desktop(16, 8), gpus=("RTX 4060 Laptop",))),
    ("GTX 1650 (4 GB) + 16 GB RAM", simulate(desktop(16, 4), gpus=("GTX 1650",))),
    ("MacBook M2, 16 GB", simulate(desktop(16, 8), gpus=("M2 16GB",))),
    ("L4 (24 GB) + 64 GB RAM", simulate(desktop(64, 8), gpus=("L4",))),
    ("A10G (24 GB) + 64 GB RAM", simulate(desktop(64, 8), gpus=("A10G",))),
    ("H100 80GB + 256 GB RAM", simulate(desktop(256, 32), gpus=("H100 80GB",))),
    ("32 GB CPU server, 16 cores", desktop(32, 16)),
    ("16 GB laptop, 8 cores", desktop(16, 8)),
    ("2-core VM, 24 GB (this project's CI machine)", desktop(24, 2)),
]
REQUESTS = [("auto", Request()), ("32,768", Request(context=32768)), ("262,144", Request(context=262144)),
            ("auto, 4 users", Request(concurrency=4))]  # fmt: skip


def duration(seconds: float | None) -> str:
    from qwen_deploy.report import duration as fmt

    return fmt(seconds)


def main() -> None:
    model = load_profile("qwen3-4b-instruct-2507")
    print("| machine | asked | choice | context | KV cache | memory used | decode tok/s | prefill tok/s | fill |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|")
    for name, hw in MACHINES:
        for asked, request in REQUESTS:
            p = plan(model, hw, request)
            c = p.choice
            if c is None:
                why = nothing_fits_message(p).split(" Nearest: ")[-1].split(";")[0]
                print(f"| {name} | {asked} | nothing fits — nearest: {why} | | | | | | |")
                continue
            where = f" {c.gpu_layers} on GPU" if c.gpu_layers and c.device == "gpu" else ""
            slots = f" ×{c.parallel} slots" if c.parallel and c.parallel > 1 else ""
            prefill = "-" if c.prefill_tokens_per_s is None else f"{c.prefill_tokens_per_s:.0f}"
            print(
                f"| {name} | {asked} | {c.engine} {c.precision}{where}{slots} | {c.context:,} | {c.kv_cache_dtype} "
                f"({format_size(c.memory.kv_cache_bytes)}) | {format_size(c.memory.total_bytes)} | "
                f"{c.decode_tokens_per_s:.1f} | {prefill} | {duration(c.fill_seconds)} |"
            )


def vllm_table() -> None:
    """vLLM alone on the seed article's GPUs (the rules of the pinned release): the longest context, and how
    many 32K conversations its KV cache holds at once."""
    model = load_profile("qwen3-4b-instruct-2507")
    print("\n| GPU (vLLM only) | rules | precision · KV | longest context | KV cache | 32K conversations at once |")
    print("|---|---|---|---:|---:|---:|")
    for name, hw in MACHINES:
        if not hw.gpus or hw.gpus[0].backend != "cuda" or "Laptop" in name or "1650" in name or "4060" in name:
            continue
        longest = plan(model, hw, Request(engine="vllm", context="max")).choice
        at_32k = plan(model, hw, Request(engine="vllm", context=32768)).choice
        if longest is None:
            print(f"| {name} | | nothing fits | | | |")
            continue
        from qwen_deploy.engines.vllm.plan import engine_version

        version, source = engine_version(Request(engine="vllm"), "vllm")
        rules = f"vLLM {version} ({source})"
        held = f"{at_32k.memory.kv_capacity_tokens / 32768:.1f}" if at_32k else "-"
        print(
            f"| {name.split(' + ')[0]} | {rules} | {longest.precision} · {longest.kv_cache_dtype} | "
            f"{longest.context:,} | {format_size(longest.memory.kv_cache_bytes)} | {held} |"
        )


if __name__ == "__main__":
    main()
    vllm_table()
