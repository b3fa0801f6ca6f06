"""Public llama.cpp CUDA and Metal start-up logs (tests/data/llamacpp_gpu_public_logs.yaml, each record
quoting its source lines) predicted with qwen-deploy's offload rules (engines/llamacpp/offload.py): per
buffer, predicted vs logged. Shared by bench/accuracy_llamacpp_gpu.py and tests/test_llamacpp_offload.py.

Geometry comes from each model's config (GEOMETRIES below, from the Hugging Face config.json of the
model family); tensors are the exact llama-quantize mix for the record's ftype (gpu_rules.gguf_tensors).
A record's `score` list says which logged buffers are checked; the rest are printed as informational.
Pass criteria (the brief): KV buffers exact (to the printed 0.01 MiB), every scored buffer within 5%.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwen_deploy.engines.llamacpp import offload as r
from qwen_deploy.hardware.catalog import metal_working_set_bytes

LOGS = Path(__file__).resolve().parent.parent / "tests" / "data" / "llamacpp_gpu_public_logs.yaml"
MiB = r.MiB
QWEN3_4B = r.Geometry(
    layers=36,
    hidden=2560,
    intermediate=9728,
    attention_heads=32,
    kv_heads=8,
    head_dim=128,
    vocab=151936,
    tied=True,
    qk_norm=True,
)

# config.json of each family (Qwen/Qwen3-*, Qwen/Qwen2.5-*, meta-llama/Llama-3.2-3B).
GEOMETRIES: dict[str, r.Geometry] = {
    "qwen3-4b": QWEN3_4B,
    "qwen3-1.7b": r.Geometry(
        layers=28,
        hidden=2048,
        intermediate=6144,
        attention_heads=16,
        kv_heads=8,
        head_dim=128,
        vocab=151936,
        tied=True,
        qk_norm=True,
    ),
    "qwen2.5-3b": r.Geometry(
        layers=36,
        hidden=2048,
        intermediate=11008,
        attention_heads=16,
        kv_heads=2,
        head_dim=128,
        vocab=151936,
        tied=True,
        qkv_bias=True,
    ),
    "qwen2.5-7b": r.Geometry(
        layers=28,
        hidden=3584,
        intermediate=18944,
        attention_heads=28,
        kv_heads=4,
        head_dim=128,
        vocab=152064,
        tied=False,
        qkv_bias=True,
    ),
    "qwen2.5-14b": r.Geometry(
        layers=48,
        hidden=5120,
        intermediate=13824,
        attention_heads=40,
        kv_heads=8,
        head_dim=128,
        vocab=152064,
        tied=False,
        qkv_bias=True,
    ),
    "qwen2.5-32b": r.Geometry(
        layers=64,
        hidden=5120,
        intermediate=27648,
        attention_heads=40,
        kv_heads=8,
        head_dim=128,
        vocab=152064,
        tied=False,
        qkv_bias=True,
    ),
    "llama3.2-3b": r.Geometry(
        layers=28, hidden=3072, intermediate=8192, attention_heads=24, kv_heads=8, head_dim=128, vocab=128256, tied=True
    ),
    # qwen35 hybrid from the log's own print_info: n_layer_all 65 (64 + 1 MTP block), attention every 4th
    # layer (full_attention_interval 4 -> il % 4 == 3), 4 KV heads of 256; only placement/KV are used.
    "qwen3.8-27b-hybrid": r.Geometry(
        layers=65,
        hidden=5120,
        intermediate=17408,
        attention_heads=24,
        kv_heads=4,
        head_dim=256,
        vocab=248320,
        tied=False,
        kv_layers=tuple(range(3, 64, 4)),
    ),
}


def _flash(rec: dict[str, Any]) -> bool:
    if "flash_attn_resolved" in rec:
        return bool(rec["flash_attn_resolved"])
    fa = str(rec.get("flash_attn")).lower()
    # enabled / on / auto -> enabled; unknown: auto resolves to enabled on CUDA and Metal
    return not fa.startswith(("off", "0", "disabled"))


def _int(v: Any, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def predict(rec: dict[str, Any]) -> dict[str, Any]:
    g = GEOMETRIES[rec["geometry"]]
    tensors = r.gguf_tensors(g, rec["ftype"]) if rec.get("ftype") else []
    ngl = _int(rec.get("n_gpu_layers"), _int(rec.get("n_gpu_layers_assumed"), -1))
    return r.device_breakdown(
        geometry=g,
        tensors=tensors,
        n_gpu_layers=ngl,
        n_ctx=int(rec["n_ctx"]),
        type_k=rec.get("type_k") or "f16",
        type_v=rec.get("type_v") or "f16",
        flash_attn=_flash(rec),
        n_ubatch=_int(rec.get("n_ubatch"), 512),
        n_batch=_int(rec.get("n_batch"), 2048),
        backend=rec["backend"],
        offload_kqv=rec.get("offload_kqv", True),
        n_seq=_int(rec.get("n_seq"), 1),
        use_mmap=rec.get("use_mmap", True),
        n_outputs_max=_int(rec.get("n_outputs_max"), 0),
        kv_unified=bool(rec.get("kv_unified", False)),
        era=rec.get("era") or "vendored",
    )


def evaluate_launch(rec: dict[str, Any]) -> list[dict[str, Any]]:
    pred = predict(rec)["_buffers"]
    rows = []
    for key, logged in rec["buffers"].items():
        p = pred.get(key)
        row = {
            "record": rec["id"],
            "buffer": key,
            "logged_mib": float(logged),
            "predicted_mib": None if p is None else round(p / MiB, 2),
            "scored": key in rec.get("score", []),
        }
        if p is not None and logged:
            row["error_pct"] = round(100 * (p / MiB - logged) / logged, 2)
        row["kv"] = key.endswith(" KV")
        row["ok"] = _ok(row)
        rows.append(row)
    return rows


def _ok(row: dict[str, Any]) -> bool | None:
    if not row["scored"]:
        return None
    if row["predicted_mib"] is None:
        return False
    if row["kv"]:
        return abs(row["predicted_mib"] - row["logged_mib"]) <= 0.005
    return abs(row.get("error_pct", 0.0)) <= 5.0 or abs(row["predicted_mib"] - row["logged_mib"]) <= 0.02


def evaluate_working_set(rec: dict[str, Any]) -> dict[str, Any]:
    ram = int(rec["ram_gib"] * r.GiB)
    if "recommended_max_working_set_mb" in rec:
        logged = rec["recommended_max_working_set_mb"] * 1e6
    elif "recommended_max_working_set_gib" in rec:
        logged = rec["recommended_max_working_set_gib"] * r.GiB
    else:
        logged = rec["recommended_max_working_set_mib"] * MiB
    macos = "classic" if rec.get("classic") is not False else "26"
    pred = metal_working_set_bytes(ram, rec.get("wired_limit_mb"), macos=macos)
    err = 100 * (pred - logged) / logged
    return {
        "record": rec["id"],
        "ram_gib": rec["ram_gib"],
        "model": macos if not rec.get("wired_limit_mb") else "wired",
        "logged_mib": round(logged / MiB, 2),
        "predicted_mib": round(pred / MiB, 2),
        "error_pct": round(err, 2),
        "ok": abs(err) <= 1.0,
    }
