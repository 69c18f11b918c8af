"""The distributed tests' session fixture: a small corpus, a shared token cache, the ranks' environment."""

from __future__ import annotations

import os

import pytest

from dist_launch import SNIPPET


@pytest.fixture(scope="session")
def dist_env(tmp_path_factory):
    """The corpus, a token cache shared by every launch, and the environment of the rank processes."""
    root = tmp_path_factory.mktemp("dist")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"util{i}.py").write_text(SNIPPET.replace("scale", f"scale_{i}").replace("10", str(i)) * 3)
    launcher_vars = ("SPARSEFORMER_FAULT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    env.update(SPARSEFORMER_CACHE=str(root / "cache"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               RAYON_NUM_THREADS="1", SPARSEFORMER_DIST_TIMEOUT="60")
    return {"corpus": corpus, "env": env, "root": root}
