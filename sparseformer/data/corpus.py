"""Corpora: where training text comes from (the paper's pretraining corpus is not released; docs/method.md).

A source is one of:
- None or "stdlib": the .py files of this interpreter's standard library (sysconfig "stdlib" path), sorted.
  Excluded (see STDLIB_EXCLUDED_DIRS): site-packages/dist-packages (third-party code), __pycache__,
  pydoc_data (one 750 KB generated string of documentation), and test fixtures that are deliberately broken
  or in legacy encodings (test/tokenizedata, test/encoded_modules, test/cjkencodings, lib2to3's test data).
  Also excluded: generated codec tables in encodings/ (files that start with "Python Character Mapping
  Codec"; they are mostly unicode escapes). The rest, tests included, is about 29 MB, ~10M tokens.
  (A directory literally called "stdlib" must be given as "./stdlib".)
- a directory: its .py and .txt files, recursively, sorted by relative path; hidden directories and
  __pycache__ are skipped;
- a .py or .txt file: one document;
- a .jsonl file: one document per line, from the line's "text" field (blank lines are ignored).

Files (or JSONL lines) that are not valid UTF-8 are skipped and counted; empty or whitespace-only
documents are dropped and counted. A missing path or a source with no usable document raises DataError.

Design: `iter_documents(source, stats)` checks the path at once and returns a lazy generator that fills the
CorpusStats you pass in; `load_corpus(source)` reads everything and returns (documents, stats).
`resolve_source(source)` lists the files without reading them, to fingerprint a corpus cheaply.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import DataError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".py", ".txt")
STDLIB_EXCLUDED_DIRS = ("site-packages", "dist-packages", "__pycache__", "pydoc_data",
                        "test/tokenizedata", "test/encoded_modules", "test/cjkencodings", "lib2to3/tests/data")
_CODEC_TABLE_MARK = "Python Character Mapping Codec"
_MAX_SKIPPED_NAMES = 20


@dataclass(frozen=True)
class Document:
    name: str  # path relative to the source root, or "file.jsonl:LINE"
    text: str


@dataclass
class CorpusStats:
    """What reading a corpus found. Filled in while the documents are iterated."""

    source: str = ""
    files_read: int = 0  # files opened (a JSONL file counts once)
    files_skipped: int = 0  # files (or JSONL lines) skipped as not UTF-8
    files_empty: int = 0  # empty / whitespace-only documents dropped
    files_excluded: int = 0  # stdlib files dropped by content (codec tables)
    documents: int = 0  # documents yielded
    bytes: int = 0  # UTF-8 bytes of the documents yielded
    skipped_names: list[str] = field(default_factory=list)  # the first few skipped as not UTF-8

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CorpusSource:
    """A resolved source: its kind, root and file list (not yet read)."""

    kind: str  # "stdlib" | "dir" | "file" | "jsonl"
    root: Path  # directory that names are relative to
    files: tuple[Path, ...]
    label: str  # how to name it in messages

    def fingerprint(self) -> str:
        """Hash of (kind, relative names, sizes, mtimes): changes when any file changes."""
        h = hashlib.sha256(f"{self.kind}\n".encode())
        for path in self.files:
            st = path.stat()
            h.update(f"{_rel(path, self.root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def stdlib_dir() -> Path:
    """The standard library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def _walk(root: Path, excluded: tuple[str, ...] = ()) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        keep = []
        for d in dirnames:
            rel = d if rel_dir == "." else f"{rel_dir}/{d}"
            if d.startswith(".") or d == "__pycache__" or d in excluded or rel in excluded:
                continue
            keep.append(d)
        dirnames[:] = keep
        found += [Path(dirpath) / f for f in filenames if f.endswith(TEXT_SUFFIXES)]
    return sorted(found, key=lambda p: _rel(p, root))


