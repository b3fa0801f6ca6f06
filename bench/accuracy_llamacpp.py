"""Predicted vs engine-reported memory for the real llama-cpp-python server.

For each model (the synthetic Qwen3-4B-shaped GGUF, SmolLM2-135M Q4_1, Gemma 3 270M Q4_K_M with
sliding-window layers) × n_ctx × KV type × flash attention, plan with qwen-deploy, start the server with
the planned argv, send a prompt of about 600 tokens (more than one 512-token ubatch, so the compute buffer
is used) and one of 1 token, then compare:
  KV, model (mmap + repacked) and compute buffers: the server's own log lines (targets: KV exact,
  buffers within 5%); peak RSS (VmHWM): the plan's total must not be below it and should be within 20%
  above it.

    python bench/accuracy_llamacpp.py [--quick | --full-size] [--no-write]

--full-size runs a GGUF with every dimension of Qwen3-4B (hidden 2560, MLP 9728: the compute buffer and
the weights at their real size; ~10 minutes, a 600-token prompt takes ~45 s on 2 cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
import argparse
import itertools
import tempfile
from dataclasses import replace
from pathlib import Path

from bench._report import update_section  # noqa: E402
from qwen_deploy.engines import llamacpp
from qwen_deploy.hardware.probe import probe
from qwen_deploy.model.gguf import spec_from_gguf
from qwen_deploy.planner import Request, plan
from tests.engine_harness import free_port, peak_rss_bytes, running_server
from tests.real_models import GEMMA3, SMOLLM2, fetch
from tests.synthetic_gguf import QWEN3_4B_ATTENTION, full_size_qwen3_4b, write_synthetic_gguf

MiB = 1024**2


def err(pred: float, real: float) -> str:
    if real == 0:
        return "exact" if pred == 0 else f"+{pred / MiB:.1f} MiB"
    e = (pred - real) / real * 100
    return "exact" if abs(pred - real) < 0.01 * MiB else f"{e:+.1f}%"


def measure(model_path: Path, n_ctx: int, kv: str, flash_attn: bool, workdir: Path) -> dict:
    spec = spec_from_gguf(model_path)
    port = free_port()
    hw = probe()
    p = plan(spec, hw, Request(context=n_ctx, kv_cache_dtype=kv, engine="llamacpp", port=port))
    choice = p.choice
    if choice is None:
        raise RuntimeError(p.candidates[0].reason)
    est = choice.memory
    if not flash_attn:  # re-plan the same candidate without flash attention
        from qwen_deploy.engines.llamacpp.memory import llamacpp_repack
        from qwen_deploy.engines.llamacpp.plan import estimate as llamacpp_estimate

        repack = llamacpp_repack(choice.artifact.tensors, hw.cpu.flags)
        est = llamacpp_estimate(spec, choice.artifact.weights_bytes, repack, est.budget_bytes, n_ctx, kv, False)
        args = dict(choice.engine_args, flash_attn=False)
        choice = replace(choice, memory=est, engine_args=args, command=tuple(llamacpp.command(args)))
    log = workdir / f"{model_path.stem}-{n_ctx}-{kv}-{flash_attn}.log"
    with running_server(list(choice.command), port, log) as server:
        server.complete(server.prompt_of(min(600, n_ctx - 16)), max_tokens=4)
        server.complete("Hello", max_tokens=1)
        peak = peak_rss_bytes(server.proc.pid)
        reported = llamacpp.parse_memory_log(server.log_text())
    model_real = sum(reported["model_buffers"].values())
    return {
        "model": model_path.stem,
        "n_ctx": est.counts["n_ctx_padded"],
        "kv": kv,
        "fa": "on" if flash_attn else "off",
        "kv_pred": est.kv_cache_bytes,
        "kv_real": reported["kv_bytes"],
        "model_pred": est.weights_bytes,
        "model_real": model_real,
        "compute_pred": est.parts["compute_buffer_bytes"],
        "compute_real": reported["compute_buffers"].get("CPU", 0),
        "total_pred": est.total_bytes,
        "peak_rss": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n_ctx 2048 and 8192 only, flash attention on")
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="instead: a GGUF with every dimension of Qwen3-4B (Q8_0, 4.3 GB, written once), n_ctx 4096 and 32768",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.full_size:
            models = [full_size_qwen3_4b()]
        else:
            models = [
                write_synthetic_gguf(work / "synthetic-qwen3-4b-shape.gguf", QWEN3_4B_ATTENTION),
                fetch(SMOLLM2),
                fetch(GEMMA3),
            ]
        contexts = [4096, 32768] if args.full_size else [2048, 8192] if args.quick else [2048, 8192, 32768]
        settings = [("f16", True), ("q8_0", True)] + ([] if args.quick else [("f16", False)])
        rows = []
        limits = {m: spec_from_gguf(m).max_context for m in models}
        for model, n_ctx, (kv, fa) in itertools.product(models, contexts, settings):
            if n_ctx > limits[model]:
                continue  # SmolLM2 stops at 8192 tokens
            row = measure(model, n_ctx, kv, fa, work)
            rows.append(row)
            print(row, flush=True)
    lines = [
        "| model | n_ctx | KV | FA | KV pred/real (MiB) | model buffers pred/real (MiB) | compute pred/real (MiB) "
        "| plan total (MiB) | peak RSS (MiB) | total vs peak |",
        "|---|---:|---|---|---|---|---|---:|---:|---:|",
    ]
    worst = {"kv": 0.0, "model": 0.0, "compute": 0.0}
    below, above20 = 0, 0
    for r in rows:
        for key in worst:
            real = r[f"{key}_real"]
            if real:
                worst[key] = max(worst[key], abs(r[f"{key}_pred"] - real) / real)
        ratio = r["total_pred"] / r["peak_rss"]
        below += ratio < 1
        above20 += ratio > 1.2
        lines.append(
            f"| {r['model']} | {r['n_ctx']} | {r['kv']} | {r['fa']} "
            f"| {r['kv_pred'] / MiB:.2f} / {r['kv_real'] / MiB:.2f} ({err(r['kv_pred'], r['kv_real'])}) "
            f"| {r['model_pred'] / MiB:.2f} / {r['model_real'] / MiB:.2f} ({err(r['model_pred'], r['model_real'])}) "
            f"| {r['compute_pred'] / MiB:.2f} / {r['compute_real'] / MiB:.2f} ({err(r['compute_pred'], r['compute_real'])}) "
            f"| {r['total_pred'] / MiB:.0f} | {r['peak_rss'] / MiB:.0f} | {ratio:.2f}x |"
        )
    lines.append(
        f"\nWorst error: KV {worst['kv'] * 100:.2f}%, model buffers {worst['model'] * 100:.2f}%, "
        f"compute {worst['compute'] * 100:.2f}% (targets: KV exact, buffers 5%). Plan total below the measured peak "
        f"in {below} of {len(rows)} runs; more than 20% above it in {above20}. The KV cache is zeroed at start "
        "(resident at once); the compute buffer and the work buffer are reserved for a full ubatch at the full "
        "context and only touched as far as a request reaches, and mmap'ed weights count once read."
    )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        suffix = "_full_size" if args.full_size else ""
        command = "python bench/accuracy_llamacpp.py" + (" --full-size" if args.full_size else "")
        update_section("accuracy_llamacpp" + suffix, command, table)


if __name__ == "__main__":
    main()
