"""Byte-level BPE tokenizer in the style of the paper's tinypython_2k, built on HF `tokenizers`
(docs/method.md, "Tokenizer and data").

- Pre-tokenisation: PRETOKENIZE_REGEX (the tinypython regex, used as given), then GPT-2 byte-level mapping.
- `<|endoftext|>` (EOT) has id vocab_size-1 (2047 for the default 2048).
- `("`, `('`, `")`, `')` are always single tokens. BPE training on Python code learns them on its own; when
  a corpus is too small or too odd for that, `train` adds the missing ones as top-priority merges
  (rank 0, ahead of every learned merge) and drops the last learned merges to keep the size (see
  `_rebuild_bpe`). Top priority matters: `")\n` is one pre-token, and a learned `)\n` merge would
  otherwise win.
- A corpus too small to learn vocab_size-1 tokens leaves the ids between the last learned token and EOT
  unused: `encode` never produces them and `decode` maps them to "".
- `encode` never inserts special tokens, and a literal "<|endoftext|>" in the text is encoded as ordinary
  bytes (never as EOT), so corpus text cannot fake a document boundary. Only the data pipeline inserts
  EOT, by id. `decode` writes EOT back as the string "<|endoftext|>".
- Saved as a HF `tokenizer.json` (EOT is both in the BPE vocab, at its id, and an added special token).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from ..errors import ConfigError, DataError
from ._atomic import atomic_write_text

logger = logging.getLogger(__name__)

PRETOKENIZE_REGEX = r"""[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
REQUIRED_TOKENS = ('("', "('", '")', "')")  # single tokens in tinypython_2k; the quote task scores them
MAX_VOCAB_SIZE = 65536  # token ids are stored as uint16
MIN_VOCAB_SIZE = 256 + len(REQUIRED_TOKENS) + 1  # bytes + required merges + EOT


def _bytes_to_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves,
    the other 68 bytes to U+0100 onwards, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in kept}
    extra = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return dict(sorted(table.items()))


BYTE_TO_CHAR = _bytes_to_chars()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def to_byte_level(text: str) -> str:
    """The byte-level (vocab) spelling of `text`, e.g. "a b\\n" -> "aĠbĊ"."""
    return "".join(BYTE_TO_CHAR[b] for b in text.encode("utf-8"))


def _split_pretokenizer() -> pre_tokenizers.Split:
    return pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated")


_SPLIT = _split_pretokenizer()


def pretokenize(text: str) -> list[str]:
    """The pieces PRETOKENIZE_REGEX cuts `text` into (BPE merges never cross them)."""
    return [piece for piece, _ in _SPLIT.pre_tokenize_str(text)]


