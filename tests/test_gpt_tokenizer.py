"""Byte-level and BPE tokenizers: round trips, bytes per token, the cached BPE, bad specs."""

from __future__ import annotations

import pytest

from loopdeck.gpt.harness import ByteTokenizer, Corpus, DataError, Document, get_tokenizer

SAMPLES = ["Hello, world!", "naïve café — 東京 🚀", "  indented\n\tcode = [1, 2]\n\n", ""]


def small_corpus() -> Corpus:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "pythons", "parse", "abstract", "syntax", "trees"]
    texts = [" ".join(words[i % len(words):] + words[: i % len(words)]) + f" ünïcode {i}" for i in range(200)]
    documents = tuple(Document(f"d{i}", text, "val" if i % 10 == 0 else "train") for i, text in enumerate(texts))
    return Corpus("small", "f" * 64, documents)


def test_byte_tokenizer_round_trips_and_counts_bytes():
    tokenizer = get_tokenizer("", small_corpus())
    assert isinstance(tokenizer, ByteTokenizer) and tokenizer.name == "byte"
    assert (tokenizer.vocab_size, tokenizer.bos_id) == (257, 256)
    for text, ids in zip(SAMPLES, tokenizer.encode_batch(SAMPLES), strict=True):
        assert ids == list(text.encode("utf-8"))
        assert tokenizer.decode(ids) == text
    token_bytes = tokenizer.token_bytes()
    assert token_bytes[:256] == [1] * 256 and token_bytes[256] == 0


def test_bpe_trains_round_trips_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPDECK_CACHE", str(tmp_path))
    corpus = small_corpus()
    tokenizer = get_tokenizer("bpe:300", corpus)
    assert tokenizer.name == "bpe-300" and tokenizer.vocab_size == 300
    assert tokenizer.token_bytes()[tokenizer.bos_id] == 0
    encoded = tokenizer.encode_batch(SAMPLES + corpus.texts("val"))
    token_bytes = tokenizer.token_bytes()
    for text, ids in zip(SAMPLES + corpus.texts("val"), encoded, strict=True):
        assert tokenizer.decode(ids) == text
        assert sum(token_bytes[i] for i in ids) == len(text.encode("utf-8"))  # what makes bpb exact
        assert tokenizer.bos_id not in ids
    assert sum(map(len, encoded[len(SAMPLES):])) < 0.75 * sum(len(t.encode()) for t in corpus.texts("val"))

    [saved] = (tmp_path / "tokenizers").glob("bpe-300-ffffffffffffffff.json")
    reloaded = get_tokenizer("BPE:300", corpus)
    assert reloaded.encode_batch(SAMPLES) == tokenizer.encode_batch(SAMPLES)
    assert saved.exists()


@pytest.mark.parametrize(("spec", "message"), [
    ("sentencepiece", "unknown tokenizer"), ("bpe:x", "unknown tokenizer"), ("bpe:100", "between 258"),
])
def test_bad_tokenizer_spec_is_a_data_error(spec, message):
    with pytest.raises(DataError, match=message):
        get_tokenizer(spec, small_corpus())
