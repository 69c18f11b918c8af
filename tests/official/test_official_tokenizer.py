"""Data-gym tokenizer files (encoder.json + vocab.bpe): import encodes like the official loader, export
writes the same files, and imported runs carry the tokenizer."""

import inspect
import json
import textwrap

import pytest
from click.testing import CliRunner

from official_ref import (base_config, byte_to_unicode, datagym_byte_order, random_state, rank_bpe_encode, read_ranks,
                          write_datagym_from_hf, write_official)
from sparseformer.checkpoint import load_run
from sparseformer.cli import main
from sparseformer.data.tokenizer import Tokenizer
from sparseformer.errors import DataError
from sparseformer.official import import_official, read_datagym, write_datagym

VOCAB = 300
HELD_OUT = [
    inspect.getsource(json.dumps),
    "x = {'a': [1, 2, 3]}\nprint(f\"{x['a'][0]:>10}\")\n\n\n    \t  \r\n",
    "héllo wörld ✓ 日本語 12345678 ]]\n])\n('a', \"b\")",
    "<|endoftext|> is plain text here",
]


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train([inspect.getsource(textwrap)[:6000]], vocab_size=VOCAB)


@pytest.fixture(scope="module")
def datagym_dir(trained, tmp_path_factory):
    d = tmp_path_factory.mktemp("datagym")
    write_datagym_from_hf(json.loads(trained.to_json_str()), d, trained.eot_id)
    return d


def test_the_test_files_are_valid_datagym(datagym_dir):
    ranks = read_ranks(datagym_dir)                     # asserts encoder.json == ranks, as the official loader
    assert [ranks[bytes([b])] for b in datagym_byte_order()] == list(range(256))
    assert byte_to_unicode()[ord(" ")] == "Ġ" and byte_to_unicode()[ord("\n")] == "Ċ"


def test_import_encodes_like_the_official_loader(trained, datagym_dir):
    tok = read_datagym(datagym_dir)
    ranks = read_ranks(datagym_dir)
    assert tok.eot_id == VOCAB - 1 and tok.vocab_size == VOCAB
    for text in HELD_OUT:
        ids = tok.encode(text)
        assert ids == rank_bpe_encode(text, ranks) == trained.encode(text)
        assert tok.decode(ids) == text
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"


def test_export_writes_the_same_files(datagym_dir, tmp_path):
    write_datagym(read_datagym(datagym_dir), tmp_path)
    for name in ("encoder.json", "vocab.bpe"):
        assert (tmp_path / name).read_text().split() == (datagym_dir / name).read_text().split(), name
    assert json.loads((tmp_path / "encoder.json").read_text()) == json.loads((datagym_dir / "encoder.json").read_text())


def test_import_with_tokenizer_makes_a_complete_run(datagym_dir, tmp_path, trained):
    cfg = base_config(vocab_size=VOCAB)
    src = write_official(tmp_path / "src", cfg, random_state(cfg, seed=0))
    import_official(src, tmp_path / "run", tokenizer_dir=datagym_dir)
    run = load_run(tmp_path / "run")
    assert run.tokenizer.encode(HELD_OUT[1]) == trained.encode(HELD_OUT[1])
    res = CliRunner().invoke(main, ["sample", str(tmp_path / "run"), "--prompt", "def f(", "-n", "4"])
    assert res.exit_code == 0 and res.output.startswith("def f("), res.output
    for name in ("encoder.json", "vocab.bpe"):   # found next to the weights without --tokenizer-dir
        (src / name).write_text((datagym_dir / name).read_text())
    m = import_official(src, tmp_path / "run2")
    assert m.tokenizer is not None
    import_official(src, tmp_path / "run2", force=True)
    from sparseformer.official import export_official
    export_official(tmp_path / "run2", tmp_path / "exp")
    assert (tmp_path / "exp" / "vocab.bpe").read_text() == (datagym_dir / "vocab.bpe").read_text()


def test_tokenizer_bigger_than_the_model_vocab(datagym_dir, tmp_path):
    cfg = base_config(vocab_size=64)
    src = write_official(tmp_path / "src", cfg, random_state(cfg, seed=0))
    with pytest.raises(DataError, match="300 ids but the model only 64"):
        import_official(src, tmp_path / "run", tokenizer_dir=datagym_dir)


def test_bad_tokenizer_files(datagym_dir, tmp_path):
    with pytest.raises(DataError, match="encoder.json"):
        read_datagym(tmp_path)
    enc = json.loads((datagym_dir / "encoder.json").read_text())
    a, b = next(t for t, i in enc.items() if i == 260), next(t for t, i in enc.items() if i == 261)
    enc[a], enc[b] = 261, 260
    (tmp_path / "encoder.json").write_text(json.dumps(enc))
    (tmp_path / "vocab.bpe").write_text((datagym_dir / "vocab.bpe").read_text())
    with pytest.raises(DataError, match="disagrees with"):
        read_datagym(tmp_path)
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nabc\n")
    with pytest.raises(DataError, match="line 2"):
        read_datagym(tmp_path)


def test_encoder_without_eot_puts_it_last_in_the_model_vocab(datagym_dir, tmp_path):
    enc = json.loads((datagym_dir / "encoder.json").read_text())
    del enc["<|endoftext|>"]
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "encoder.json").write_text(json.dumps(enc))
    (tok_dir / "vocab.bpe").write_text((datagym_dir / "vocab.bpe").read_text())
    cfg = base_config(vocab_size=320)
    src = write_official(tmp_path / "src", cfg, random_state(cfg, seed=0))
    m = import_official(src, tmp_path / "run", tokenizer_dir=tok_dir)
    assert m.tokenizer.eot_id == 319 and m.tokenizer.decode([319]) == "<|endoftext|>"


def test_tokenizer_dir_without_the_files(tmp_path):
    cfg = base_config()
    src = write_official(tmp_path / "src", cfg, random_state(cfg, seed=0))
    with pytest.raises(DataError, match="has no encoder.json"):
        import_official(src, tmp_path / "run", tokenizer_dir=tmp_path / "empty")
