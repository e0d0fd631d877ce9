"""The embedded corpus (deterministic build, pinned split, fingerprint, cache) and user corpora (.txt/.jsonl/.parquet)."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopdeck.gpt import harness as corpus
from loopdeck.gpt.harness import (
    SHARD_MANIFEST,
    DataError,
    Document,
    embedded_corpus,
    fingerprint,
    load_corpus,
    split_for,
)


def test_import_gpt_does_not_import_torch():
    code = "import sys, loopdeck.gpt as gpt; print(gpt.TRAIN_TEMPLATE.name, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["train.py", "False"]


def test_split_is_a_pinned_function_of_the_document_id():
    # Pinned: if these change, CORPUS_FORMAT must change too, or old fingerprints would lie.
    assert {i: split_for(f"doc-{i}") for i in range(6, 13)} == {
        6: "train", 7: "holdout", 8: "train", 9: "train", 10: "val", 11: "train", 12: "val"}
    counts = {name: 0 for name in ("train", "val", "holdout")}
    for i in range(20000):
        counts[split_for(f"stdlib/module_{i}.py")] += 1
    assert counts["holdout"] == pytest.approx(1000, rel=0.1)
    assert counts["val"] == pytest.approx(2000, rel=0.1)


def test_embedded_corpus_builds_identically_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPDECK_CACHE", str(tmp_path))
    first = embedded_corpus(use_cache=False)
    second = embedded_corpus(use_cache=False)
    assert first.fingerprint == second.fingerprint == fingerprint(second.documents)
    assert first.documents == second.documents
    assert first.name == f"embedded:cpython-{'.'.join(map(str, sys.version_info[:3]))}"
    assert 1.5e6 < first.num_bytes < 5e6  # "about 2 MB of technical English"
    ids = [doc.id for doc in first.documents]
    assert len(ids) == len(set(ids))
    assert ids[0].startswith("pydoc/") and ids[-1].startswith("stdlib/")
    assert not any("/test/" in doc_id or "site-packages" in doc_id for doc_id in ids)
    assert all(doc.split == split_for(doc.id) for doc in first.documents)
    json_doc = next(doc for doc in first.documents if doc.id == "stdlib/json/__init__.py")
    assert json_doc.text.startswith("json\nJSON (JavaScript Object Notation)")
    assert "\n\njson.dumps\nSerialize ``obj`` to a JSON formatted ``str``." in json_doc.text
    for split in ("train", "val", "holdout"):
        assert first.texts(split)


def test_embedded_corpus_cache_is_used_and_a_bad_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPDECK_CACHE", str(tmp_path))
    builds = []

    def build():  # the real build is covered above; here only the cache around it matters
        builds.append(1)
        return [Document("pydoc/a", "alpha", "train"), Document("stdlib/b.py", "beta", "val")]

    monkeypatch.setattr(corpus, "build_embedded_documents", build)
    built = embedded_corpus()
    [cache_file] = (tmp_path / "corpus").glob("embedded-*.json")
    assert embedded_corpus() == built and len(builds) == 1

    payload = json.loads(cache_file.read_text(encoding="utf-8"))
    payload["documents"][0][1] = "tampered"
    cache_file.write_text(json.dumps(payload), encoding="utf-8")
    assert embedded_corpus() == built and len(builds) == 2  # fingerprint mismatch: rebuilt, not trusted
    cache_file.write_text("{torn", encoding="utf-8")
    assert embedded_corpus() == built and len(builds) == 3
    assert json.loads(cache_file.read_text(encoding="utf-8"))["fingerprint"] == built.fingerprint
    assert embedded_corpus(use_cache=False) == built and len(builds) == 4


def test_fingerprint_covers_text_ids_and_splits():
    base = [Document("a", "hello", "train"), Document("b", "world", "val")]
    variants = [
        [Document("a", "hello!", "train"), Document("b", "world", "val")],
        [Document("a2", "hello", "train"), Document("b", "world", "val")],
        [Document("a", "hello", "val"), Document("b", "world", "val")],
        list(reversed(base)),
    ]
    assert len({fingerprint(base), *(fingerprint(v) for v in variants)}) == 5


def _paragraphs(count: int, prefix: str) -> str:
    return "\n\n".join(f"{prefix} paragraph {i}: " + "words " * 150 for i in range(count))


def test_user_corpus_from_txt_jsonl_and_parquet(tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "book.txt").write_text(_paragraphs(60, "txt"), encoding="utf-8")
    (tmp_path / "nested" / "records.jsonl").write_text(
        "\n".join(json.dumps({"text": f"jsonl document {i} ünïcode", "id": i}) for i in range(40)) + "\n\n",
        encoding="utf-8")
    pq.write_table(pa.table({"text": [f"parquet row {i}" for i in range(40)] + [None], "n": list(range(41))}),
                   tmp_path / "rows.parquet")
    (tmp_path / "notes.md").write_text("ignored: not a corpus suffix", encoding="utf-8")

    loaded = load_corpus(str(tmp_path))
    assert loaded.name == str(tmp_path)
    ids = [doc.id for doc in loaded.documents]
    assert ids[0] == "book.txt#0" and "nested/records.jsonl#39" in ids and ids[-1] == "rows.parquet#39"
    texts = [doc.text for doc in loaded.documents]
    assert "jsonl document 7 ünïcode" in texts and "parquet row 3" in texts
    book = [doc.text for doc in loaded.documents if doc.id.startswith("book.txt")]
    assert len(book) > 5 and all(len(text) >= corpus.TXT_DOCUMENT_CHARS for text in book[:-1])
    assert "\n\n".join(book) == _paragraphs(60, "txt")
    assert loaded.texts("train") and loaded.texts("val")
    assert load_corpus(str(tmp_path)).fingerprint == loaded.fingerprint

    only_jsonl = load_corpus(str(tmp_path / "**" / "*.jsonl"))
    assert [doc.id for doc in only_jsonl.documents][:2] == ["records.jsonl#0", "records.jsonl#1"]


def test_pinned_validation_shard_supplies_val_and_holdout(tmp_path):
    for name, rows in (("shard_00000.parquet", 50), ("shard_00001.parquet", 50), ("shard_00009.parquet", 60)):
        pq.write_table(pa.table({"text": [f"{name} row {i}" for i in range(rows)]}), tmp_path / name)
    (tmp_path / SHARD_MANIFEST).write_text(json.dumps({"val": "shard_00009.parquet"}), encoding="utf-8")
    loaded = load_corpus(str(tmp_path))
    for doc in loaded.documents:
        if doc.id.startswith("shard_00009"):
            assert doc.split in ("val", "holdout")
        else:
            assert doc.split == "train"
    assert loaded.texts("holdout") and len(loaded.texts("val")) > len(loaded.texts("holdout"))


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "nope", "does not exist"),
    (lambda d: d, "has no .txt, .jsonl or .parquet files"),
    (lambda d: d / "*.txt", "matches no .txt"),
    (lambda d: (d / "x.csv").write_text("a,b") and d / "x.csv", "is not .txt, .jsonl or .parquet"),
    (lambda d: (d / "x.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n') and d / "x.jsonl",
     'x.jsonl line 2: expected a JSON object with a string field "text"'),
    (lambda d: (d / "x.jsonl").write_text("{not json\n") and d / "x.jsonl", "line 1: not valid JSON"),
    (lambda d: pq.write_table(pa.table({"body": ["x"]}), d / "x.parquet") or d / "x.parquet", 'no "text" column'),
    (lambda d: (d / "x.parquet").write_bytes(b"PAR1 not really") and d / "x.parquet", "not a readable parquet"),
    (lambda d: (d / "x.txt").write_text("   \n\n  ") and d / "x.txt", "the files hold no text"),
    (lambda d: (d / "x.txt").write_text("one short document") and d / "x.txt", "none in the val split"),
])
def test_bad_user_data_is_a_clear_data_error(tmp_path, make, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.").replace("*", r"\*")):
        load_corpus(str(make(tmp_path)))
