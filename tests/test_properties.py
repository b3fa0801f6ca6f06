"""Property tests: at least 1,000 generated inputs per loader (hardware files, plan files, HF config.json,
GGUF headers, state records, and the command line's sizes, GPU names, URLs and contexts). Each input either
loads or is refused with the library's own error (a sentence and a documented exit code); nothing else may
escape, and where JSON is promised it is valid JSON (no NaN, no Infinity)."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qwen_deploy import planner, state, values
from qwen_deploy.errors import QwenDeployError, UsageError
from qwen_deploy.hardware.catalog import parse_gpu_spec
from qwen_deploy.hardware.files import hardware_from_dict
from qwen_deploy.model.profiles import load_profile
from qwen_deploy.units import parse_size
from tests.conftest import make_hardware

pytestmark = pytest.mark.slow  # 1,000 generated inputs per loader: about 30 s

# The same 1,000 inputs each run (derandomized: a CI run is reproducible); QD_EXPLORE=1 draws new ones each run
# (how the suite is used to hunt for bugs: `QD_EXPLORE=1 pytest tests/test_properties.py`).
EXAMPLES = settings(
    max_examples=1000,
    deadline=None,
    derandomize=not os.environ.get("QD_EXPLORE"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
QWEN = load_profile("qwen3-4b-instruct-2507")

# Values a hostile file puts where a number, a name or a list belongs.
NASTY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1, -1, 2**63, 2**64, 10**19]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "nan", "inf", "٣", "8\n", "../../x", "$(id)", "a\x00b", "1e999"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(data, prefix=()):
    """Every (path, value) of a nested dict/list."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*prefix, k), v
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield (*prefix, i), v
            yield from _paths(v, (*prefix, i))


def _mutate(base, picks):
    """A copy of `base` with up to three leaves (or branches) replaced or removed."""
    data = copy.deepcopy(base)
    paths = [p for p, _ in _paths(data)]
    for index, value, delete in picks:
        if not paths:
            break
        path = paths[index % len(paths)]
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            if delete and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass
        paths = [p for p, _ in _paths(data)]
    return data


PICKS = st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), NASTY, st.booleans()), min_size=1, max_size=3)
BASE_HW = make_hardware(ram_gib=32).to_dict()
BASE_HW["gpus"] = [
    {"index": 0, "name": "NVIDIA L4", "memory_total_bytes": 24 * 2**30, "memory_free_bytes": 24 * 2**30,
     "compute_capability": "8.9", "memory_bandwidth_gbps": 300.0}
]  # fmt: skip


def _json_ok(data) -> None:
    json.dumps(data, allow_nan=False)  # raises ValueError on NaN/Infinity


@EXAMPLES
@given(PICKS)
def test_hardware_files(picks):
    data = _mutate(BASE_HW, picks)
    try:
        hw = hardware_from_dict(data, "hw.json")
    except UsageError:
        return
    result = planner.plan(QWEN, hw)  # what loads must plan, and its JSON must be JSON
    _json_ok(result.to_dict())


@pytest.fixture(scope="module")
def plan_dict():
    return planner.plan(QWEN, make_hardware(ram_gib=32)).to_dict()


@EXAMPLES
@given(picks=PICKS)
def test_plan_files(tmp_path_factory, plan_dict, picks):
    from qwen_deploy.planfile import load_plan

    data = _mutate({k: plan_dict[k] for k in ("schema", "model", "hardware", "request", "choice")}, picks)
    try:
        text = json.dumps(data)
    except ValueError:
        return
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    path.write_text(text)
    try:
        result = load_plan(str(path))
    except QwenDeployError:
        return
    _json_ok(result.to_dict())
    assert result.choice.command  # it can be run


QWEN3_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "num_hidden_layers": 36, "hidden_size": 2560,
    "intermediate_size": 9728, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151936, "max_position_embeddings": 262144, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "sliding_window": None, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128},
}  # fmt: skip


