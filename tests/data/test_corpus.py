"""Corpus sources: directories, files, JSONL, the stdlib default, skipping and errors."""

import itertools
import json
import os

import pytest

from sparseformer.data import CorpusStats, iter_documents, load_corpus
from sparseformer.data.corpus import resolve_source, stdlib_dir
from sparseformer.errors import DataError


@pytest.fixture
def mixed_dir(tmp_path):
    root = tmp_path / "corpus"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "b.py").write_text("x = 1\n", encoding="utf-8")
    (root / "a.txt").write_text("plain text ✓\n", encoding="utf-8")
    (root / "pkg" / "sub" / "c.py").write_text("def f():\n    return 'ü'\n", encoding="utf-8")
    (root / "pkg" / "latin1.py").write_bytes("# coding: latin-1\ns = 'caf\xe9'\n".encode("latin-1"))
    (root / "pkg" / "empty.py").write_text("  \n", encoding="utf-8")
    (root / "pkg" / "bom.py").write_bytes("\ufeffy = 2\n".encode("utf-8"))
    (root / "notes.md").write_text("# ignored\n", encoding="utf-8")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "junk.py").write_text("junk = 1\n", encoding="utf-8")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "h.py").write_text("h = 1\n", encoding="utf-8")
    return root


def test_directory_documents_and_stats(mixed_dir):
    docs, stats = load_corpus(mixed_dir)
    assert [d.name for d in docs] == ["a.txt", "b.py", "pkg/bom.py", "pkg/sub/c.py"]
    assert docs[2].text == "y = 2\n"  # BOM dropped
    assert docs[3].text == "def f():\n    return 'ü'\n"
    assert (stats.files_read, stats.files_skipped, stats.files_empty, stats.documents) == (6, 1, 1, 4)
    assert stats.skipped_names == ["pkg/latin1.py"]
    assert stats.bytes == sum(len(d.text.encode()) for d in docs)


def test_iter_documents_fills_the_given_stats(mixed_dir):
    stats = CorpusStats()
    it = iter_documents(str(mixed_dir), stats)
    assert stats.documents == 0  # lazy
    assert len(list(it)) == 4 and stats.documents == 4 and stats.files_skipped == 1


def test_missing_path_fails_at_once(tmp_path):
    with pytest.raises(DataError, match=r"corpus path '.*nowhere' does not exist"):
        iter_documents(tmp_path / "nowhere")


def test_empty_directory(tmp_path):
    with pytest.raises(DataError, match="is empty") as info:
        load_corpus(tmp_path)
    assert "\n" not in str(info.value)


def test_directory_with_only_unusable_files(tmp_path):
    (tmp_path / "x.py").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "y.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"is empty.*1 skipped as not UTF-8, 1 empty"):
        load_corpus(tmp_path)


def test_single_files(tmp_path):
    (tmp_path / "one.py").write_text("print('hi')\n")
    docs, _ = load_corpus(tmp_path / "one.py")
    assert [(d.name, d.text) for d in docs] == [("one.py", "print('hi')\n")]
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported type '.csv'"):
        load_corpus(tmp_path / "data.csv")


def test_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": "def f():\n    pass\n", "id": 1}), "", json.dumps({"text": "x = 'ü'\n"})]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "\xff"}\n')
    docs, stats = load_corpus(path)
    assert [(d.name, d.text) for d in docs] == [("docs.jsonl:1", "def f():\n    pass\n"),
                                                ("docs.jsonl:3", "x = 'ü'\n")]
    assert stats.files_skipped == 1 and stats.skipped_names == ["docs.jsonl:4"]


@pytest.mark.parametrize("bad_line, why", [('{"text": "a"', "not valid JSON"), ('{"body": "a"}', '"text"'),
                                           ('["a"]', '"text"'), ('{"text": 3}', '"text"')])
def test_jsonl_malformed_line_names_file_and_line(tmp_path, bad_line, why):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n\n" + bad_line + "\n")
    with pytest.raises(DataError, match=why) as info:
        load_corpus(path)
    assert f"{path}:3:" in str(info.value) and "\n" not in str(info.value)


def test_fingerprint_follows_file_changes(mixed_dir):
    before = resolve_source(mixed_dir).fingerprint()
    assert resolve_source(mixed_dir).fingerprint() == before
    target = mixed_dir / "b.py"
    target.write_text("x = 2\n")  # same size: the mtime tells
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    edited = resolve_source(mixed_dir).fingerprint()
    assert edited != before
    (mixed_dir / "new.py").write_text("z = 3\n")
    assert resolve_source(mixed_dir).fingerprint() not in (before, edited)


@pytest.mark.parametrize("spec", [None, "stdlib"])
def test_stdlib_default_lists_this_interpreters_library(spec):
    src = resolve_source(spec)
    names = [p.relative_to(src.root).as_posix() for p in src.files]
    assert src.kind == "stdlib" and src.root == stdlib_dir()
    assert "os.py" in names and "json/decoder.py" in names
    assert names == sorted(names) and all(n.endswith(".py") for n in names)
    assert not any(part in n for n in names for part in ("site-packages/", "__pycache__/", "pydoc_data/"))
    docs = list(itertools.islice(iter_documents(spec), 5))
    assert len(docs) == 5 and all(d.text.strip() for d in docs)


def test_stdlib_skips_codec_tables():
    src = resolve_source(None)
    cp1252 = [p for p in src.files if p.relative_to(src.root).as_posix() == "encodings/cp1252.py"]
    if not cp1252:
        pytest.skip("this interpreter has no encodings/cp1252.py")
    from sparseformer.data.corpus import CorpusSource

    stats = CorpusStats()
    one = CorpusSource("stdlib", src.root, tuple(cp1252) + (src.root / "os.py",), "stdlib")
    assert [d.name for d in iter_documents(one, stats)] == ["os.py"]
    assert stats.files_excluded == 1
