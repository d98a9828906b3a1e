"""Tokenizers: byte-level, sentencepiece (train or load), GPT-2 BPE through tiktoken and Hugging Face
``tokenizer.json`` files through ``tokenizers`` (spec ``hf:PATH``; both optional dependencies).

All share one small interface (``encode``, ``decode``, ``vocab_size``, ``eos_id``, ``bos_id``, ``pad_id``,
``hash``). ``hash`` is a sha256 of what defines the mapping text → ids, so prepared data and checkpoints can
refuse a mismatched tokenizer. Objects pickle cheaply and build their native processor lazily, because grain
and the prepare pool spawn worker processes (a SentencePieceProcessor must be created inside the worker).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np
import sentencepiece as spm

from mosaic_jax.data.errors import DataError
from mosaic_jax.data.tokenizer_base import (BOS_ID, EOS_ID, MANIFEST_FILE, PAD_ID, TOKENIZER_FILE,  # noqa: F401
                                            UNK_ID, Tokenizer, atomic_write)
from mosaic_jax.data.tokenizers_bpe import HF_TOKENIZER_FILE, Gpt2Tokenizer, HFTokenizer  # noqa: F401

_BYTE_OFFSET = 4  # byte b ↦ id b + 4


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes shifted past the four special ids: vocabulary 260. For tiny tests."""

    kind = "byte"
    vocab_size = 256 + _BYTE_OFFSET
    eos_id, bos_id, pad_id = EOS_ID, BOS_ID, PAD_ID
    hash = hashlib.sha256(b"mosaic_jax.byte/1 pad=0 eos=1 bos=2 unk=3 offset=4").hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + _BYTE_OFFSET

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(i - _BYTE_OFFSET for i in map(int, ids) if _BYTE_OFFSET <= i < self.vocab_size)
        return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model held as its serialized bytes; the processor is built on first use."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, source: str = "<memory>") -> None:
        self.model_proto = bytes(model_proto)
        self.source = source
        self.hash = hashlib.sha256(self.model_proto).hexdigest()
        self._sp: Any = None
        sp = self._processor()  # validate now, in the caller's process, with a clear error
        self.vocab_size = int(sp.get_piece_size())
        # Models trained elsewhere may lack pad/bos/eos (id -1); fall back so batches can still be padded.
        self.eos_id = int(sp.eos_id())
        self.bos_id = int(sp.bos_id())
        self.pad_id = int(sp.pad_id()) if sp.pad_id() >= 0 else max(self.eos_id, 0)
        if self.eos_id < 0:
            raise DataError(f"{source}: sentencepiece model has no EOS id (train it with eos_id set)")

    @classmethod
    def from_file(cls, path: str) -> "SentencePieceTokenizer":
        try:
            with open(path, "rb") as f:
                return cls(f.read(), source=path)
        except OSError as e:
            raise DataError(f"{path}: cannot read sentencepiece model ({e.strerror})") from None

    def _processor(self) -> Any:
        if self._sp is None:
            sp = spm.SentencePieceProcessor()
            try:
                sp.LoadFromSerializedProto(self.model_proto)
            except (RuntimeError, OSError) as e:
                raise DataError(f"{self.source}: not a sentencepiece model ({str(e).strip()})") from None
            self._sp = sp
        return self._sp

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sp"] = None  # rebuilt lazily in the (spawned) process that unpickles us
        return state

    def encode(self, text: str) -> list[int]:
        return self._processor().encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._processor().encode(list(texts), out_type=int, num_threads=1)

    def decode(self, ids: Iterable[int]) -> str:
        return self._processor().decode([int(i) for i in ids])

    def save(self, path: str) -> None:
        atomic_write(path, self.model_proto)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": TOKENIZER_FILE}


