"""prepare(): corpus-scale round trip, manifest, seeded split, no-op re-runs, refusals, and the CLI's one-line errors."""
import gzip
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mosaic_jax.data import ingest, pipeline, store, tokenizers
from mosaic_jax.data.errors import DataError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _prepare(inputs, out, tokenizer="byte", **kw):
    workers = kw.pop("num_workers", 1)
    validation = kw.pop("validation_inputs", ())
    return pipeline.prepare([str(p) for p in inputs], str(out), tokenizer, pipeline.PrepareOptions(**kw),
                            validation_inputs=[str(p) for p in validation], num_workers=workers, progress=False)


def _decoded_docs(ds: store.PreparedDataset, tok: tokenizers.Tokenizer) -> list[str]:
    flat, offsets = np.asarray(ds.tokens), np.asarray(ds.doc_offsets)
    return [tok.decode(flat[a:b - 1]) for a, b in zip(offsets[:-1], offsets[1:])]  # drop the EOS


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mosaic_jax.prepare_data", "--noprogress", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_round_trip_of_all_tinystories_through_the_store(prepared_sp, data_dir):
    tok = tokenizers.load_tokenizer(str(prepared_sp))
    docs = list(ingest.iter_documents(ingest.expand_inputs([str(data_dir / "tinystories")])))
    in_val = [pipeline.is_validation(d, seed=0, fraction=0.05) for d in docs]
    train = store.open_prepared(str(prepared_sp), "train")
    val = store.open_prepared(str(prepared_sp), "validation")
    assert _decoded_docs(train, tok) == [d for d, v in zip(docs, in_val) if not v]
    assert _decoded_docs(val, tok) == [d for d, v in zip(docs, in_val) if v]
    assert 0.03 < val.num_docs / len(docs) < 0.07


def test_manifest(prepared_sp, data_dir):
    m = store.read_manifest(str(prepared_sp))
    assert m["dtype"] == "uint16" and m["tokenizer"]["kind"] == "sentencepiece" and m["tokenizer"]["spec"] == "sp:1024"
    assert m["tokenizer"]["hash"] == tokenizers.load_tokenizer(str(prepared_sp / "tokenizer.model")).hash
    names = [pathlib.Path(s["path"]).name for s in m["sources"]]
    assert names == ["train_v1_prefix_a.txt", "train_v2gpt4_prefix.txt", "valid_v1_prefix.txt"]
    for s in m["sources"]:
        assert s["sha256"] == store.sha256_file(s["path"]) and s["replaced_bytes"] == 0
    assert [s["separator"] for s in m["sources"]] == ["line", "<|endoftext|>", "blank"]
    assert sum(s["num_docs"] for s in m["sources"]) == sum(v["num_docs"] for v in m["splits"].values())
    train = m["splits"]["train"]
    assert train["num_tokens"] == sum(s["num_tokens"] for s in train["shards"])
    store.verify(str(prepared_sp))


def test_split_is_seeded_and_validation_inputs_replace_it(data_dir, tmp_path):
    valid = data_dir / "tinystories" / "valid_v1_prefix.txt"
    a = _prepare([valid], tmp_path / "a", val_fraction=0.1, seed=0).manifest["splits"]
    b = _prepare([valid], tmp_path / "b", val_fraction=0.1, seed=0).manifest["splits"]
    c = _prepare([valid], tmp_path / "c", val_fraction=0.1, seed=1).manifest["splits"]
    assert a["validation"]["shards"][0]["sha256"] == b["validation"]["shards"][0]["sha256"]
    assert a["validation"]["shards"][0]["sha256"] != c["validation"]["shards"][0]["sha256"]
    train = data_dir / "tinystories" / "train_v2gpt4_prefix.txt"
    d = _prepare([train], tmp_path / "d", validation_inputs=[valid]).manifest
    assert d["splits"]["train"]["num_docs"] == 1728 and d["splits"]["validation"]["num_docs"] == 4302
    assert [s["role"] for s in d["sources"]] == ["train", "validation"]
    none = _prepare([valid], tmp_path / "e", val_fraction=0.0).manifest
    assert "validation" not in none["splits"]
    with pytest.raises(DataError, match="split 'validation' is empty"):
        store.open_prepared(str(tmp_path / "e"), "validation")


def test_output_does_not_depend_on_worker_count(data_dir, tmp_path):
    src = data_dir / "tinystories" / "train_v1_prefix_a.txt"
    one = _prepare([src], tmp_path / "one", shard_tokens=200_000, num_workers=1).manifest
    two = _prepare([src], tmp_path / "two", shard_tokens=200_000, num_workers=2).manifest
    assert one["fingerprint"] == two["fingerprint"]
    assert one["splits"] == two["splits"] and len(one["splits"]["train"]["shards"]) > 1


