"""Model specs from built-in profiles, Hugging Face folders and GGUF headers."""

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_deploy.errors import UsageError
from qwen_deploy.model.gguf import spec_from_gguf
from qwen_deploy.model.profiles import load_profile, profile_names
from qwen_deploy.model.resolve import resolve_model
from qwen_deploy.model.types import count_parameters
from qwen_deploy.planner import Request, plan
from tests.conftest import make_hardware
from tests.synthetic_gguf import SyntheticShape, write_synthetic_gguf


def test_qwen3_4b_profile_matches_its_config():
    spec = load_profile("Qwen/Qwen3-4B-Instruct-2507")
    assert (spec.layers, spec.hidden_size, spec.intermediate_size) == (36, 2560, 9728)
    assert (spec.attention_heads, spec.kv_heads, spec.head_dim) == (32, 8, 128)
    assert (spec.vocab_size, spec.max_context, spec.tied_embeddings) == (151936, 262144, True)
    # embed 151936 × 2560 = 388,956,160 + 36 × 100,930,816 + 2,560 = 4,022,468,096
    assert count_parameters(spec, qk_norm=True) == spec.parameters == 4_022_468_096
    bf16 = spec.artifact("safetensors", "bf16")
    assert bf16.weights_bytes == 2 * 4_022_468_096
    assert {a.precision for a in spec.artifacts if a.format == "gguf"} == {"q4_k_m", "q5_k_m", "q6_k", "q8_0"}


@pytest.mark.parametrize("name", ["llama-3-8b-instruct", "mistral-7b-instruct-v0.3", "phi-3-mini-4k-instruct"])
def test_comparison_profiles_parameter_counts(name):
    spec = load_profile(name)
    assert count_parameters(spec) == spec.parameters
    assert spec.artifact("safetensors", "bf16").weights_bytes == 2 * spec.parameters


def test_profiles_list_and_aliases():
    assert "qwen3-4b-instruct-2507" in profile_names()
    assert load_profile("qwen3-4b").id == "Qwen/Qwen3-4B-Instruct-2507"
    with pytest.raises(UsageError, match="Did you mean 'qwen3-4b-instruct-2507'"):
        load_profile("qwen3-4b-instruct-2508")


def write_safetensors(path, tensors):
    header, offset = {}, 0
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)


def test_hf_folder_with_quantization_and_safetensors(tmp_path):
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "vocab_size": 100,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    write_safetensors(tmp_path / "model.safetensors", {"a": ("F8_E4M3", [10, 10], 100), "b": ("BF16", [5], 10)})
    spec = resolve_model(str(tmp_path))
    assert spec.head_dim == 32  # head_dim honoured, not hidden / heads (16)
    assert spec.kv_heads == 2 and spec.tied_embeddings
    art = spec.artifacts[0]
    assert (art.precision, art.quantization, art.weights_bytes) == ("fp8", "fp8", 110)


def test_hf_folder_sliding_window_layer_types(tmp_path):
    config = {
        "num_hidden_layers": 4,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "vocab_size": 100,
        "sliding_window": 512,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = resolve_model(str(tmp_path))
    assert spec.sliding_window == 512 and spec.sliding_window_layers == (0, 2)
    assert spec.kv_heads == 4 and spec.head_dim == 16
    # no safetensors: weights from the parameter count × 2 bytes
    assert spec.artifacts[0].weights_bytes == 2 * spec.parameters


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no config.json"),
        ("{", "cannot read"),
        ('{"hidden_size": 64}', "num_hidden_layers"),
        (
            '{"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 9, "head_dim": "x"}',
            "head_dim",
        ),
        (
            '{"num_hidden_layers": true, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 9}',
            "num_hidden_layers",
        ),
        ('{"num_hidden_layers": 2, "hidden_size": 2, "num_attention_heads": 4, "vocab_size": 9}', "smaller than"),
    ],
)
def test_bad_hf_folders(tmp_path, content, match):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(UsageError, match=match):
        resolve_model(str(tmp_path))


