"""`qwen-deploy plan --json` wall time as a ratio to a bare `python -c pass` (target <= 2.5), and the same
for `--help`. Both measured in one run, interleaved, best of N, so machine noise hits both alike.

    python bench/plan_latency.py [--runs 15]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
import argparse
import subprocess
import sys
import time

from bench._report import compile_package, update_section  # noqa: E402


def best_of(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    py = sys.executable
    commands = {
        "python -c pass": [py, "-c", "pass"],
        "qwen-deploy --help": [py, "-m", "qwen_deploy", "--help"],
        "qwen-deploy plan --json": [py, "-m", "qwen_deploy", "plan", "--json"],
        "qwen-deploy plan --json --gpu 'RTX 4090'": [py, "-m", "qwen_deploy", "plan", "--json", "--gpu", "RTX 4090"],
    }
    compile_package()
    for argv in commands.values():  # warm the file cache
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    results = {name: float("inf") for name in commands}
    for _ in range(args.runs):  # interleave: noise lands on every command alike
        for name, argv in commands.items():
            results[name] = min(results[name], best_of(argv, 1))
    base = results["python -c pass"]
    lines = [f"| command | best of {args.runs} (ms) | ratio to python -c pass |", "|---|---:|---:|"]
    for name, seconds in results.items():
        lines.append(f"| `{name}` | {seconds * 1000:.1f} | {seconds / base:.2f} |")
    ratio = results["qwen-deploy plan --json"] / base
    lines.append(f"\nplan --json ratio: **{ratio:.2f}** (target <= 2.5): {'met' if ratio <= 2.5 else 'missed'}")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        update_section("plan_latency", "python bench/plan_latency.py", table)


if __name__ == "__main__":
    main()
