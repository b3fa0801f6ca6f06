"""Predicted vs logged llama.cpp GPU buffers over public CUDA and Metal start-up logs
(tests/data/llamacpp_gpu_public_logs.yaml): per buffer, KV exact, the rest within 5 %, and Metal's
working set by RAM size. No GPU is needed: the logs are the engine's own reports.

    python bench/accuracy_llamacpp_gpu.py [--no-write]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import argparse  # noqa: E402

import yaml  # noqa: E402

from bench import llamacpp_gpu_records as recs  # noqa: E402
from bench._report import update_section  # noqa: E402


def report() -> str:
    data = yaml.safe_load(recs.LOGS.read_text(encoding="utf-8"))
    launches = [x for x in data["records"] if x["kind"] == "launch"]
    sets = [x for x in data["records"] if x["kind"] == "working_set"]
    rows = [row for rec in launches for row in recs.evaluate_launch(rec)]
    ws = [recs.evaluate_working_set(rec) for rec in sets]
    out: list[str] = []
    cur = None
    for row in rows:
        if row["record"] != cur:
            cur = row["record"]
            out.append(f"\n{cur}")
        pm = "-" if row["predicted_mib"] is None else f"{row['predicted_mib']:10.2f}"
        err = f"{row['error_pct']:+7.2f}%" if "error_pct" in row else "       "
        mark = {True: "ok", False: "MISS", None: "(info)"}[row["ok"]]
        out.append(f"  {row['buffer']:22s} logged {row['logged_mib']:10.2f}  predicted {pm:>10s}  {err}  {mark}")
    out.append("\nMetal working set (recommendedMaxWorkingSetSize)")
    for w in ws:
        out.append(
            f"  {w['record']:32s} {w['ram_gib']:>4} GiB  logged {w['logged_mib']:10.2f} MiB  predicted "
            f"{w['predicted_mib']:10.2f} ({w['model']})  {w['error_pct']:+6.2f}%  {'ok' if w['ok'] else 'MISS'}"
        )
    scored = [x for x in rows if x["ok"] is not None]
    kv = [x for x in scored if x["kv"]]
    other = [x for x in scored if not x["kv"]]
    out.append(f"\nSummary: {len(launches)} launches, {len(scored)} scored buffers")
    out.append(f"  KV exact:            {sum(x['ok'] for x in kv)}/{len(kv)}")
    out.append(f"  buffers within 5%:   {sum(x['ok'] for x in other)}/{len(other)}")
    worst = max(other, key=lambda x: abs(x.get("error_pct", 0)), default=None)
    if worst:
        out.append(f"  worst scored buffer: {worst['record']} {worst['buffer']} {worst.get('error_pct')}%")
    out.append(f"  working-set records: {sum(w['ok'] for w in ws)}/{len(ws)} within 1%")
    misses = [x for x in scored if not x["ok"]]
    for x in misses:
        out.append(f"  MISS {x['record']} {x['buffer']}: logged {x['logged_mib']} predicted {x['predicted_mib']}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    text = report()
    print(text)
    if not args.no_write:
        summary = "\n".join(
            line
            for line in text.splitlines()
            if line.startswith(("Summary", "  KV", "  buffers", "  worst", "  working", "  MISS"))
        )
        update_section(
            "accuracy_llamacpp_gpu",
            "python bench/accuracy_llamacpp_gpu.py",
            summary + "\n\n```\n" + text.strip() + "\n```",
        )


if __name__ == "__main__":
    main()