config_values = (
    st.none() | st.booleans() | st.integers(-5, 5000) | st.text(max_size=4) | st.lists(st.integers(0, 3), max_size=3)
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            k: config_values
            for k in (
                "num_hidden_layers",
                "hidden_size",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "intermediate_size",
                "vocab_size",
                "max_position_embeddings",
                "sliding_window",
                "layer_types",
                "use_sliding_window",
                "max_window_layers",
                "tie_word_embeddings",
                "quantization_config",
                "text_config",
            )
        },
    )
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_config_json_plans_or_is_a_usage_error(tmp_path_factory, config):
    folder = tmp_path_factory.mktemp("hf")
    (folder / "config.json").write_text(json.dumps(config))
    try:
        spec = resolve_model(str(folder))
    except UsageError:
        return
    plan(spec, make_hardware(), Request())  # must not raise anything but a clear error


@given(st.binary(max_size=64), st.integers(0, 2000))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_damaged_gguf_bytes_are_a_usage_error(small_gguf, tmp_path_factory, junk, cut):
    data = small_gguf.read_bytes()
    bad = tmp_path_factory.mktemp("gguf") / "bad.gguf"
    bad.write_bytes(data[:cut] + junk)
    with pytest.raises(UsageError):
        spec_from_gguf(bad)


