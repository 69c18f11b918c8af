"""GPT-2 "data-gym" tokenizer files (encoder.json + vocab.bpe, the form of the paper's tinypython_2k) <->
our Tokenizer.

In data-gym form a token's id is its BPE rank: the 256 byte tokens come first, ordered by their byte-level
character (the printable bytes, then the other 68), and each line of vocab.bpe adds the next id. The
official loader checks encoder.json against those ranks; we check the same on import and export.
`<|endoftext|>` sits in encoder.json at its id (2047 for tinypython_2k).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from ..checkpoint import atomic_write_text
from ..data.tokenizer import BYTE_TO_CHAR, EOT, PRETOKENIZE_REGEX, Tokenizer
from ..errors import CheckpointError, DataError

logger = logging.getLogger(__name__)

ENCODER_FILE, MERGES_FILE = "encoder.json", "vocab.bpe"
MERGES_HEADER = "#version: 0.2"
BYTE_TOKENS = sorted(BYTE_TO_CHAR.values())   # data-gym rank order of the 256 byte tokens
_IGNORED_SPECIALS = ("<|startoftext|>",)      # in GPT-2's encoder.json; unused by tinypython


def has_datagym_files(directory: Path) -> bool:
    return (Path(directory) / ENCODER_FILE).is_file() and (Path(directory) / MERGES_FILE).is_file()


def _ranks(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> rank as the official loader computes it (a repeated merge takes the later rank)."""
    ranks = {tok: i for i, tok in enumerate(BYTE_TOKENS)}
    for n, (a, b) in enumerate(merges, start=len(BYTE_TOKENS)):
        ranks[a + b] = n
    return ranks


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise DataError(f"{path} line {n}: {line[:40]!r} is not a merge of the form 'a b'")
        merges.append((parts[0], parts[1]))
    return merges


def read_datagym(directory: str | Path, eot_id: int | None = None) -> Tokenizer:
    """Our Tokenizer for encoder.json + vocab.bpe in `directory`; DataError if they are missing or disagree.

    `eot_id` places <|endoftext|> when encoder.json does not list it (default: after the last BPE token)."""
    directory = Path(directory)
    enc_path, bpe_path = directory / ENCODER_FILE, directory / MERGES_FILE
    for p in (enc_path, bpe_path):
        if not p.is_file():
            raise DataError(f"{directory} has no {p.name}; a data-gym tokenizer is encoder.json + vocab.bpe")
    try:
        encoder = json.loads(enc_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{enc_path} is not valid JSON ({e}); restore the file") from None
    if not isinstance(encoder, dict) or not all(type(v) is int for v in encoder.values()):
        raise DataError(f"{enc_path} must map token strings to integer ids")
    merges = _read_merges(bpe_path)
    ranks = _ranks(merges)
    known = set(BYTE_TOKENS)
    for a, b in merges:
        if a not in known or b not in known:
            raise DataError(f"{bpe_path}: merge '{a} {b}' uses a token no earlier line creates")
        known.add(a + b)
    encoder = dict(encoder)
    eot_id = encoder.pop(EOT, eot_id)
    for special in _IGNORED_SPECIALS:
        if encoder.pop(special, None) is not None:
            logger.info("%s: ignoring %s", enc_path, special)
    if encoder != ranks:
        tok = next(t for t in sorted(set(encoder) | set(ranks), key=lambda t: ranks.get(t, -1))
                   if encoder.get(t) != ranks.get(t))
        raise DataError(f"{enc_path} disagrees with {bpe_path}: token {tok!r} has id {encoder.get(tok)} in "
                        f"{ENCODER_FILE} but rank {ranks.get(tok)} from the merges; not a data-gym tokenizer")
    if eot_id is None:
        eot_id = max(ranks.values()) + 1
        logger.warning("%s has no %s; giving it id %d", enc_path, EOT, eot_id)
    if type(eot_id) is not int or eot_id in ranks.values():
        raise DataError(f"{enc_path}: {EOT} has id {eot_id!r}, which is not a free token id")
    hf = HFTokenizer(models.BPE(vocab={**ranks, EOT: eot_id}, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return Tokenizer(hf)


def _split_regex(spec: dict) -> str | None:
    """The pattern of the Split pre-tokenizer of a tokenizer.json spec, or None."""
    pre = spec.get("pre_tokenizer") or {}
    for p in pre.get("pretokenizers", [pre]):
        if p.get("type") == "Split":
            return (p.get("pattern") or {}).get("Regex")
    return None


def write_datagym(tokenizer: Tokenizer, directory: str | Path) -> None:
    """Write encoder.json + vocab.bpe for `tokenizer` (atomically); CheckpointError if it has no data-gym form."""
    spec = json.loads(tokenizer.to_json_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or _split_regex(spec) != PRETOKENIZE_REGEX:
        raise CheckpointError("the run's tokenizer is not a byte-level BPE with the tinypython regex; it cannot "
                              "be written as encoder.json + vocab.bpe")
    vocab = {t: i for t, i in model["vocab"].items() if t != EOT}
    merges, seen = [], set(BYTE_TOKENS)
    for m in model["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a + b not in seen:  # a repeated merge adds no token; data-gym ranks need one token per line
            seen.add(a + b)
            merges.append((a, b))
    ranks = _ranks(merges)
    if vocab != ranks:
        tok = next(t for t in sorted(set(vocab) | set(ranks), key=lambda t: ranks.get(t, -1))
                   if vocab.get(t) != ranks.get(t))
        raise CheckpointError(f"the run's tokenizer ids are not BPE ranks (token {tok!r} has id {vocab.get(tok)}, "
                              f"rank {ranks.get(tok)}); it cannot be written in data-gym form")
    directory = Path(directory)
    atomic_write_text(directory / ENCODER_FILE, json.dumps({**ranks, EOT: tokenizer.eot_id}) + "\n")
    atomic_write_text(directory / MERGES_FILE, MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges))
