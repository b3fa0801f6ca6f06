"""Predicted vs logged vLLM 'Available KV cache memory' over the public V1 start-up logs
(tests/data/vllm_v1_public_logs.yaml): one row per launch, the records skipped or reported apart with the
reason, median and worst error by version bucket and GPU class, and the false fits (an over-prediction above
5 %, or a failed launch predicted to fit). Mode (a) predicts the weights from the checkpoint format, as the
planner does; mode (b) takes the logged 'Model loading took' to isolate the rest of the budget.

    python bench/accuracy_vllm.py [--no-write]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402

import yaml  # noqa: E402

from bench import vllm_records  # noqa: E402
from bench._report import update_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", default=str(vllm_records.LOGS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    records = yaml.safe_load(Path(args.logs).read_text())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        a = vllm_records.run("a", records)
        b = vllm_records.run("b", records)
        vllm_records.heldout_activation()
    text = out.getvalue()
    print(text)
    body = (
        f"Over {len(a['rows'])} launches with a known GPU and version (mode a, weights predicted): available-KV "
        f"median error {a['median']:.1f}%, worst {a['worst']:.1f}%, false fits {len(a['false_fits'])} "
        f"(target: median <= 3%, worst <= 8%, 0). Mode b (logged weights): median {b['median']:.1f}%, worst "
        f"{b['worst']:.1f}%. Rules: qwen_deploy/engines/vllm/rules.py and weights.py, one per release 0.10-0.33.0, "
        "each term cited from vLLM's source; docs/sources-vllm-v1.md has the derivations.\n\n```\n"
        + text.strip()
        + "\n```"
    )
    if not args.no_write:
        update_section("accuracy_vllm", "python bench/accuracy_vllm.py", body)


if __name__ == "__main__":
    main()
