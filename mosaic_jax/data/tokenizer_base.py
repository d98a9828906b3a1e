"""The tokenizer interface every tokenizer implements (``encode``, ``decode``, ``vocab_size``, ``eos_id``,
``bos_id``, ``pad_id``, ``hash``), the special ids and file names of prepared data, and an atomic file write.

``hash`` is a sha256 of what defines the mapping text → ids, so prepared data and checkpoints can refuse a
mismatched tokenizer. Implementations: tokenizers.py (byte, sentencepiece), tokenizers_bpe.py (GPT-2 BPE through
tiktoken, Hugging Face ``tokenizer.json``).
"""
from __future__ import annotations

import abc
import os
from typing import Any, Iterable, Sequence

# Special ids shared by the byte and sentencepiece tokenizers (sentencepiece is trained with these).
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.model"  # name of the sentencepiece model inside a prepared-data folder
MANIFEST_FILE = "manifest.json"


class Tokenizer(abc.ABC):
    """Text ↔ ids. Subclasses set ``kind``, ``vocab_size``, ``eos_id``, ``bos_id``, ``pad_id``, ``hash``."""

    kind: str
    vocab_size: int
    eos_id: int
    bos_id: int
    pad_id: int
    hash: str

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (no BOS/EOS added)."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special ids are dropped."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this tokenizer."""
        return {
            "kind": self.kind,
            "hash": self.hash,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "bos_id": self.bos_id,
            "pad_id": self.pad_id,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, hash={self.hash[:12]})"



def atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: readers never see half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