def resolve_source(source: str | Path | CorpusSource | None) -> CorpusSource:
    """Turn a source spec into a CorpusSource; raises DataError for a missing or unsupported path."""
    if isinstance(source, CorpusSource):
        return source
    if source is None or str(source) == "stdlib":
        root = stdlib_dir()
        files = [p for p in _walk(root, STDLIB_EXCLUDED_DIRS) if p.suffix == ".py"]
        return CorpusSource("stdlib", root, tuple(files), f"stdlib ({root})")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"corpus path '{source}' does not exist; pass a directory of .py/.txt files, "
                        "a .py/.txt/.jsonl file, or 'stdlib'")
    if path.is_dir():
        return CorpusSource("dir", path, tuple(_walk(path)), f"'{source}'")
    if path.suffix == ".jsonl":
        return CorpusSource("jsonl", path.parent, (path,), f"'{source}'")
    if path.suffix in TEXT_SUFFIXES:
        return CorpusSource("file", path.parent, (path,), f"'{source}'")
    raise DataError(f"corpus file '{source}' has unsupported type '{path.suffix}'; use .py, .txt or .jsonl")


def _skip(stats: CorpusStats, name: str) -> None:
    stats.files_skipped += 1
    if len(stats.skipped_names) < _MAX_SKIPPED_NAMES:
        stats.skipped_names.append(name)
    logger.debug("corpus: skipping %s (not UTF-8)", name)


def _decode(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text[1:] if text.startswith("\ufeff") else text


def _jsonl_documents(path: Path, name: str, stats: CorpusStats) -> Iterator[Document]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw)
            if line is None:
                _skip(stats, f"{name}:{lineno}")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be a JSON object "
                                'with a "text" string') from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f'{path}:{lineno}: no "text" string field; each line must be a JSON object '
                                'with a "text" string')
            yield Document(f"{name}:{lineno}", record["text"])


def _raw_documents(src: CorpusSource, stats: CorpusStats) -> Iterator[Document]:
    for path in src.files:
        name = _rel(path, src.root)
        stats.files_read += 1
        if src.kind == "jsonl":
            yield from _jsonl_documents(path, name, stats)
            continue
        text = _decode(path.read_bytes())
        if text is None:
            _skip(stats, name)
            continue
        if src.kind == "stdlib" and _CODEC_TABLE_MARK in text[:300]:
            stats.files_excluded += 1
            continue
        yield Document(name, text)


def iter_documents(source: str | Path | CorpusSource | None, stats: CorpusStats | None = None) -> Iterator[Document]:
    """Documents of `source` in a fixed order, filling `stats` as they are read.

    The path is checked now (DataError if missing); the files are read lazily. When the iteration ends
    without a single usable document, the generator raises DataError ("... is empty ...").
    """
    src = resolve_source(source)
    stats = stats if stats is not None else CorpusStats()
    stats.source = src.label
    return _documents(src, stats)


def _documents(src: CorpusSource, stats: CorpusStats) -> Iterator[Document]:
    for doc in _raw_documents(src, stats):
        if not doc.text.strip():
            stats.files_empty += 1
            continue
        stats.documents += 1
        stats.bytes += len(doc.text.encode("utf-8"))
        yield doc
    if stats.files_skipped:
        logger.warning("corpus %s: skipped %d non-UTF-8 file(s), e.g. %s", src.label, stats.files_skipped,
                       ", ".join(stats.skipped_names[:3]))
    if stats.documents == 0:
        what = "no .py/.txt files" if not src.files else "no non-empty UTF-8 document"
        raise DataError(f"corpus {src.label} is empty: {what} ({stats.files_skipped} skipped as not UTF-8, "
                        f"{stats.files_empty} empty); point it at Python or text files")


def load_corpus(source: str | Path | CorpusSource | None) -> tuple[list[Document], CorpusStats]:
    """Read every document of `source`; returns (documents, stats). DataError if missing or empty."""
    stats = CorpusStats()
    docs = list(iter_documents(source, stats))
    logger.info("corpus %s: %d documents, %.1f MB (%d skipped as not UTF-8)", stats.source, stats.documents,
                stats.bytes / 1e6, stats.files_skipped)
    return docs, stats
