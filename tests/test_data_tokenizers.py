"""Tokenizers: exact text → ids → text round trips on TinyStories, fixed special ids, stable hashes, errors."""
import importlib.util
import pickle

import pytest

from mosaic_jax.data import ingest, tokenizers
from mosaic_jax.data.errors import DataError

TRICKY = "Hello  world!\n\n  “Wow” — naïve 你好\tend \u2019s â€™ \r\nlast "


@pytest.fixture(scope="module")
def stories(data_dir) -> list[str]:
    return list(ingest.iter_documents([str(data_dir / "tinystories" / "train_v2gpt4_prefix.txt")]))


@pytest.fixture(scope="module")
def valid_text(data_dir) -> str:
    # The v1 validation sample carries mojibake (â€™): good for byte fallback.
    return (data_dir / "tinystories" / "valid_v1_prefix.txt").read_text(encoding="utf-8")[:60_000]


@pytest.fixture(scope="module")
def small_bpe(stories) -> tokenizers.SentencePieceTokenizer:
    return tokenizers.train_sentencepiece(stories[:300], vocab_size=512, model_type="bpe")


def test_byte_round_trip(valid_text):
    tok = tokenizers.load_tokenizer("byte")
    for text in (valid_text, TRICKY, ""):
        ids = tok.encode(text)
        assert all(4 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id) == (260, 0, 1, 2)
    assert tok.decode([tok.bos_id, *tok.encode("hi"), tok.eos_id]) == "hi"


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_round_trip_and_special_ids(stories, valid_text, model_type):
    tok = tokenizers.train_sentencepiece(stories[:300], vocab_size=512, model_type=model_type)
    assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id) == (512, 0, 1, 2)
    for text in (valid_text, TRICKY, stories[-1]):  # held-out text, unseen characters, a training story
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tokenizers.EOS_ID not in ids and tokenizers.PAD_ID not in ids
    assert len(tok.encode(valid_text)) < 0.6 * len(valid_text.encode())  # it learned merges


def test_sentencepiece_batch_matches_single(small_bpe, stories):
    assert small_bpe.encode_batch(stories[:5]) == [small_bpe.encode(s) for s in stories[:5]]


def test_sentencepiece_hash_is_stable_and_pickle_is_lazy(small_bpe, tmp_path, stories):
    path = tmp_path / "m.model"
    small_bpe.save(str(path))
    loaded = tokenizers.load_tokenizer(str(path))
    assert loaded.hash == small_bpe.hash and len(loaded.hash) == 64
    clone = pickle.loads(pickle.dumps(small_bpe))
    assert clone._sp is None  # built on first use (inside a spawned worker)
    assert clone.encode(TRICKY) == small_bpe.encode(TRICKY) and clone.hash == small_bpe.hash
    other = tokenizers.train_sentencepiece(stories[300:600], vocab_size=512)
    assert other.hash != small_bpe.hash
    assert tokenizers.ByteTokenizer().hash != small_bpe.hash


def test_prepared_folder_names_its_tokenizer(prepared_sp):
    tok = tokenizers.load_tokenizer(str(prepared_sp))
    assert isinstance(tok, tokenizers.SentencePieceTokenizer) and tok.vocab_size == 1024
    assert tok.hash == tokenizers.load_tokenizer(str(prepared_sp / "tokenizer.model")).hash


def test_spec_errors(tmp_path):
    with pytest.raises(DataError, match="trains a new model"):
        tokenizers.load_tokenizer("sp:8192")
    with pytest.raises(DataError, match="missing.model: file not found"):   # issue 13 item 6: was "unknown tokenizer"
        tokenizers.load_tokenizer(str(tmp_path / "missing.model"))
    with pytest.raises(DataError, match="unknown tokenizer"):
        tokenizers.load_tokenizer("bpe")
    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"not a model")
    with pytest.raises(DataError, match="bogus.model: not a sentencepiece model"):
        tokenizers.load_tokenizer(str(bogus))
    with pytest.raises(DataError, match="manifest"):
        tokenizers.load_tokenizer(str(tmp_path))  # a folder without a manifest
    with pytest.raises(DataError, match="must be an integer"):
        tokenizers.parse_train_spec("sp:lots")
    assert tokenizers.parse_train_spec("sp-unigram:4096") == ("unigram", 4096)


def test_sentencepiece_vocab_too_small(stories):
    with pytest.raises(DataError, match="too small"):
        tokenizers.train_sentencepiece(stories[:10], vocab_size=200)


def test_gpt2_missing_pieces_give_a_clear_error(tmp_path, monkeypatch):
    # No network in tests: point tiktoken's cache at an empty folder, so the files are missing whether or
    # not tiktoken is installed.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("MOSAIC_GPT2_DIR", raising=False)
    with pytest.raises(DataError, match=r"tokenizer 'gpt2'.*(tiktoken|vocab\.bpe)") as info:
        tokenizers.load_tokenizer("gpt2")
    assert "\n" not in str(info.value)


def test_gpt2_when_available():
    try:
        tok = tokenizers.load_tokenizer("gpt2")
    except DataError as e:
        pytest.skip(f"GPT-2 encoding not available offline: {e}")
    assert (tok.vocab_size, tok.eos_id) == (50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]  # the well-known GPT-2 ids
    assert tok.decode(tok.encode(TRICKY)) == TRICKY


@pytest.mark.skipif(importlib.util.find_spec("tiktoken") is not None, reason="tiktoken is installed")
def test_gpt2_without_tiktoken_names_the_extra():
    with pytest.raises(DataError, match=r"pip install 'mosaic_jax\[tiktoken\]'"):
        tokenizers.load_tokenizer("gpt2")
