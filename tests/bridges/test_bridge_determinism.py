"""Every op of a bridge training step (the losses, their backward and the SparseAdamW step over model and bridges)
gives the same bytes at 1 and 2 CPU threads, as the plain training step does (docs/reproducibility.md)."""

import pytest
import torch

from sparseformer.bridges import Bridges, bridge_sites, bridge_terms
from sparseformer.bridges.objective import freeze
from sparseformer.config import ModelConfig, SparsityConfig
from sparseformer.determinism import ThreadAudit
from sparseformer.model import GPT
from sparseformer.sparsity.optimizer import SparseAdamW
from sparseformer.sparsity.params import configure, param_groups, write_ks


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_every_op_of_a_bridge_step_gives_the_same_bytes_at_1_and_2_threads(two_threads):
    cfg = ModelConfig(vocab_size=512, n_layer=1, d_model=64, n_head=4, d_head=16, d_mlp=256, block_size=32,
                      afrac=0.25, bigram_table=True, learned_pos_emb=True)
    sc = SparsityConfig(weight_density=1 / 4, embed_density=1 / 2, protect_per_neuron=0)
    torch.manual_seed(0)
    sparse, dense = GPT(cfg), freeze(GPT(cfg))
    configure(sparse, sc)
    write_ks(sparse, 10, 10, sc)
    bridges = Bridges(bridge_sites(1), 64, 64, encoder_k=16)
    opt = SparseAdamW(param_groups(sparse, weight_decay=0.1) + param_groups(bridges, weight_decay=0.1), lr=1e-2)
    x, y = torch.randint(512, (2, 8, 32), generator=torch.Generator().manual_seed(1))

    def step():
        loss = bridge_terms(sparse, dense, bridges, x, y).total(1.0, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()                                       # non-zero bridges and projected weights for the audited step
    audit = ThreadAudit(threads=(2,), repeats=1)
    with audit:
        step()
    assert audit.calls["_log_softmax.default"] >= 5 and audit.calls["topk.default"] >= 2       # KL terms, AbsTopK
    assert audit.mismatches == {}
