"""Fixtures for the data tests: a tokenizer trained on synthetic Python."""

import pytest
from synthpy import python_text

from sparseformer.data import Tokenizer


@pytest.fixture(scope="session")
def py_tokenizer() -> Tokenizer:
    """A 2048-token BPE trained on ~200 KB of synthetic Python."""
    return Tokenizer.train([python_text(200_000, seed=1)], vocab_size=2048)
