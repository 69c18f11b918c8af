"""sparseformer.data: corpora, the byte-level BPE tokenizer, and cached token shards (docs/method.md)."""

from .corpus import CorpusStats, Document, iter_documents, load_corpus
from .dataset import DatasetStats, TokenDataset
from .shards import prepare_dataset
from .tokenizer import EOT, PRETOKENIZE_REGEX, Tokenizer

__all__ = ["EOT", "PRETOKENIZE_REGEX", "CorpusStats", "DatasetStats", "Document", "TokenDataset", "Tokenizer",
           "iter_documents", "load_corpus", "prepare_dataset"]
