"""Tokenizers: byte-level (256 bytes + BOS, the default) and a byte-level BPE trained with the `tokenizers` library.

Both report how many UTF-8 bytes each token stands for (`token_bytes`), which is what makes bits per byte comparable
across tokenizers; BOS stands for no bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from loopdeck.gpt.cache import atomic_path, cache_dir
from loopdeck.gpt.corpus import Corpus
from loopdeck.gpt.errors import DataError

BOS = "<|bos|>"
DEFAULT_BPE_VOCAB = 4096


class Tokenizer(Protocol):
    name: str  # recorded with every run: "byte" or "bpe-4096"
    vocab_size: int
    bos_id: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_bytes(self) -> list[int]: ...


class ByteTokenizer:
    """Token i < 256 is byte i; token 256 is BOS."""

    name = "byte"
    vocab_size = 257
    bos_id = 256

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> list[int]:
        return [1] * 256 + [0]


class BPETokenizer:
    """A byte-level BPE (GPT-2 style byte alphabet, so any text round-trips) with BOS as its one special token."""

    def __init__(self, backend) -> None:  # a tokenizers.Tokenizer
        self._backend = backend
        self.vocab_size = backend.get_vocab_size()
        self.bos_id = backend.token_to_id(BOS)
        self.name = f"bpe-{self.vocab_size}"

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders, models, pre_tokenizers, trainers

        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer as Backend

        return cls(Backend.from_file(str(path)))

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self._backend.save(str(tmp))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids)

    def token_bytes(self) -> list[int]:
        # In the byte-level alphabet every character of a token's string is exactly one byte of text.
        lengths = [0] * self.vocab_size
        for token, index in self._backend.get_vocab().items():
            lengths[index] = 0 if index == self.bos_id else len(token)
        return lengths


def get_tokenizer(spec: str, corpus: Corpus) -> Tokenizer:
    """`byte` (or empty), `bpe` or `bpe:VOCAB`. A BPE is trained on the corpus's train split once and cached."""
    spec = spec.strip().lower()
    if spec in ("", "byte"):
        return ByteTokenizer()
    kind, _, size = spec.partition(":")
    if kind != "bpe" or not (size == "" or size.isdigit()):
        raise DataError(f"unknown tokenizer {spec!r}: expected byte, bpe or bpe:VOCAB_SIZE (e.g. bpe:4096)")
    vocab_size = int(size) if size else DEFAULT_BPE_VOCAB
    if not 258 <= vocab_size <= 1_000_000:
        raise DataError(f"BPE vocabulary size must be between 258 and 1000000, got {vocab_size}")
    path = cache_dir() / "tokenizers" / f"bpe-{vocab_size}-{corpus.fingerprint[:16]}.json"
    if path.exists():
        return BPETokenizer.load(path)
    tokenizer = BPETokenizer.train(corpus.texts("train"), vocab_size)
    tokenizer.save(path)
    return tokenizer
