"""Human output: rich tables for probe, plan and models (imported only when a table is printed)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from qwen_deploy.candidates import Candidate, Plan, ram_budget
from qwen_deploy.hardware.types import Hardware
from qwen_deploy.units import format_size

console = Console(highlight=False, soft_wrap=False)
if not console.is_terminal:  # piped output: do not squeeze the table into 80 columns
    console = Console(highlight=False, soft_wrap=False, width=160)


def print_hardware(hw: Hardware) -> None:
    table = Table(title="This machine", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    bw = f", {hw.cpu.memory_bandwidth_gbps} GB/s measured" if hw.cpu.memory_bandwidth_gbps else ""
    table.add_row("CPU", f"{hw.cpu.model} — {hw.cpu.physical_cores} cores / {hw.cpu.logical_cores} threads{bw}")
    table.add_row("CPU flags", " ".join(hw.cpu.flags) or "-")
    table.add_row(
        "RAM", f"{format_size(hw.memory.total_bytes)} total, {format_size(hw.memory.available_bytes)} available"
    )
    if not hw.gpus:
        table.add_row("GPUs", "none (no NVIDIA driver or no GPU)")
    for gpu in hw.gpus:
        table.add_row(
            f"GPU {gpu.index}",
            f"{gpu.name} — {format_size(gpu.memory_total_bytes)} total, {format_size(gpu.memory_free_bytes)} free, "
            f"compute capability {gpu.compute_capability}",
        )
    table.add_row("Disk", f"{format_size(hw.disk.free_bytes)} free at {hw.disk.path}")
    console.print(table)


def _context(c: Candidate) -> str:
    return f"{c.context:,}" if c.fits else (f"max {c.max_context:,}" if c.max_context else "-")


def duration(seconds: float | None) -> str:
    """A fill time for people: 42 s, 7.5 min, 2.1 h ('-' when not modelled)."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _why(c: Candidate) -> str:
    """The table's short reason; the full sentence with the arithmetic is in --json and below the table."""
    if not c.fits:
        return c.reason
    return f"{format_size(c.memory.kv_cache_bytes)} KV holds {c.memory.kv_capacity_tokens:,} tokens"


def print_plan(plan: Plan) -> None:
    hw = plan.hardware
    where = ", ".join(f"{g.name} ({format_size(g.memory_total_bytes)})" for g in hw.gpus) or "no GPU"
    console.print(
        f"[bold]{plan.model.id}[/bold] on {where}; {format_size(hw.memory.total_bytes)} RAM "
        f"({format_size(ram_budget(hw))} for engines on the CPU), {hw.cpu.physical_cores} cores"
    )
    table = Table(show_lines=False)
    for col, kw in [
        ("", {}),
        ("engine", {}),
        ("precision", {}),
        ("KV", {}),
        ("context", {"justify": "right"}),
        ("concurrency", {"justify": "right"}),
        ("memory", {"justify": "right"}),
        ("decode tok/s", {"justify": "right"}),
        ("prefill tok/s", {"justify": "right"}),
        ("fill", {"justify": "right"}),
        ("why", {"overflow": "fold", "ratio": 1}),
    ]:
        table.add_column(col, **kw)
    for c in plan.candidates:
        mark = "[green]✓ chosen[/green]" if c is plan.choice else ("fits" if c.fits else "[red]✗[/red]")
        engine = c.engine + (f" tp{c.tensor_parallel_size}" if c.tensor_parallel_size > 1 else "")
        engine += f" ×{c.replicas}" if c.replicas > 1 else ""
        table.add_row(
            mark,
            engine,
            c.precision,
            c.kv_cache_dtype,
            _context(c),
            f"{c.concurrency:.1f}" if c.fits else "-",
            format_size(c.memory.total_bytes),
            f"{c.decode_tokens_per_s:.1f}" if c.decode_tokens_per_s < 10 else f"{c.decode_tokens_per_s:.0f}",
            "-" if c.prefill_tokens_per_s is None else f"{c.prefill_tokens_per_s:.0f}",
            duration(c.fill_seconds) if c.fits else "-",
            _why(c),
        )
    console.print(table)
    if plan.choice:
        console.print(
            f"[bold]choice:[/bold] {plan.choice.label()} at {plan.choice.context:,} tokens — {plan.choice.reason}"
        )
        c = plan.choice
        if c.prefill_tokens_per_s is not None:
            console.print(
                f"speed (predicted): decode {c.decode_tokens_per_s:.1f} tok/s, prefill "
                f"{c.prefill_tokens_per_s:.0f} tok/s; the whole {c.context:,}-token context prefills in "
                f"{duration(c.fill_seconds)} (--max-fill-time {plan.request.max_fill_time:g} s bounds --context auto)"
            )
        print_breakdown(plan.choice, plan.model.tokenizer_merges)


