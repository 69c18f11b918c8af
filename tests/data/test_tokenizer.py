"""Tokenizer: regex pre-tokenisation, EOT id, required single tokens, round trips, save/load."""

import json
import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sparseformer.data import EOT, PRETOKENIZE_REGEX, Tokenizer
from sparseformer.data.tokenizer import REQUIRED_TOKENS, pretokenize
from sparseformer.errors import ConfigError, DataError

from synthpy import python_text

CODE_SAMPLES = [
    'print("x")\n',
    "def f(a, b):\n\n\n    return [[a, b]]\n\t\t# tab\r\n",
    "x = {'ключ': \"значение\", 'k': 1_000_000}  # 注释 ✓ 🐍\n",
    "    \n  \n\n        pass   \n",
    "a = b'\\x00\\xff'  \u00a0\u2003 end",
    "",
    " ",
    "<|endoftext|>",
]

# -- pre-tokenisation ------------------------------------------------------------------------------


def test_regex_numbers_split_in_chunks_of_three():
    assert pretokenize("x = 1234567") == ["x", " =", " ", "123", "456", "7"]


def test_regex_punctuation_runs_absorb_newlines():
    assert pretokenize('print("x")\n') == ["print", '("', "x", '")\n']
    assert pretokenize("a = [[1]]\n\nb") == ["a", " =", " [[", "1", "]]\n\n", "b"]
    assert pretokenize("x],\n") == ["x", "],\n"]


def test_regex_letters_and_leading_char():
    # \p{L} covers non-ASCII letters; one optional non-letter glues onto a word; spaces before a word
    # leave their last space to the word (the (?!\S) lookahead)
    assert pretokenize("(größe 数据") == ["(größe", " 数据"]
    assert pretokenize("a    b") == ["a", "   ", " b"]


@given(st.text(alphabet=st.sampled_from(list("aZé数 \t\r\n0123456789()[]'\",./#_-:\u00a0\u2003")), max_size=40))
@example("  \n  x\n\n")
def test_hf_regex_engine_matches_python_regex(text):
    regex = pytest.importorskip("regex")
    assert pretokenize(text) == regex.findall(PRETOKENIZE_REGEX, text)


# -- special token and vocabulary -----------------------------------------------------------------


def test_eot_is_last_id(py_tokenizer):
    tok = py_tokenizer
    assert (tok.vocab_size, tok.eot_id) == (2048, 2047)
    assert tok.token_to_id(EOT) == 2047
    assert tok.decode([2047]) == EOT
    assert tok.id_to_token(2047) == EOT


def test_eot_is_last_id_for_other_sizes():
    tok = Tokenizer.train([python_text(20_000)], vocab_size=300)
    assert (tok.vocab_size, tok.eot_id) == (300, 299)
    assert max(max(tok.encode(python_text(5_000, seed=3))), 0) < 299


def test_small_corpus_leaves_unused_ids_never_produced():
    tok = Tokenizer.train(["def f(x):\n    return x\n"] * 3, vocab_size=2048)
    assert tok.eot_id == 2047
    ids = tok.encode("def g(y):\n    return y + 1\n")
    assert max(ids) < 300
    assert tok.decode(ids) == "def g(y):\n    return y + 1\n"


@pytest.mark.parametrize("bad", [100, 260, 70_000])
def test_vocab_size_out_of_range(bad):
    with pytest.raises(ConfigError, match="vocab_size"):
        Tokenizer.train(["abc"], vocab_size=bad)


def test_training_on_nothing_is_a_data_error():
    with pytest.raises(DataError, match="no text"):
        Tokenizer.train([], vocab_size=512)


# -- required single tokens -------------------------------------------------------------------------


@pytest.mark.parametrize("text, wanted", [('print("x")', ['("', '")']), ("f('a')", ["('", "')"]),
                                          ('x = g("a") + h(\'b\') or 1', ['("', '")', "('", "')"])])
def test_quote_paren_tokens_are_single_in_context(py_tokenizer, text, wanted):
    ids = py_tokenizer.encode(text)
    for s in wanted:
        tid = py_tokenizer.token_to_id(s)
        assert tid is not None, s
        assert tid in ids, (s, [py_tokenizer.id_to_token(i) for i in ids])


