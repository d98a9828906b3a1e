"""Token store: dtypes, shards ending on documents, the flat multi-shard view, manifests and their errors."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest

from mosaic_jax.data import store
from mosaic_jax.data.errors import DataError


def test_token_dtype():
    assert store.token_dtype(260) == np.uint16
    assert store.token_dtype(65536) == np.uint16
    assert store.token_dtype(65537) == np.uint32
    assert store.token_dtype(50257, "uint32") == np.uint32
    with pytest.raises(DataError, match="vocabulary of 70000 ids is too large for the token dtype uint16"):
        store.token_dtype(70000, "uint16")
    with pytest.raises(DataError, match="too large for the token dtype uint8"):
        store.token_dtype(260, "uint8")
    with pytest.raises(DataError, match="int8"):
        store.token_dtype(100, "int8")


def _docs(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [np.append(rng.integers(4, 1000, rng.integers(1, 40)), 1) for _ in range(n)]  # EOS = 1 ends each


def test_split_writer_shards_end_on_documents(tmp_path):
    rng = np.random.default_rng(0)
    docs = _docs(rng, 200)
    writer = store.SplitWriter(str(tmp_path), "train", np.dtype(np.uint16), shard_tokens=300)
    for i in range(0, 200, 37):  # uneven chunks, as workers deliver them
        chunk = docs[i:i + 37]
        writer.add(np.concatenate(chunk), np.array([len(d) for d in chunk]))
    info = writer.close()
    flat = np.concatenate(docs)
    assert info["num_tokens"] == len(flat) and info["num_docs"] == 200
    offsets = np.load(tmp_path / info["doc_offsets"])
    np.testing.assert_array_equal(np.diff(offsets), [len(d) for d in docs])
    assert len(info["shards"]) > 3
    boundaries = set(offsets.tolist())
    position = 0
    for shard in info["shards"]:
        data = np.fromfile(tmp_path / shard["file"], dtype="<u2")
        assert len(data) == shard["num_tokens"] and shard["num_tokens"] >= 300 or shard is info["shards"][-1]
        np.testing.assert_array_equal(data, flat[position:position + len(data)])
        position += len(data)
        assert position in boundaries  # a shard never splits a document
        assert shard["sha256"] == store.sha256_file(str(tmp_path / shard["file"]))
    assert store.SplitWriter(str(tmp_path), "validation", np.dtype(np.uint16), 10).close() is None


def test_sharded_view_indexes_like_one_array(prepared_sp):
    ds = store.open_prepared(str(prepared_sp))
    tokens = ds.tokens
    assert isinstance(tokens, store.ShardedTokens) and len(ds.manifest["splits"]["train"]["shards"]) > 2
    flat = np.asarray(tokens)
    assert flat.shape == (ds.num_tokens,) and flat.dtype == np.uint16
    cut = ds.manifest["splits"]["train"]["shards"][0]["num_tokens"]
    for lo, hi in [(0, 10), (cut - 5, cut + 5), (cut - 1, cut), (ds.num_tokens - 7, ds.num_tokens + 3), (5, 5)]:
        np.testing.assert_array_equal(tokens[lo:hi], flat[lo:hi])
        np.testing.assert_array_equal(ds.read(lo, hi - lo), flat[lo:hi])
    assert tokens[cut] == flat[cut] and tokens[-1] == flat[-1]
    np.testing.assert_array_equal(tokens[1:20:3], flat[1:20:3])
    with pytest.raises(IndexError):
        tokens[ds.num_tokens]


def test_open_prepared_contract(prepared_sp, prepared_byte):
    ds = store.open_prepared(str(prepared_sp), "train")
    val = store.open_prepared(str(prepared_sp), "validation")
    assert ds.vocab_size == 1024 and ds.tokenizer_hash == ds.manifest["tokenizer"]["hash"]
    assert ds.num_tokens == ds.doc_offsets[-1] and ds.doc_offsets[0] == 0
    assert len(ds.doc_offsets) == ds.num_docs + 1
    flat = np.asarray(ds.tokens)
    assert (flat[ds.doc_offsets[1:] - 1] == ds.eos_id).all()  # every document ends with EOS
    assert val.num_tokens > 0 and val.num_docs > 0
    single = store.open_prepared(str(prepared_byte))
    assert isinstance(single.tokens, np.memmap)  # one shard: the memmap itself
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._tokens is None and np.array_equal(clone.read(100, 50), ds.read(100, 50))


def test_open_prepared_errors(prepared_byte, tmp_path):
    with pytest.raises(DataError, match="nowhere: prepared-data folder not found"):
        store.open_prepared(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="not a prepared-data folder"):
        store.open_prepared(str(tmp_path))
    with pytest.raises(DataError, match="unknown split 'test'"):
        store.open_prepared(str(prepared_byte), "test")
    broken = tmp_path / "broken"
    shutil.copytree(prepared_byte, broken)
    shard = broken / "train-00000.bin"
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 2)
    with pytest.raises(DataError, match="train-00000.bin: expected"):
        store.open_prepared(str(broken))
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["splits"]["validation"]
    manifest["format"] = "something/0"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="field format is 'something/0'"):
        store.open_prepared(str(broken))
    manifest["format"] = store.FORMAT_VERSION
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="split 'validation' is empty or absent"):
        store.open_prepared(str(broken), "validation")


def test_verify_detects_a_modified_shard(prepared_byte, tmp_path):
    store.verify(str(prepared_byte))
    copy = tmp_path / "copy"
    shutil.copytree(prepared_byte, copy)
    with open(copy / "validation-00000.bin", "r+b") as f:
        f.write(b"\x07\x00")  # same size, different content
    with pytest.raises(DataError, match="validation-00000.bin: sha256 does not match"):
        store.verify(str(copy))