def print_devices(c: Candidate) -> None:
    """One row per device that holds anything (llama.cpp's names: CUDA0, MTL0, CPU; one per GPU for vLLM)."""
    title = f"Memory of the choice by device ({c.gpu_layers} layers on the GPU)" if c.gpu_layers else (
        "Memory of the choice by device")  # fmt: skip
    table = Table(title=title, box=None)
    for col in ("device", "weights", "KV", "compute", "other", "total", "budget"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for d in c.memory.devices:
        table.add_row(d.name, *(format_size(v) for v in (
            d.model_bytes, d.kv_bytes, d.compute_bytes, d.other_bytes, d.total_bytes, d.budget_bytes)))  # fmt: skip
    console.print(table)


def print_breakdown(c: Candidate, merges: int = 0) -> None:
    m = c.memory
    if c.device == "gpu" and c.gpu_layers:  # llama.cpp with offload: the devices are the breakdown
        print_devices(c)
        console.print("[bold]command:[/bold] " + " ".join(c.command))
        return
    table = Table(title=f"Memory of the choice ({'per GPU' if c.device == 'gpu' else 'RAM'})", box=None)
    table.add_column("part")
    table.add_column("bytes", justify="right")
    table.add_column("", justify="right")
    rows: list[tuple[str, int, str]] = [("budget", m.budget_bytes, "")]
    parts = dict(m.parts)
    repacked = parts.pop("repacked_weights_bytes", 0)
    rows.append(("weights", m.weights_bytes, f"{format_size(repacked)} of them repacked" if repacked else ""))
    reserved = parts.pop("compute_buffer_bytes", None)
    for name, value in parts.items():
        if name == "available_kv_bytes":
            continue
        note = ""
        if name == "compute_resident_bytes" and reserved is not None:
            note = f"of {format_size(reserved)} reserved (one logits row per ubatch)"
        if name == "tokenizer_merges_bytes" and value and merges:
            note = f"{merges:,} BPE merges × {value // merges} B"
        rows.append((name.removesuffix("_bytes").replace("_", " "), value, note))
    rows.append(("KV cache", m.kv_cache_bytes, f"{m.kv_capacity_tokens:,} tokens × {m.kv_bytes_per_token:,} B"))
    rows.append(("total", m.total_bytes, ""))
    for name, value, note in rows:
        table.add_row(name, format_size(value), note)
    console.print(table)
    console.print("[bold]command:[/bold] " + " ".join(c.command))


def print_models(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Built-in model profiles")
    for col in ("name", "id", "layers", "KV heads × dim", "max context", "KV/token (16-bit)", "precisions"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["id"],
            str(r["layers"]),
            f"{r['kv_heads']} × {r['head_dim']}",
            f"{r['max_context']:,}",
            f"{r['kv_bytes_per_token_16bit']:,} B",
            ", ".join(r["precisions"]),
        )
    console.print(table)


def print_gpus(rows: list[dict[str, Any]]) -> None:
    table = Table(title="GPU catalog (--gpu NAME)")
    for col in ("key", "reported name", "memory", "bandwidth", "compute", "aliases"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["key"],
            r["name"],
            format_size(r["memory_total_bytes"]),
            f"{r['memory_bandwidth_gbps']:g} GB/s",
            r["compute_capability"] or r["backend"],
            ", ".join(r["aliases"]),
        )
    console.print(table)


def print_status(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Servers started by qwen-deploy")
    for column in ("name", "state", "pid", "url", "listens on", "engine", "model", "context", "up", "log"):
        table.add_column(column, no_wrap=column in ("name", "url", "log"))
    for row in rows:
        answering = "" if row["answering"] else " (not answering)"
        table.add_row(
            row["name"],
            row["state"] + answering,
            str(row["pid"]),
            row["url"] + "/v1",
            row["bind"],
            row["engine"],
            row["served_name"],
            f"{row['context']:,}",
            f"{row['uptime_s']:.0f} s",
            row["log"],
        )
    console.print(table)


def print_bench(result: dict[str, Any]) -> None:
    def ms(pair: dict[str, Any], key: str) -> str:
        value = pair.get(key)
        return "-" if value is None else f"{value:,.0f}"

    prompt = f"{result['prompt_tokens']} prompt tokens" if result["prompt_tokens"] else "prompt length estimated"
    table = Table(title=f"{result['model']} at {result['url']} ({prompt}, up to {result['max_tokens']} out)")
    for column in ("concurrency", "ok/requests", "errors", "cut short", "TTFT p50 ms", "TTFT p95 ms",
                   "ITL p50 ms", "ITL p95 ms", "out tok/s", "req/s"):  # fmt: skip
        table.add_column(column, justify="right")
    for level in result["levels"]:
        table.add_row(
            str(level["concurrency"]),
            f"{level['ok']}/{level['requests']}",
            str(level["errors"]),
            str(level["cut_short"]),
            ms(level["ttft_ms"], "p50"),
            ms(level["ttft_ms"], "p95"),
            ms(level["itl_ms"], "p50"),
            ms(level["itl_ms"], "p95"),
            f"{level['output_tokens_per_s'] or 0:.1f}",
            f"{level['requests_per_s'] or 0:.2f}",
        )
    console.print(table)
    plan = result.get("plan")
    if plan and plan.get("serving"):
        console.print(f"plan: {plan['serving']}; predicted single-stream decode {plan['decode_tokens_per_s']} tok/s.")
    for level in result["levels"]:
        if level["first_error"]:
            console.print(f"concurrency {level['concurrency']}: first error: {level['first_error']}")
