"""The seed article's hardware table, redone by the planner: what each machine really allows for
Qwen3-4B-Instruct-2507 at 32K and at 262,144 tokens.

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
    ("32 GB CPU server, 16 cores", desktop(32, 16)),
    ("16 GB laptop, 8 cores", desktop(16, 8)),
]


def main() -> None:
    model = load_profile("qwen3-4b-instruct-2507")
    print("| machine | context | choice | KV cache | concurrency | memory used | est. tok/s |")
    print("|---|---:|---|---|---:|---:|---:|")
    for name, hw in MACHINES:
        for context in (32768, 262144):
            p = plan(model, hw, Request(context=context))
            c = p.choice
            if c is None:
                why = nothing_fits_message(p).split(" Nearest: ")[1].split(";")[0]
                print(f"| {name} | {context:,} | nothing fits — nearest: {why} | | | | |")
                continue
            print(
                f"| {name} | {context:,} | {c.engine} {c.precision} | {c.kv_cache_dtype} "
                f"({format_size(c.memory.kv_cache_bytes)}) | {c.concurrency:.1f} | "
                f"{format_size(c.memory.total_bytes)} of {format_size(c.memory.budget_bytes)} | {c.decode_tokens_per_s:.0f} |"
            )


if __name__ == "__main__":
    main()