def test_quote_paren_tokens_forced_on_a_corpus_without_them():
    tok = Tokenizer.train(["the quick brown fox jumps over the lazy dog\n" * 50], vocab_size=512)
    for s in REQUIRED_TOKENS:
        tid = tok.token_to_id(s)
        assert tid is not None and tok.id_to_token(tid) == s
    assert tok.encode('f("a")') == [tok.token_to_id("f"), tok.token_to_id('("'), tok.token_to_id("a"),
                                     tok.token_to_id('")')]


def test_training_is_deterministic():
    texts = [python_text(30_000, seed=5), python_text(10_000, seed=6)]
    a, b = Tokenizer.train(texts, 1024), Tokenizer.train(list(texts), 1024)
    assert a.to_json_str() == b.to_json_str()


# -- encode / decode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", CODE_SAMPLES)
def test_roundtrip_code_samples(py_tokenizer, text):
    assert py_tokenizer.decode(py_tokenizer.encode(text)) == text


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_roundtrip_any_unicode(py_tokenizer, text):
    ids = py_tokenizer.encode(text)
    assert all(0 <= i < py_tokenizer.eot_id for i in ids)
    assert py_tokenizer.decode(ids) == text


def test_literal_eot_text_is_plain_bytes(py_tokenizer):
    ids = py_tokenizer.encode("a<|endoftext|>b")
    assert py_tokenizer.eot_id not in ids
    assert py_tokenizer.decode(ids) == "a<|endoftext|>b"
    assert py_tokenizer.decode([*py_tokenizer.encode("a"), py_tokenizer.eot_id]) == "a<|endoftext|>"


def test_encode_batch_matches_encode(py_tokenizer):
    texts = CODE_SAMPLES + [python_text(3_000, seed=9)]
    assert py_tokenizer.encode_batch(texts) == [py_tokenizer.encode(t) for t in texts]


def test_decode_accepts_arrays_and_rejects_out_of_range(py_tokenizer):
    np = pytest.importorskip("numpy")
    ids = py_tokenizer.encode("hello world")
    assert py_tokenizer.decode(np.array(ids, dtype=np.uint16)) == "hello world"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        py_tokenizer.decode([2048])


def test_token_text_helpers(py_tokenizer):
    tok = py_tokenizer
    nl = tok.token_to_id("\n")
    assert tok.id_to_token(nl) == "\n" and tok.token_bytes(nl) == b"\n"
    assert tok.token_to_id("this-is-surely-not-one-token") is None
    split_char = next(i for i in range(256) if tok.token_bytes(i) == b"\xe6")  # first byte of 数
    assert tok.id_to_token(split_char) == "\\xe6"


# -- save / load -------------------------------------------------------------------------------------


def test_save_load_roundtrip(py_tokenizer, tmp_path):
    path = tmp_path / "tok" / "tokenizer.json"
    py_tokenizer.save(path)
    loaded = Tokenizer.load(path)
    text = python_text(2_000, seed=4)
    assert loaded.encode(text) == py_tokenizer.encode(text)
    assert (loaded.vocab_size, loaded.eot_id) == (2048, 2047)
    assert loaded.encode("<|endoftext|>") == py_tokenizer.encode("<|endoftext|>")  # setting survives load
    assert json.loads(path.read_text())["model"]["type"] == "BPE"  # HF tokenizer.json format


def test_pickle_keeps_behaviour(py_tokenizer):
    import pickle

    clone = pickle.loads(pickle.dumps(py_tokenizer))
    assert clone.to_json_str() == py_tokenizer.to_json_str()
    assert clone.eot_id not in clone.encode("a<|endoftext|>b")


def test_save_is_atomic(py_tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "tokenizer.json"
    path.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        py_tokenizer.save(path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left behind


def test_load_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope.json")


@pytest.mark.parametrize("content", ["{not json", '{"model": {"type": "BPE"}}', ""])
def test_load_corrupt_file(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(DataError, match="corrupt") as info:
        Tokenizer.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_without_eot(py_tokenizer, tmp_path):
    spec = json.loads(py_tokenizer.to_json_str())
    del spec["model"]["vocab"][EOT]
    spec["added_tokens"] = []
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(DataError, match="endoftext"):
        Tokenizer.load(path)