def test_malformed_safetensors_header(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 10})
    )
    blob = json.dumps({"a": {"dtype": "BF16", "data_offsets": "x"}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob)
    with pytest.raises(UsageError, match="malformed safetensors header"):
        resolve_model(str(tmp_path))


def test_gguf_header_geometry_and_exact_bytes(small_gguf):
    spec = spec_from_gguf(small_gguf)
    assert (spec.architecture, spec.layers, spec.attention_heads, spec.kv_heads) == ("qwen3", 2, 4, 2)
    assert (spec.head_dim, spec.vocab_size, spec.max_context, spec.hidden_size) == (64, 1024, 8192, 128)
    art = spec.artifacts[0]
    # F16 matrices + F32 norms written by the fixture:
    # embed 1024×128×2 + per layer [q 256×128 + k,v 128×128 ×2 + o 128×256 + gate,up 256×128 ×2 + down 128×256] × 2
    # + norms (128 + 64 + 64 + 128) × 4 per layer + output norm 128 × 4
    per_layer = (256 * 128 + 2 * 128 * 128 + 128 * 256 + 2 * 256 * 128 + 128 * 256) * 2 + (128 + 64 + 64 + 128) * 4
    assert art.weights_bytes == 1024 * 128 * 2 + 2 * per_layer + 128 * 4
    assert art.precision == "f16"


def test_gguf_sliding_window_pattern(tmp_path):
    path = write_synthetic_gguf(
        tmp_path / "g.gguf",
        SyntheticShape(
            layers=12,
            heads=4,
            kv_heads=1,
            head_dim=64,
            hidden=64,
            ffn=128,
            vocab=300,
            architecture="gemma3",
            sliding_window=512,
        ),
    )
    spec = spec_from_gguf(path)
    assert spec.sliding_window == 512
    assert spec.sliding_window_layers == (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)  # every 6th layer is global


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_gguf_is_a_clear_error(small_gguf, tmp_path, damage):
    bad = tmp_path / "bad.gguf"
    data = small_gguf.read_bytes()
    bad.write_bytes({"truncate": data[: len(data) // 3], "garbage": b"GGUF" + b"\xff" * 64, "empty": b""}[damage])
    with pytest.raises(UsageError, match="GGUF|gguf"):
        spec_from_gguf(bad)


# ----------------------------------------------------------------------------- hostile geometry

import json as _json  # noqa: E402

from tests.test_cli import run  # noqa: E402

QWEN3_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "num_hidden_layers": 36, "hidden_size": 2560,
    "intermediate_size": 9728, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151936, "max_position_embeddings": 262144, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
}  # fmt: skip


@pytest.mark.parametrize(
    "change,message",
    [
        ({"num_key_value_heads": -2}, "'num_key_value_heads' must be from 1"),
        ({"num_key_value_heads": 0}, "'num_key_value_heads' must be from 1"),
        ({"num_key_value_heads": "8"}, "'num_key_value_heads' must be a whole number, not '8'"),
        ({"num_key_value_heads": 5}, "not a multiple of 5 KV heads"),
        ({"num_hidden_layers": True}, "'num_hidden_layers' must be a whole number, not True"),
        ({"num_hidden_layers": 2.5}, "'num_hidden_layers' must be a whole number"),
        ({"head_dim": 0}, "'head_dim' must be from 1"),
        ({"max_position_embeddings": 0}, "'max_position_embeddings' must be from 1"),
        ({"vocab_size": "big"}, "'vocab_size' must be a whole number"),
        ({"hidden_size": 10**30}, "'hidden_size' must be from 1"),
    ],
)
def test_bad_hf_config_geometry_is_refused(tmp_path, change, message):
    (tmp_path / "config.json").write_text(_json.dumps({**QWEN3_CONFIG, **change}))
    with pytest.raises(UsageError, match=message):
        resolve_model(str(tmp_path))
    code, _, err = run("plan", "--model", str(tmp_path), "--gpu", "RTX 4090")
    assert code == 2 and "bug" not in err


def test_a_good_hf_config_plans(tmp_path):
    (tmp_path / "config.json").write_text(_json.dumps(QWEN3_CONFIG))
    spec = resolve_model(str(tmp_path))
    assert (spec.layers, spec.kv_heads, spec.head_dim) == (36, 8, 128)


def _gguf(path, kvs: dict, tensors=(("token_embd.weight", 1, (64, 16), 0),), alignment_pad: bool = True):
    """A GGUF written byte by byte: kvs {key: (gguf value type, value)}; tensors (name, ggml type, shape,
    offset). Types: 4 uint32, 5 int32, 8 string."""
    fmt = {4: "<I", 5: "<i", 6: "<f"}

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, (kind, value) in kvs.items():
        body += string(key) + struct.pack("<I", kind)
        body += string(value) if kind == 8 else struct.pack(fmt[kind], value)
    for name, ggml_type, shape, offset in tensors:
        body += string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        body += struct.pack("<IQ", ggml_type, offset)
    body += b"\0" * (-len(body) % 32)
    body += b"\0" * 8192  # tensor data
    path.write_bytes(body)
    return path


GOOD_KV = {
    "general.architecture": (8, "qwen3"), "qwen3.block_count": (4, 2), "qwen3.embedding_length": (4, 64),
    "qwen3.attention.head_count": (4, 4), "qwen3.attention.head_count_kv": (4, 2), "qwen3.vocab_size": (4, 16),
    "qwen3.context_length": (4, 4096),
}  # fmt: skip


def test_a_hand_written_gguf_reads(tmp_path):
    spec = spec_from_gguf(_gguf(tmp_path / "ok.gguf", GOOD_KV))
    assert (spec.layers, spec.kv_heads, spec.head_dim, spec.max_context) == (2, 2, 16, 4096)


@pytest.mark.parametrize(
    "kv,tensors,message",
    [
        ({"qwen3.attention.head_count_kv": (5, -2)}, None, "head_count_kv must be from 1"),
        ({"qwen3.attention.head_count_kv": (4, 3)}, None, "not a multiple of 3 KV heads"),
        ({"qwen3.block_count": (8, "lots")}, None, "block_count must be a whole number"),
        ({"qwen3.context_length": (4, 0)}, None, "context_length must be from 1"),
        ({"qwen3.embedding_length": (6, 64.0)}, None, "embedding_length must be a whole number"),
        ({"general.architecture": (4, 7)}, None, "no general.architecture"),
        ({}, (("w", 8, (33, 4), 0),), "impossible shape"),  # Q8_0 rows are whole 32-element blocks
        ({}, (("w", 1, (64, 16), 7),), "32-byte boundary"),
        ({}, (("w", 1, (64, 0), 0),), "impossible shape"),
        ({}, (("w", 1, (2**40, 2**20), 0),), "truncated"),
    ],
)
def test_bad_gguf_geometry_is_refused(tmp_path, kv, tensors, message):
    path = _gguf(tmp_path / "bad.gguf", {**GOOD_KV, **kv}, tensors or (("token_embd.weight", 1, (64, 16), 0),))
    with pytest.raises(UsageError, match=message):
        spec_from_gguf(path)
    code, _, err = run("plan", "--model", str(path))
    assert code == 2 and "bug" not in err and "Traceback" not in err
