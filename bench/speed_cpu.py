"""Predicted prefill and decode speeds (qwen_deploy/speed.py, what `plan` shows) against llama-server's own
timings on this machine, in one run: SmolLM2-135M, Gemma 3 270M and the full-size synthetic Qwen3-4B GGUF at
Q4_K_M and Q8_0 (random weights run at the real speed). Target: within 15% for the 4B-sized models, both
phases; the tiny models are reported as they are.

Each model runs under the plan's own llama-server command (--engine llama-server, one slot, the plan's
threads and batch sizes); each prompt is a list of distinct token ids (exactly N tokens, nothing cached),
answered with 32 tokens (EOS ignored); `timings.prompt_per_second` is prefill of N tokens from an empty
cache, `predicted_per_second` decode at depth N.

    python bench/speed_cpu.py [--quick] [--no-write] [--implied]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

from bench._report import update_section  # noqa: E402

PREDICT = 32


def post(url: str, body: dict, timeout: float = 1800) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read())


def wait_health(base: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("llama-server did not become healthy")


def plan_for(path: Path, context: int):
    from qwen_deploy.hardware.probe import probe
    from qwen_deploy.model.resolve import resolve_model
    from qwen_deploy.planner import Request, plan

    model = resolve_model(str(path))
    hw = probe()
    result = plan(model, hw, Request(context=context, engine="llama-server"))
    if result.choice is None:
        raise RuntimeError(f"nothing fits for {path.name}")
    return model, hw, result.choice


def measure(path: Path, depths: list[int], context: int, repeats: int = 3) -> dict:
    """Each depth `repeats` times, the fastest kept (another program on a shared machine only slows a run)."""
    from qwen_deploy import speed
    from qwen_deploy.client import free_port

    model, hw, choice = plan_for(path, context)
    port = free_port()
    choice = choice.at(port=port)
    rates = speed.cpu_rates(hw, choice.precision, choice.kv_cache_dtype)
    rng = random.Random(7)
    low, high = 1000, min(model.vocab_size - 1000, 30000)
    rows = []
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(list(choice.command), stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_health(base, proc)
            post(base + "/completion", {"prompt": [low, low + 1], "n_predict": 2, "cache_prompt": False})
            for n in depths:
                runs = []
                for _ in range(repeats):
                    prompt = [rng.randrange(low, high) for _ in range(n)]
                    body = {"prompt": prompt, "n_predict": PREDICT, "ignore_eos": True, "temperature": 0,
                            "cache_prompt": False}  # fmt: skip
                    runs.append(post(base + "/completion", body)["timings"])
                best_prefill = max(runs, key=lambda t: t["prompt_per_second"])
                t = dict(best_prefill, predicted_per_second=max(r["predicted_per_second"] for r in runs))
                rows.append({
                    "tokens": t["prompt_n"],
                    "prefill_measured": t["prompt_per_second"],
                    "prefill_ms": t["prompt_ms"],
                    "prefill_predicted": t["prompt_n"] / speed.prefill_seconds(model, rates, t["prompt_n"]),
                    "decode_measured": t["predicted_per_second"],
                    "decode_predicted": speed.decode_tokens_per_s(
                        model, choice.artifact, choice.kv_cache_dtype, rates, t["prompt_n"] + PREDICT // 2
                    ),
                })  # fmt: skip
                print(path.name, rows[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {"model": path.name, "precision": choice.precision, "threads": choice.settings["n_threads"],
            "params": speed.layer_matrix_params(model), "rows": rows, "rates": rates}  # fmt: skip


def implied(result: dict, model_geometry) -> str:
    """Per-core rates these measurements imply (what CPU_RATES would need to be), for calibration."""
    from qwen_deploy import speed

    rows, threads = result["rows"], result["threads"]
    if len(rows) < 2:
        return ""
    (n1, t1), (n2, t2) = [(r["tokens"], r["prefill_ms"] / 1000) for r in (rows[0], rows[-1])]
    p2 = 2 * speed.layer_matrix_params(model_geometry)
    a2 = speed._attention_flops_per_pair(model_geometry) / 2
    # t = p2·n / Rm + a2·n² / Ra: two equations in 1/Rm and 1/Ra
    det = n1 * n2 * n2 - n2 * n1 * n1
    inv_rm = (t1 * n2 * n2 - t2 * n1 * n1) / (p2 * det)
    inv_ra = (n1 * t2 - n2 * t1) / (a2 * det)
    lm_head = model_geometry.vocab_size * model_geometry.hidden_size
    dec = min(rows, key=lambda r: r["tokens"])
    flops = 2 * (speed.layer_matrix_params(model_geometry) + lm_head)
    rd = flops * dec["decode_measured"]
    return (
        f"{result['model']}: matmul {1 / inv_rm / threads / 1e9:.1f} GFLOP/s/core, attention "
        f"{(1 / inv_ra / threads / 1e9) if inv_ra > 0 else float('inf'):.1f}, decode {rd / threads / 1e9:.1f} "
        f"(at depth {dec['tokens']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 4B Q4_K_M only, two depths")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--implied", action="store_true", help="print the per-core rates the runs imply")
    parser.add_argument("--depths", type=int, nargs="+", default=[512, 1024, 4096], help="for the 4B-sized models")
    parser.add_argument("--repeats", type=int, default=1, help="runs per depth, the fastest kept")
    args = parser.parse_args()
    from qwen_deploy.model.resolve import resolve_model
    from tests.real_models import GEMMA3, SMOLLM2, fetch
    from tests.synthetic_gguf import full_size_qwen3_4b

    big = [full_size_qwen3_4b("Q4_K_M")] if args.quick else [full_size_qwen3_4b("Q4_K_M"), full_size_qwen3_4b("Q8_0")]
    small = [] if args.quick else [fetch(SMOLLM2), fetch(GEMMA3)]
    results = []
    for path in big:
        results.append((measure(path, args.depths, context=max(args.depths) + 256, repeats=args.repeats), True))
    for path in small:
        results.append((measure(path, [512, 2048], context=4096, repeats=args.repeats), False))
    lines = [
        "| model | prompt / depth (tokens) | prefill predicted | prefill measured | ratio | decode predicted | "
        "decode measured | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for result, judged in results:
        for r in result["rows"]:
            pr = r["prefill_predicted"] / r["prefill_measured"]
            dr = r["decode_predicted"] / r["decode_measured"]
            if judged:
                worst = max(worst, abs(pr - 1), abs(dr - 1))
            lines.append(
                f"| {result['model']}{'' if judged else ' (tiny: as is)'} | {r['tokens']:,} | "
                f"{r['prefill_predicted']:.1f} | {r['prefill_measured']:.1f} | {pr:.2f} | "
                f"{r['decode_predicted']:.2f} | {r['decode_measured']:.2f} | {dr:.2f} |"
            )
    lines.append(
        f"\nWorst error on the 4B-sized models: **{worst * 100:.1f}%** (target within 15%): "
        f"{'met' if worst <= 0.15 else 'missed'}. tok/s; predictions from the plan's rates for this machine "
        f"({results[0][0]['threads']} threads)."
    )
    if args.implied:
        for result, _ in results:
            print(implied(result, resolve_model(str(next(p for p in big + small if p.name == result["model"])))))
    table = "\n".join(lines)
    print(table)
    if not args.no_write and not args.quick:
        update_section("speed_cpu", "python bench/speed_cpu.py", table)


if __name__ == "__main__":
    main()
