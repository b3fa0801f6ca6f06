"""`qwen-deploy plan --json` and `--help` wall time as ratios to a bare `python -c pass` of the same venv
(targets: plan <= 4x, --help <= 2.5x; stretch: plan 2.5x). Paired runs, interleaved (each command right
after its own `python -c pass`), the median of the per-pair ratios: noise on this shared machine hits both
sides of a pair alike. The best time of each is shown too.

    python bench/plan_latency.py [--runs 9]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
import argparse
import statistics
import subprocess
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
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    py = sys.executable
    base = [py, "-c", "pass"]
    commands = {
        "qwen-deploy --help": [py, "-m", "qwen_deploy", "--help"],
        "qwen-deploy plan --json": [py, "-m", "qwen_deploy", "plan", "--json"],
        "qwen-deploy plan --json --gpu 'RTX 4090'": [py, "-m", "qwen_deploy", "plan", "--json", "--gpu", "RTX 4090"],
        "qwen-deploy plan --json --gpu 'RTX 4060 Laptop'": [
            py,
            "-m",
            "qwen_deploy",
            "plan",
            "--json",
            "--gpu",
            "RTX 4060 Laptop",
        ],  # fmt: skip
    }
    compile_package()
    for argv in [base, *commands.values()]:  # warm the file cache
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    ratios: dict[str, list[float]] = {name: [] for name in commands}
    best = {name: float("inf") for name in ["python -c pass", *commands]}
    for _ in range(args.runs):
        for name, argv in commands.items():
            b = best_of(base, 1)
            t = best_of(argv, 1)
            ratios[name].append(t / b)
            best["python -c pass"] = min(best["python -c pass"], b)
            best[name] = min(best[name], t)
    targets = {"qwen-deploy --help": 2.5, "qwen-deploy plan --json": 4.0}
    lines = [
        f"| command | best of {args.runs} (ms) | median ratio of {args.runs} pairs | target |",
        "|---|---:|---:|---:|",
        f"| `python -c pass` | {best['python -c pass'] * 1000:.1f} | 1.00 | |",
    ]
    for name in commands:
        median = statistics.median(ratios[name])
        target = targets.get(name)
        verdict = f"<= {target} ({'met' if median <= target else 'missed'})" if target else ""
        lines.append(f"| `{name}` | {best[name] * 1000:.1f} | {median:.2f} | {verdict} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        update_section("plan_latency", "python bench/plan_latency.py", table)


if __name__ == "__main__":
    main()
