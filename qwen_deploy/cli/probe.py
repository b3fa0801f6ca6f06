"""`qwen-deploy probe`: this machine's hardware, as a table or the hardware file (--json)."""

from __future__ import annotations

import click

from qwen_deploy.cli.options import print_json


@click.command()
@click.option("json_", "--json", is_flag=True, help="Print the hardware file (schema qwen-deploy/hardware/v1).")
@click.option("--measure", is_flag=True, help="Also measure memory bandwidth (a second or two).")
def probe(json_: bool, measure: bool) -> None:
    """Show this machine's GPUs, CPU, RAM (cgroup limits applied) and free disk."""
    from qwen_deploy.hardware.probe import probe as probe_hardware

    hw = probe_hardware(measure=measure)
    if json_:
        print_json(hw.to_dict())
        return
    from qwen_deploy import report

    report.print_hardware(hw)
