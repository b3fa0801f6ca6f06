"""Decode speed of the plan's llama.cpp settings against llama-cpp-python's server defaults, same model, same
prompt, same machine (target >= 1.15x), through plain streamed completions. Each round starts one server, streams a few requests (temperature 0,
the same prompt) and stops it; the two configurations alternate, so drift hits both alike. Decode tokens/s
is measured between the first and the last streamed token (prompt processing is not in it).

    python bench/cpu_throughput.py [--rounds 3] [--requests 3] [--max-tokens 128]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench._report import update_section  # noqa: E402


def serve_and_measure(
    argv: list[str], port: int, log: Path, prompt: str, requests: int, max_tokens: int
) -> list[float]:
    """Decode tokens/s of each request (tokens after the first / time from first to last token)."""
    from qwen_deploy.bench import Target, _stream_one
    from qwen_deploy.client import Endpoint
    from qwen_deploy.launch import Readiness
    from qwen_deploy.procs import stop_group

    env = {k: v for k, v in os.environ.items() if k.lower() not in ("host", "port", "model", "n_ctx")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = Readiness(Endpoint(base), "/v1/models", None)
        deadline = time.monotonic() + 120
        while not ready.check("127.0.0.1", port, 60):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {log}")
            time.sleep(0.1)
        target = Target(base=base, model=str(ready.served_name))

        async def run() -> list[float]:
            import httpx

            speeds = []
            async with httpx.AsyncClient(base_url=base, timeout=600) as client:
                await _stream_one(client, target, prompt, 8, chat=False)  # warm-up
                for _ in range(requests):
                    reply = await _stream_one(client, target, prompt, max_tokens, chat=False)
                    if reply.ok and reply.gaps_s:
                        speeds.append(len(reply.gaps_s) / sum(reply.gaps_s))
            return speeds

        return asyncio.run(run())
    finally:
        stop_group(proc.pid, proc=proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    from qwen_deploy.client import free_port
    from qwen_deploy.hardware.probe import probe
    from qwen_deploy.launch import build_argv
    from qwen_deploy.model.gguf import spec_from_gguf
    from qwen_deploy.planner import Request, plan
    from tests.real_models import GEMMA3, SMOLLM2, fetch

    work = Path(tempfile.mkdtemp(prefix="qd-cpu-"))
    # a plain completion (not chat): the Gemma 3 GGUF has no chat template; the text invites a long answer
    prompt = "The lighthouse keeper climbed the stairs at dusk. That night, the sea"
    hw = probe()
    lines = [
        f"{args.rounds} alternating rounds × {args.requests} requests of {args.max_tokens} tokens, temperature 0; "
        f"{hw.cpu.physical_cores} physical cores, {hw.cpu.logical_cores} threads.",
        "",
        "| model | plan's settings (tok/s, median) | server defaults (tok/s, median) | ratio | target >= 1.15 |",
        "|---|---:|---:|---:|---|",
    ]
    for spec in (SMOLLM2, GEMMA3):
        model = fetch(spec)
        planned, defaults = [], []
        for _ in range(args.rounds):
            port = free_port()
            choice = plan(spec_from_gguf(model), hw, Request(port=port)).choice
            argv = list(build_argv(choice, str(model), "127.0.0.1", port))
            planned += serve_and_measure(argv, port, work / "plan.log", prompt, args.requests, args.max_tokens)
            port = free_port()
            argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port)]
            defaults += serve_and_measure(argv, port, work / "defaults.log", prompt, args.requests, args.max_tokens)
        ratio = statistics.median(planned) / statistics.median(defaults)
        lines.append(
            f"| {model.name} | {statistics.median(planned):.1f} | {statistics.median(defaults):.1f} | "
            f"**{ratio:.2f}** | {'met' if ratio >= 1.15 else 'missed'} |"
        )
    lines += [
        "",
        "The defaults run `python -m llama_cpp.server --model M` as it comes: n_threads = cpu_count // 2, "
        "flash_attn off, logits_all on, n_ctx 2048. The plan sets n_threads to the physical cores, flash attention "
        "on, logits_all off, and the plan's n_ctx. On a 2-CPU machine the default is one thread, so most of the "
        "gain here is the second thread; flash attention and logits_all off account for the rest.",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        update_section("cpu_throughput", "python bench/cpu_throughput.py", table)


if __name__ == "__main__":
    main()