@EXAMPLES
@given(picks=PICKS)
def test_hf_configs(tmp_path_factory, picks):
    from qwen_deploy.model.hf import spec_from_hf_dir

    data = _mutate(QWEN3_CONFIG, picks)
    try:
        text = json.dumps(data)
    except ValueError:
        return
    folder = tmp_path_factory.mktemp("hf")
    (folder / "config.json").write_text(text)
    try:
        spec = spec_from_hf_dir(folder)
    except UsageError:
        return
    result = planner.plan(spec, make_hardware(ram_gib=32, gpus=tuple(hardware_from_dict(BASE_HW).gpus)))
    _json_ok(result.to_dict())


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory):
    from tests.synthetic_gguf import SyntheticShape, write_synthetic_gguf

    shape = SyntheticShape(layers=2, heads=4, kv_heads=2, head_dim=64, hidden=128, ffn=256, vocab=300, context=8192)
    path = write_synthetic_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf", shape)
    return path.read_bytes()


@EXAMPLES
@given(
    edits=st.lists(st.tuples(st.integers(min_value=0, max_value=2**20), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=2**20)),
)
def test_gguf_headers(tmp_path_factory, gguf_bytes, edits, cut):
    """Random bytes changed in the metadata and tensor table (the first KiBs), or the file cut short."""
    from qwen_deploy.model.gguf import spec_from_gguf
    from qwen_deploy.model.gguf_header import read_header

    header_end = read_header_end(gguf_bytes, read_header)
    data = bytearray(gguf_bytes)
    for position, byte in edits:
        data[position % header_end] = byte
    if cut is not None:
        data = data[: cut % len(data)]
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    path.write_bytes(bytes(data))
    try:
        spec = spec_from_gguf(path)
    except UsageError:
        return
    _json_ok(planner.plan(spec, make_hardware(ram_gib=32)).to_dict())


_HEADER_END: list[int] = []


def read_header_end(blob: bytes, read_header) -> int:
    if not _HEADER_END:
        import tempfile
        from pathlib import Path

        with tempfile.NamedTemporaryFile(suffix=".gguf") as handle:
            handle.write(blob)
            handle.flush()
            _HEADER_END.append(read_header(Path(handle.name)).data_offset)
    return _HEADER_END[0]


GOOD_RECORD = state.Record(
    name="r", pid=12345, start_ticks=1, token="0" * 32, engine="llamacpp", host="127.0.0.1", port=8000,
    served_name="m", model="m", context=4096, command=["x"], started_at=0.0, mode="detached",
).to_dict()  # fmt: skip


@EXAMPLES
@given(picks=PICKS)
def test_state_records(picks):
    data = _mutate(GOOD_RECORD, picks)
    try:
        record = state.record_from(data, "r")
    except state.BadRecord as exc:
        assert str(exc)  # one sentence
        return
    assert record.pid > 1 and 1 <= record.port <= 65535 and record.name == "r"
    assert not record.alive()  # nothing of ours has that token: never signalled


TEXTS = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789.kKmMgGiIbBtT xX×*-", max_size=20),
    st.sampled_from(["", " ", "nan", "inf", "1e9", "٣٢", "24GiB", "2xL4", "L4x2", "2x2xL4", "RTX 3080", "M2 16GB"]),
)


@EXAMPLES
@given(TEXTS)
def test_command_line_sizes_names_urls_and_contexts(text):
    from qwen_deploy.cli.options import context_value
    from qwen_deploy.client import parse_url

    for parse in (parse_size, parse_gpu_spec, parse_url, context_value, lambda t: values.float_text(t, "--x")):
        try:
            result = parse(text)
        except UsageError as exc:
            assert str(exc) and "\n" not in str(exc).strip()
            continue
        if isinstance(result, float):
            assert math.isfinite(result)
        if parse is parse_size:
            assert 0 <= result <= 2**60


@settings(max_examples=300, deadline=None, derandomize=not os.environ.get("QD_EXPLORE"), database=None)
@given(st.lists(TEXTS, min_size=1, max_size=4))
def test_plan_on_the_command_line(args):
    """`plan` with generated option values: a documented exit code and no bug, JSON on stdout when it plans."""
    from tests.test_cli import run

    flags = ["--ram", "--vram", "--gpu", "--context", "--cpus", "--concurrency"]
    argv = ["plan", "--json", "--hardware", "/dev/null"][:2]
    for i, value in enumerate(args):
        assume(not value.startswith("-"))
        argv += [flags[i % len(flags)], value]
    code, out, err = run(*argv)
    assert code in (0, 2, 3), (argv, code, err)
    assert "bug" not in err and "Traceback" not in err
    if code in (0, 3):
        json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in plan --json"))
