"""A model built by hand in which a known handful of nodes solves a task, among distractor weights.

Residual channels: 0 carries the deciding token (+ for token 1, - for token 2), 1 is written by the
attention circuit, 2 by the MLP circuit and read by the logits of tokens 5 and 6; 3..7 are distractors.
Prompts are [a, x, (y,) 0] with a in {1, 2}; a = 1 must predict 5, a = 2 must predict 6. The circuit:

  0.attn.act_in.0 -> 0.attn.v.0 (head 0, uniform attention) -> 0.attn.resid_delta.1
  -> 0.mlp.act_in.1 -> 0.mlp.post_act.3 (bias +3 keeps GELU near-linear) -> 0.mlp.resid_delta.2 -> final_resid.2

7 nodes, 4 weight edges, 2 bias edges (c_fc.bias[3], mlp c_proj.bias[2]). Distractor weights: head 1 and
the other v channels read and write channels 3..7; v.0 and post_act.3 also write distractor channels;
v.1 and neuron 7 read circuit channels; every other token's unembedding reads every channel.
"""

import math

import pytest
import torch

from sparseformer.config import ModelConfig
from sparseformer.model import GPT
from sparseformer.prune.means import compute_means
from sparseformer.prune.sites import mask_sites
from sparseformer.tasks import TaskBatch

PLANTED_NODES = {"0.attn.act_in": [0], "0.attn.v": [0], "0.attn.resid_delta": [1], "0.mlp.act_in": [1],
                 "0.mlp.post_act": [3], "0.mlp.resid_delta": [2], "final_resid": [2]}
PLANTED_EDGES = 4
PLANTED_BIAS_EDGES = 2


def _gelu(x: float) -> float:
    return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))


@torch.no_grad()
def build_planted() -> GPT:
    cfg = ModelConfig(vocab_size=8, n_layer=1, d_model=8, n_head=2, d_head=4, d_mlp=8, block_size=8, afrac=1.0)
    model = GPT(cfg)
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape, std=0.5):
        return torch.randn(*shape, generator=gen) * std

    for p in model.parameters():
        p.zero_()
    for norm in (model.transformer.h[0].ln_1, model.transformer.h[0].ln_2, model.transformer.ln_f):
        norm.weight.fill_(1.0)
    distract = slice(3, 8)
    wte = model.transformer.wte.weight
    wte[:, distract] = rnd(8, 5, std=1.0)
    wte[2, distract] = wte[1, distract]                     # tokens 1 and 2 differ only in channel 0
    wte[1, 0], wte[2, 0] = 2.0, -2.0

    attn = model.transformer.h[0].attn
    W, d = attn.c_attn.weight, cfg.d_attn                   # rows: q [0, 8), k [8, 16), v [16, 24)
    W[4:8, distract] = rnd(4, 5)                            # head 1 q/k: distractor attention
    W[d + 4:d + 8, distract] = rnd(4, 5)
    W[2 * d + 1:2 * d + 8, distract] = rnd(7, 5)            # v channels 1..7 read distractor channels
    W[2 * d + 0, 0] = 1.0                                   # circuit: v.0 reads act_in.0
    W[2 * d + 1, 0] = 0.3                                   # distractor: v.1 also reads act_in.0
    P = attn.c_proj.weight
    P[distract, 1:8] = rnd(5, 7, std=0.3)
    P[1, 0] = 4.0                                           # circuit: v.0 -> resid_delta.1
    P[5, 0] = 0.5                                           # distractor: v.0 also writes channel 5
    attn.c_proj.bias[distract] = rnd(5, std=0.2)

    mlp = model.transformer.h[0].mlp
    F, C = mlp.c_fc.weight, mlp.c_proj.weight
    others = [0, 1, 2, 4, 5, 6, 7]
    F[others, distract] = rnd(7, 5)
    mlp.c_fc.bias[others] = rnd(7, std=0.2)
    C[distract, :] = rnd(5, 8, std=0.3)
    F[3, 1] = 1.0                                           # circuit: act_in.1 -> post_act.3
    mlp.c_fc.bias[3] = 3.0                                  #   GELU(x + 3) is near-linear for |x| < 2
    F[7, 1] = 0.5                                           # distractor: neuron 7 also reads channel 1
    C[:, 3] = 0.0
    C[2, 3] = 2.0                                           # circuit: post_act.3 -> resid_delta.2
    C[6, 3] = 0.3                                           # distractor: neuron 3 also writes channel 6
    C[2, [0, 1, 2, 4, 5, 6, 7]] = 0.0
    mlp.c_proj.bias[2] = -2.0 * _gelu(3.0)                  # centre channel 2 on 0
    mlp.c_proj.bias[distract] = rnd(5, std=0.2)

    U = model.lm_head.weight
    U[:] = rnd(8, 8)
    U[5], U[6] = 0.0, 0.0
    U[5, 2], U[6, 2] = 3.0, -3.0
    return model.eval()


def planted_pairs() -> TaskBatch:
    fillers = [3, 4, 7]
    pairs = [([1, x, 0], 5, [2, x, 0], 6) for x in fillers]
    pairs += [([1, x, y, 0], 5, [2, x, y, 0], 6) for x in fillers for y in fillers]
    return TaskBatch.from_token_pairs(pairs)


@pytest.fixture(scope="module")
def planted():
    """(model, batch, means over random token batches)."""
    model = build_planted()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 8, (32, 8), generator=gen) for _ in range(4)]
    means = compute_means(model, batches, mask_sites(model.config))
    return model, planted_pairs(), means
