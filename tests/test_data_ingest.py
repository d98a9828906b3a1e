"""Ingestion: formats, separators (incl. auto-detection on the real TinyStories files), gzip, globs, bad input."""
import gzip
import json
import pathlib

import pytest

from mosaic_jax.data import ingest
from mosaic_jax.data.errors import DataError


def _docs(path: pathlib.Path, **kw) -> tuple[list[str], ingest.SourceReader]:
    reader = ingest.SourceReader(str(path), **kw)
    return list(reader.documents()), reader


def _write(path: pathlib.Path, data: str | bytes) -> pathlib.Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_folder_takes_text_files_only(data_dir):
    files = ingest.expand_inputs([str(data_dir / "tinystories")])
    assert [pathlib.Path(f).name for f in files] == [
        "train_v1_prefix_a.txt", "train_v2gpt4_prefix.txt", "valid_v1_prefix.txt"]  # not SOURCE.md


def test_globs_and_multiple_inputs(data_dir):
    files = ingest.expand_inputs([str(data_dir / "tinystories" / "train_*.txt"), str(data_dir / "tinyshakespeare")])
    assert [pathlib.Path(f).name for f in files] == ["train_v1_prefix_a.txt", "train_v2gpt4_prefix.txt", "input.txt"]


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(DataError, match="nothere.txt: input not found"):
        ingest.expand_inputs([str(tmp_path / "nothere.txt")])
    with pytest.raises(DataError, match=r"\*.jsonl: input pattern matched no files"):
        ingest.expand_inputs([str(tmp_path / "*.jsonl")])
    with pytest.raises(DataError, match="empty corpus"):
        ingest.expand_inputs([str(tmp_path)])


def test_tinystories_v2_marker_is_detected(data_dir):
    docs, reader = _docs(data_dir / "tinystories" / "train_v2gpt4_prefix.txt")
    assert reader.format == "text" and reader.separator == "<|endoftext|>"
    assert len(docs) == 1728  # 1,727 complete stories (SOURCE.md) + the cut-off last one
    assert docs[0].startswith("Once upon a time there was a little boy named Ben.")
    assert docs[0].endswith("And that's how Ben found an amazing vase in the store!")
    assert not any("<|endoftext|>" in d for d in docs)


def test_tinystories_v1_single_newline_separates_stories(data_dir):
    docs, reader = _docs(data_dir / "tinystories" / "train_v1_prefix_a.txt")
    assert reader.separator == "line"
    assert docs[0].startswith("One day, a little girl named Lily found a needle")
    assert "\n\nLily went to her mom" in docs[0]  # paragraphs stay inside the story
    assert docs[0].endswith("They both felt happy because they had shared and worked together.")
    assert docs[1].startswith("Once upon a time, there was a little car named Beep.")
    assert reader.replaced_bytes == 0 and reader.num_docs == len(docs)


def test_hard_wrapped_prose_uses_blank_lines(data_dir):
    _, reader = _docs(data_dir / "gutenberg" / "carroll-alice.txt")
    assert reader.separator == "blank"


@pytest.mark.parametrize("separator, expected", [
    ("blank", ["a b\nc", "d", "e\nf"]),
    ("line", ["a b", "c\n\nd\n\n\ne", "f"]),
    ("file", ["a b\nc\n\nd\n\n\ne\nf"]),
    ("<SEP>", ["a b\nc\n\nd\n\n\ne\nf"]),
])
def test_explicit_separators(tmp_path, separator, expected):
    path = _write(tmp_path / "x.txt", "a b\r\nc\n\nd\n\n\ne\nf\n")
    assert _docs(path, separator=separator)[0] == expected


def test_inline_marker(tmp_path):
    path = _write(tmp_path / "x.txt", "one<|endoftext|>two\nlines<|endoftext|><|endoftext|>three")
    assert _docs(path)[0] == ["one", "two\nlines", "three"]


def test_jsonl_strings_in_a_txt_file_are_detected(tmp_path):
    # The BabiStories format: one JSON string per line, in traindataset.txt.
    stories = ["Once upon a time.\nThe end.", "A \"quoted\" story — ünïcode."]
    path = _write(tmp_path / "traindataset.txt", "".join(json.dumps(s) + "\n" for s in stories) + "\n")
    docs, reader = _docs(path)
    assert reader.format == "jsonl" and docs == stories


def test_jsonl_objects_nested_field_and_gzip(tmp_path):
    rows = [{"meta": {"body": "first"}, "id": 1}, {"meta": {"body": "second\ntext"}, "id": 2}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    plain = _write(tmp_path / "a.jsonl", data)
    packed = _write(tmp_path / "b.jsonl.gz", gzip.compress(data))
    unnamed = _write(tmp_path / "c.data", gzip.compress(data))  # gzip found by magic bytes, JSON by sniffing
    for path in (plain, packed, unnamed):
        assert _docs(path, text_field="meta.body")[0] == ["first", "second\ntext"]


def test_gzip_text(tmp_path):
    path = _write(tmp_path / "x.txt.gz", gzip.compress(b"a\n\nb\n"))
    assert _docs(path, separator="blank")[0] == ["a", "b"]


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    path = _write(tmp_path / "x.txt", b"caf\xe9 ok\n\nbad \xff\xfe bytes\n")
    docs, reader = _docs(path, separator="blank")
    assert docs == ["caf\ufffd ok", "bad \ufffd\ufffd bytes"]
    assert reader.replaced_bytes == 3


def test_binary_file_is_refused(tmp_path):
    path = _write(tmp_path / "model.txt", bytes(range(256)) * 64)
    with pytest.raises(DataError, match=r"model.txt: not a text file"):
        ingest.SourceReader(str(path))


def test_corrupt_gzip_is_named(tmp_path):
    path = _write(tmp_path / "x.txt.gz", gzip.compress(b"hello\n" * 1000)[:-30])
    with pytest.raises(DataError, match="x.txt.gz: corrupt gzip"):
        _docs(path)


@pytest.mark.parametrize("lines, field, message", [
    (['"ok"', '{"text": "fine"}', '{"text": "unterminated}'], "text", r"bad.jsonl:3: malformed JSON"),
    (['{"text": "a"}', '{"body": "b"}'], "text", r"bad.jsonl:2: missing text field 'text' \(keys: body\)"),
    (['{"text": 5}'], "text", r"bad.jsonl:1: field 'text' is int, expected a string"),
    (['"a"', "[1, 2]"], "text", r"bad.jsonl:2: expected a JSON string or object, got list"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, lines, field, message):
    path = _write(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as info:
        _docs(path, text_field=field)
    assert "\n" not in str(info.value)


def test_lone_surrogates_in_json_are_replaced(tmp_path):
    path = _write(tmp_path / "x.jsonl", '"a\\ud800b"\n')
    assert _docs(path)[0] == ["a\ufffdb"]