def test_gzip_jsonl_globs_and_bos(tmp_path):
    stories = [f"Story {i}: once upon a time." for i in range(50)]
    (tmp_path / "in").mkdir()
    with gzip.open(tmp_path / "in" / "part1.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(s) + "\n" for s in stories[:25])
    (tmp_path / "in" / "part2.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories[25:]))
    result = _prepare([tmp_path / "in" / "part*"], tmp_path / "out", val_fraction=0.0, add_bos=True)
    ds = store.open_prepared(str(result.path))
    tok = tokenizers.ByteTokenizer()
    assert _decoded_docs(ds, tok) == stories
    flat = np.asarray(ds.tokens)
    assert (flat[np.asarray(ds.doc_offsets)[:-1]] == tok.bos_id).all()


def test_rerun_is_a_noop_and_other_outputs_are_refused(data_dir, tmp_path):
    src = data_dir / "tinystories" / "valid_v1_prefix.txt"
    out = tmp_path / "out"
    first = _prepare([src], out)
    stamp = os.path.getmtime(out / "manifest.json")
    again = _prepare([str(src)], out, num_workers=2)  # worker count is not part of the identity
    assert again.skipped and again.manifest["fingerprint"] == first.manifest["fingerprint"]
    assert os.path.getmtime(out / "manifest.json") == stamp
    with pytest.raises(DataError, match=r"out: holds a different prepared dataset \(differs in options \(seed\)\)"):
        _prepare([src], out, seed=7)
    assert os.path.getmtime(out / "manifest.json") == stamp
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="busy: output folder is not empty and holds no manifest"):
        _prepare([src], tmp_path / "busy")
    (tmp_path / "empty").mkdir()
    assert not _prepare([src], tmp_path / "empty").skipped  # an empty folder is fine


def _nothing_left(parent: pathlib.Path, name: str) -> bool:
    return not any(p.name == name or p.name.startswith(f".{name}.tmp-") for p in parent.iterdir())


def test_failure_midway_leaves_nothing_behind(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps("x" * 600 + str(i)) + "\n" for i in range(3000)))
    bad = tmp_path / "late.jsonl"
    bad.write_text("".join(json.dumps("y" * 600) + "\n" for i in range(2000)) + "{oops\n")
    with pytest.raises(DataError, match=r"late.jsonl:2001: malformed JSON"):
        _prepare([good, bad], tmp_path / "out")
    assert _nothing_left(tmp_path, "out")


@pytest.mark.parametrize("files, kw, message", [
    ({"empty.txt": b"", "blank.txt": b"\n  \n\n"}, {}, "empty corpus"),
    ({"a.txt": b"some text\n"}, {"dtype": "uint8"}, "vocabulary of 260 ids is too large for the token dtype uint8"),
    ({"a.txt": b"\x00\x01\x02\x03" * 5000}, {}, "a.txt: not a text file"),
    ({"a.jsonl": b'{"body": "x"}\n'}, {}, r"a.jsonl:1: missing text field 'text'"),
])
def test_bad_inputs_fail_cleanly(tmp_path, files, kw, message):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=message):
        _prepare([tmp_path / n for n in files], tmp_path / "out", **kw)
    assert _nothing_left(tmp_path, "out")


def test_cli(data_dir, tmp_path):
    src = str(data_dir / "tinystories" / "train_v2gpt4_prefix.txt")
    out = str(tmp_path / "cli")
    done = _cli(f"--input={src}", f"--out={out}", "--tokenizer=sp:400", "--tokenizer_sample_mb=0.5")
    assert done.returncode == 0, done.stderr
    assert "tokens in" in done.stdout and "MB/s" in done.stdout
    assert store.open_prepared(out).vocab_size == 400
    again = _cli(f"--input={src}", f"--out={out}", "--tokenizer=sp:400", "--tokenizer_sample_mb=0.5")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    refused = _cli(f"--input={src}", f"--out={out}", "--tokenizer=byte")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"prepare_data: error: {os.path.normpath(out)}: holds a different prepared dataset (differs in tokenizer); "
        "refusing to overwrite it: choose another --out or delete it"]
    binary = tmp_path / "weights.txt"
    binary.write_bytes(os.urandom(10_000))
    bad = _cli(f"--input={binary}", f"--out={tmp_path / 'bad'}", "--tokenizer=byte")
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"prepare_data: error: {binary}: not a text file")
    assert _nothing_left(tmp_path, "bad")


def test_output_inside_the_input_folder_reruns(tmp_path):
    """Issue 13 item 6: the re-run read its own manifest.json as input (a *.json file) and refused itself."""
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_text("One story.\n\nAnother story.\n")
    out = src / "prep"
    first = _prepare([src], out, "byte", val_fraction=0.0)
    again = _prepare([src], out, "byte", val_fraction=0.0)
    assert again.skipped and again.manifest["fingerprint"] == first.manifest["fingerprint"]
    assert [s["path"] for s in first.manifest["sources"]] == [str(src / "a.txt")]


def test_utf8_bom_is_not_text(tmp_path):
    """A UTF-8 byte-order mark used to stay as the first character of the first document."""
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfFirst story.\n\nSecond story.\n")
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "First story."}\n{"text": "Second."}\n')
    assert list(ingest.iter_documents([str(tmp_path / "bom.txt")])) == ["First story.", "Second story."]
    assert list(ingest.iter_documents([str(tmp_path / "bom.jsonl")])) == ["First story.", "Second."]


@pytest.mark.parametrize("args,code,named", [
    (["--tokenizer=missing.model"], 1, "missing.model: file not found"),
    (["--tokenizer=sp:300", "--tokenizer_sample_mb=0"], 2, "--tokenizer_sample_mb=0"),
])
def test_bad_tokenizer_flags_fail_up_front(tmp_path, args, code, named):
    """Before: "unknown tokenizer" for a missing file, and sentencepiece's internal error for an empty sample."""
    (tmp_path / "a.txt").write_text("One story.\n\nAnother story.\n")
    res = _cli(f"--input={tmp_path / 'a.txt'}", f"--out={tmp_path / 'out'}", *args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code and len(lines) == 1 and lines[0].startswith("prepare_data: error:"), res.stderr
    assert named in lines[0] and not (tmp_path / "out").exists()
