"""`qwen-deploy plan` (what fits, ranked), `models` (built-in profiles) and `gpus` (the GPU catalog)."""

from __future__ import annotations

import json
from typing import Any

import click

from qwen_deploy.cli.options import Text, build_plan, plan_options, print_json, require_choice


@click.command()
@plan_options
@click.option("json_", "--json", is_flag=True, help="Print the plan as JSON (schema qwen-deploy/plan/v1).")
@click.option(
    "-o", "--output", type=Text(), metavar="FILE", help="Also write the plan to FILE (YAML, or JSON for .json)."
)
def plan(json_: bool, output: str | None, **options: Any) -> None:
    """What fits, ranked, with the memory arithmetic shown; the best choice first."""
    result = build_plan(**options)
    data = result.to_dict()
    if output:
        from qwen_deploy.resources import write_atomic

        if output.lower().endswith(".json"):
            text = json.dumps(data, indent=2, allow_nan=False) + "\n"
        else:
            import yaml

            text = yaml.safe_dump(data, sort_keys=False, width=120)
        write_atomic(output, text)
        click.echo(f"wrote {output}", err=True)
    if json_:
        print_json(data)
    else:
        from qwen_deploy import report

        report.print_plan(result)
    require_choice(result)


@click.command()
@click.option("json_", "--json", is_flag=True, help="Print as JSON.")
def models(json_: bool) -> None:
    """List the built-in model profiles."""
    from qwen_deploy.memory import kv_bytes_per_token
    from qwen_deploy.model.profiles import load_profile, profile_names

    rows = []
    for name in profile_names():
        spec = load_profile(name)
        rows.append(
            {
                "name": name,
                "id": spec.id,
                "layers": spec.layers,
                "kv_heads": spec.kv_heads,
                "head_dim": spec.head_dim,
                "max_context": spec.max_context,
                "kv_bytes_per_token_16bit": kv_bytes_per_token(spec.layers, spec.kv_heads, spec.head_dim, "f16"),
                "precisions": [f"{a.format}:{a.precision}" for a in spec.artifacts],
            }
        )
    if json_:
        print_json(rows)
        return
    from qwen_deploy import report

    report.print_models(rows)


@click.command()
@click.option("json_", "--json", is_flag=True, help="Print as JSON.")
def gpus(json_: bool) -> None:
    """List the GPU catalog (`--gpu NAME` takes a key, an alias or the name the driver reports)."""
    from qwen_deploy.hardware.catalog import gpu_catalog

    rows = [
        {
            "key": g.key,
            "name": g.name,
            "backend": g.backend,
            "memory_total_bytes": g.memory_total_bytes,
            "memory_bandwidth_gbps": g.memory_bandwidth_gbps,
            "compute_capability": g.compute_capability,
            "aliases": list(g.aliases),
        }
        for g in gpu_catalog()
    ]
    if json_:
        print_json(rows)
        return
    from qwen_deploy import report

    report.print_gpus(rows)