def _empty_hf(model: models.Model) -> HFTokenizer:
    hf = HFTokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [_split_pretokenizer(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    return hf


def _merge_pair(merge) -> tuple[str, str]:
    """A merge as stored in tokenizer.json: ["a", "b"] (tokenizers >= 0.20) or "a b" (older)."""
    if isinstance(merge, str):
        a, b = merge.split(" ", 1)
        return a, b
    return merge[0], merge[1]


def _rebuild_bpe(vocab: dict[str, int], merges: list, n_learned: int) -> tuple[dict[str, int], list]:
    """Put the missing REQUIRED_TOKENS merges first, then the learned merges, keeping at most n_learned
    tokens. Ids are reassigned in that order (byte alphabet first), as BPE training assigns them."""
    alphabet = set(BYTE_TO_CHAR.values())
    base = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t in alphabet]
    if len(base) != 256:
        raise RuntimeError(f"trained BPE vocab holds {len(base)} of the 256 byte tokens")
    required = [to_byte_level(s) for s in REQUIRED_TOKENS]
    forced = [(s[0], s[1]) for s in required if s not in vocab]
    if forced:
        logger.info("tokenizer: BPE training did not learn %s; added as top-priority merges",
                    ", ".join(repr("".join(chr(CHAR_TO_BYTE[c]) for c in a + b)) for a, b in forced))
    string_merges = isinstance(merges[0], str) if merges else False
    new_vocab = {t: i for i, t in enumerate(base)}
    new_merges = []
    for a, b in forced + [_merge_pair(m) for m in merges]:
        if (a + b) not in new_vocab:
            if len(new_vocab) >= n_learned:
                break
            new_vocab[a + b] = len(new_vocab)
        new_merges.append(f"{a} {b}" if string_merges else [a, b])
    return new_vocab, new_merges


class Tokenizer:
    """Byte-level BPE with an EOT token; see the module docstring for the guarantees."""

    def __init__(self, hf: HFTokenizer):
        eot_id = hf.token_to_id(EOT)
        if eot_id is None:
            raise DataError(f"tokenizer has no {EOT} token; train one with Tokenizer.train or prepare_dataset")
        hf.encode_special_tokens = True  # a literal "<|endoftext|>" in text is plain bytes
        self._hf = hf
        self.eot_id: int = eot_id
        self.vocab_size: int = max(max(hf.get_vocab().values()) + 1, eot_id + 1)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048) -> Tokenizer:
        """Train a byte-level BPE of `vocab_size` tokens (EOT = vocab_size-1) on `texts`; deterministic."""
        if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
            raise ConfigError(f"vocab_size={vocab_size} is out of range; choose {MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE}"
                              " (256 byte tokens + required merges + EOT; ids are stored as uint16)")
        n_chars = 0

        def counted():
            nonlocal n_chars
            for text in texts:
                n_chars += len(text)
                yield text

        hf = _empty_hf(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=2, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
        hf.train_from_iterator(counted(), trainer)
        if n_chars == 0:
            raise DataError("no text to train the tokenizer on; give a non-empty corpus")
        spec = json.loads(hf.to_str())
        vocab, merges = _rebuild_bpe(spec["model"]["vocab"], spec["model"]["merges"], vocab_size - 1)
        if len(vocab) < vocab_size - 1:
            logger.warning("tokenizer: the training text only supports %d of %d tokens; ids %d..%d are unused",
                           len(vocab) + 1, vocab_size, len(vocab), vocab_size - 2)
        vocab[EOT] = vocab_size - 1
        spec["model"]["vocab"], spec["model"]["merges"] = vocab, merges
        spec["added_tokens"] = [{"id": vocab_size - 1, "content": EOT, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True}]
        return cls(HFTokenizer.from_str(json.dumps(spec)))

    @classmethod
    def from_json_str(cls, text: str) -> Tokenizer:
        """Build from the text of a tokenizer.json; raises DataError if it is not one."""
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"not a valid tokenizer.json ({msg})") from None
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer.json written by `save` (or any HF byte-level BPE with an EOT token)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer file '{path}' does not exist; check the path or retrain the tokenizer")
        try:
            return cls.from_json_str(path.read_text(encoding="utf-8"))
        except (DataError, UnicodeDecodeError) as e:
            raise DataError(f"tokenizer file '{path}' is corrupt: {e}; delete it and retrain") from None

    def to_json_str(self) -> str:
        """The tokenizer.json text (HF format)."""
        return self._hf.to_str()

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically (temp file + rename)."""
        atomic_write_text(path, self.to_json_str())

    def sha256(self) -> str:
        """Hex digest of the tokenizer.json text: equal digests mean identical tokenisation."""
        return hashlib.sha256(self.to_json_str().encode("utf-8")).hexdigest()

    # -- use ------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; never adds special tokens (a literal "<|endoftext|>" is plain text)."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """encode() of each text, in parallel in Rust."""
        fast = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)  # fast: no offsets
        return [e.ids for e in fast(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Text of a sequence of ids (list, numpy array or tensor); EOT becomes "<|endoftext|>"."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return self._hf.decode(ids, skip_special_tokens=False)

    def token_to_id(self, s: str) -> int | None:
        """Id of the token whose text is `s` (plain text, e.g. '("' or "]\\n"), or None."""
        if s == EOT:
            return self.eot_id
        i = self._hf.token_to_id(to_byte_level(s))
        return None if i == self.eot_id else i

    def token_bytes(self, i: int) -> bytes:
        """The bytes token `i` stands for (b"" for an unused id)."""
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        if i == self.eot_id:
            return EOT.encode("utf-8")
        tok = self._hf.id_to_token(i)
        return b"" if tok is None else bytes(CHAR_TO_BYTE[c] for c in tok)

    def id_to_token(self, i: int) -> str:
        """Readable text of token `i`: its bytes as UTF-8, stray bytes of a split character as \\xNN."""
        return self.token_bytes(i).decode("utf-8", errors="backslashreplace")

    def __len__(self) -> int:
        return self.vocab_size

    def __getstate__(self) -> dict:  # pickle via the JSON, so __init__'s settings are restored
        return {"json": self.to_json_str()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(HFTokenizer.from_str(state["json"]))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id})"
