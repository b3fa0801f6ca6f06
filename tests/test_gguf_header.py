"""The stdlib GGUF header reader: it agrees with the gguf package field by field, and refuses files that are
cut short, hold absurd lengths or nest arrays without end, with one sentence from `plan`."""

from __future__ import annotations

import pytest

from tests.test_cli import run


@pytest.mark.slow
def test_header_reader_agrees_with_gguf_package(synthetic_gguf, gemma3):
    """Every tensor's name, type, shape and byte size, and the scalar fields, as the gguf package reads them."""
    import gguf

    from qwen_deploy.model.gguf_header import read_header

    for path in (synthetic_gguf, gemma3):
        ours = read_header(path)
        theirs = gguf.GGUFReader(str(path), "r")
        assert [(t.name, t.type_name, t.shape, t.n_bytes) for t in ours.tensors] == [
            (t.name, t.tensor_type.name, tuple(int(x) for x in t.shape), int(t.n_bytes)) for t in theirs.tensors
        ]
        assert ours.data_offset == theirs.data_offset
        for key, field in theirs.fields.items():
            if key.startswith("GGUF.") or not field.types:
                continue
            if field.types[0] == gguf.GGUFValueType.ARRAY:
                assert ours.array_lengths[key] == len(field.data), key
            elif field.types[0] == gguf.GGUFValueType.STRING:
                assert ours.fields[key] == bytes(field.parts[field.data[0]]).decode(), key
            else:
                assert ours.fields[key] == pytest.approx(field.parts[field.data[0]].tolist()[0]), key


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.75])
def test_header_cut_inside_the_vocabulary_is_refused(tmp_path, synthetic_gguf, cut):
    """The vocabulary (151,936 strings, walked without a bounds test per string) ends past a cut file."""
    from qwen_deploy.model.gguf_header import GGUFError, read_header

    header = read_header(synthetic_gguf)
    with open(synthetic_gguf, "rb") as handle:
        data = handle.read(header.data_offset)
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: int(len(data) * cut)])  # the vocabulary is most of the header: each cut lands in it
    with pytest.raises(GGUFError, match="a string array runs past the end"):
        read_header(bad)


def test_a_vocabulary_string_of_absurd_length_is_refused(tmp_path, synthetic_gguf):
    """A corrupt length of 2**63 pushes the walk past what an index can hold (OverflowError, not struct.error):
    still a GGUF error, and one sentence from `plan`."""
    import struct

    from qwen_deploy.model.gguf_header import GGUFError, read_header

    data = bytearray(synthetic_gguf.read_bytes()[: read_header(synthetic_gguf).data_offset])
    key = b"tokenizer.ggml.tokens"
    first = data.index(key) + len(key) + 4 + 4 + 8  # value type ARRAY, element type STRING, count
    data[first : first + 8] = struct.pack("<Q", 2**63)
    bad = tmp_path / "absurd.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="a string array runs past the end"):
        read_header(bad)
    code, _, err = run("plan", "--model", str(bad))
    assert code == 2 and "not a readable GGUF file" in err and "Traceback" not in err


def test_ggml_type_table_matches_gguf_package():
    from gguf.constants import GGML_QUANT_SIZES

    from qwen_deploy.model.gguf_header import GGML_TYPES

    assert {t.value: (t.name, *size) for t, size in GGML_QUANT_SIZES.items()} == GGML_TYPES


def test_gguf_with_deeply_nested_arrays_is_refused(tmp_path):
    import struct

    from qwen_deploy.model.gguf_header import GGUFError, read_header

    key = b"evil"
    nested = b""
    for _ in range(50):
        nested = struct.pack("<IQ", 9, 1) + nested  # ARRAY of 1 ARRAY of 1 ...
    nested += struct.pack("<IQ", 4, 0)  # innermost: empty UINT32 array
    body = struct.pack("<Q", len(key)) + key + struct.pack("<I", 9) + nested
    path = tmp_path / "nested.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body + b"\0" * 64)
    with pytest.raises(GGUFError, match="nested deeper"):
        read_header(path)
    code, _, err = run("plan", "--model", str(path))
    assert code == 2 and "not a readable GGUF file" in err
