"""systemd's own exposure score of the units `render systemd` writes (lower is better), for a CPU plan and a
GPU plan: `systemd-analyze security --offline=yes UNIT`. The CPU unit's extra directives are proven against
the real llama.cpp server by tests/test_unit_sandbox.py.

    python bench/unit_security.py [--no-write]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import argparse  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

from bench._report import update_section  # noqa: E402
from qwen_deploy import planner  # noqa: E402
from qwen_deploy.hardware.catalog import simulate  # noqa: E402
from qwen_deploy.model.profiles import load_profile  # noqa: E402
from qwen_deploy.render import RenderOptions, render  # noqa: E402
from tests.conftest import make_hardware  # noqa: E402


def exposure(unit_text: str, name: str) -> tuple[float, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.service"
        path.write_text(unit_text)
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", str(path)], capture_output=True, text=True
        ).stdout
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))
    open_items = [line.split()[1] for line in out.splitlines() if line.startswith("✗")]
    return score, open_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    qwen = load_profile("qwen3-4b-instruct-2507")
    model = Path(tempfile.mkdtemp()) / "Qwen3-4B-Instruct-2507-Q4_K_M.gguf"
    model.write_bytes(b"GGUF")  # the unit names the file; its content does not matter to systemd
    rows = ["| unit | plan | exposure | still open (systemd-analyze's ✗ lines) |", "|---|---|---:|---|"]
    cases = {
        "CPU": (make_hardware(ram_gib=32), RenderOptions(name="qwen3", model_path=str(model))),
        "GPU": (simulate(make_hardware(ram_gib=64), gpus=("RTX 4090",)), RenderOptions(name="qwen3")),
    }
    for label, (hw, opts) in cases.items():
        p = planner.plan(qwen, hw)
        files, _ = render(p, "systemd", opts)
        score, still = exposure(files["qwen3.service"], label.lower())
        rows.append(f"| {label} | {p.choice.label()} | {score} | {', '.join(still)} |")
    body = "\n".join(rows) + (
        "\n\nBefore this change the same units scored 3.2 (CPU) and 3.5 (GPU). The CPU unit adds SystemCallFilter="
        "@system-service ~@privileged @resources, MemoryDenyWriteExecute=, ProcSubset=pid, ProtectProc=invisible, "
        "PrivateUsers=, PrivateMounts= and drops AF_NETLINK; tests/test_unit_sandbox.py starts the real llama.cpp "
        "server under those restrictions. The GPU unit adds only ProtectProc= and PrivateMounts=: the rest is "
        "unproven without a GPU."
    )
    print(body)
    if not args.no_write:
        update_section("unit_security", "python bench/unit_security.py", body)


if __name__ == "__main__":
    main()