def parse_train_spec(spec: str) -> tuple[str, int] | None:
    """``sp:8192`` → ("bpe", 8192); ``sp-unigram:8192`` → ("unigram", 8192); anything else → None."""
    for prefix, model_type in (("sp:", "bpe"), ("sp-bpe:", "bpe"), ("sp-unigram:", "unigram")):
        if spec.startswith(prefix):
            try:
                return model_type, int(spec[len(prefix):])
            except ValueError:
                raise DataError(f"tokenizer spec {spec!r}: the vocabulary size must be an integer") from None
    return None


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "bpe",
    *,
    max_sentences: int = 5_000_000,
    num_threads: int | None = None,
    seed_sentencepiece_size: int = 1_000_000,
) -> SentencePieceTokenizer:
    """Train a sentencepiece model on ``texts`` (documents; each line is one training sentence).

    Byte fallback makes every string encodable; the identity normalisation and kept whitespace make
    decode(encode(text)) == text. Special ids are fixed: pad 0, eos 1, bos 2, unk 3.
    """

    if model_type not in ("bpe", "unigram"):
        raise DataError(f"sentencepiece model type {model_type!r}: choose bpe or unigram")
    if vocab_size <= 256 + _BYTE_OFFSET:
        raise DataError(f"sentencepiece vocabulary {vocab_size} is too small: byte fallback alone takes 260 ids")

    def sentences() -> Iterable[str]:
        for text in texts:
            for line in text.split("\n"):
                if line.strip():
                    yield line

    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences()),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            bos_id=BOS_ID,
            unk_id=UNK_ID,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            character_coverage=0.9995,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            seed_sentencepiece_size=seed_sentencepiece_size,
            max_sentence_length=1 << 16,
            hard_vocab_limit=model_type == "bpe",
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(f"sentencepiece training failed ({str(e).strip()})") from None
    return SentencePieceTokenizer(writer.getvalue(), source=f"trained {model_type}:{vocab_size}")


def load_tokenizer(spec: str) -> Tokenizer:
    """``byte``, ``gpt2`` (or ``gpt2:DIR``), ``hf:PATH`` (a tokenizer.json or a folder holding one), a
    sentencepiece ``.model`` path, or a prepared-data folder."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2" or spec.startswith("gpt2:"):
        return Gpt2Tokenizer(spec[len("gpt2:"):] or None)
    if spec.startswith("hf:"):
        return HFTokenizer.from_path(spec[len("hf:"):])
    if parse_train_spec(spec) is not None:
        raise DataError(f"tokenizer spec {spec!r} trains a new model; only prepare_data does that (load the prepared folder instead)")
    if os.path.isdir(spec):
        return _load_from_prepared(spec)
    if os.path.isfile(spec):
        return SentencePieceTokenizer.from_file(spec)
    if spec.endswith(".model") or os.sep in spec or spec.startswith("."):
        raise DataError(f"{spec}: file not found (a sentencepiece .model file or a prepared-data folder)")
    raise DataError(f"{spec}: unknown tokenizer (use byte, gpt2, hf:PATH, a sentencepiece .model file or a prepared-data folder)")


def _load_from_prepared(folder: str) -> Tokenizer:
    manifest_path = os.path.join(folder, MANIFEST_FILE)
    try:
        with open(manifest_path, encoding="utf-8") as f:
            info = json.load(f)["tokenizer"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{manifest_path}: missing or invalid manifest; cannot tell which tokenizer {folder} uses") from None
    kind = info.get("kind")
    if kind == "sentencepiece":
        tok: Tokenizer = SentencePieceTokenizer.from_file(os.path.join(folder, info.get("file", TOKENIZER_FILE)))
    elif kind == "byte":
        tok = ByteTokenizer()
    elif kind == "gpt2":
        tok = Gpt2Tokenizer()
    elif kind == "hf":
        path = os.path.join(folder, info.get("file", HF_TOKENIZER_FILE))
        try:
            with open(path, "rb") as f:
                tok = HFTokenizer(f.read(), info.get("eos_token"), source=path)
        except OSError as e:
            raise DataError(f"{path}: cannot read Hugging Face tokenizer ({e.strerror})") from None
    else:
        raise DataError(f"{manifest_path}: field tokenizer.kind {kind!r} is not a known tokenizer")
    if tok.hash != info.get("hash"):
        raise DataError(f"{manifest_path}: tokenizer hash {tok.hash[:12]} does not match field tokenizer.hash {str(info.get('hash'))[:12]}")
    return tok
