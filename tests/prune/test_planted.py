"""Pruning recovers a circuit planted by hand (conftest.py), with its exact edge count."""

import pytest

from sparseformer.prune.circuit import find_circuit
from sparseformer.prune.edges import circuit_edges
from sparseformer.prune.search import SearchSettings

from conftest import PLANTED_BIAS_EDGES, PLANTED_EDGES, PLANTED_NODES



@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_pruning_recovers_the_planted_circuit(planted, ablation):
    model, batch, means = planted
    result = find_circuit(model, batch, batch, means if ablation == "mean" else None, task="planted",
                          settings=SearchSettings())   # the defaults
    assert result.kept == PLANTED_NODES
    assert result.nodes == sum(len(c) for c in PLANTED_NODES.values())
    assert (result.edges, result.bias_edges) == (PLANTED_EDGES, PLANTED_BIAS_EDGES)
    assert result.loss <= result.target_loss and result.sufficient
    # the circuit is necessary and a random circuit of the same shape does not do the task
    assert result.necessity_loss > 0.5 and result.random_loss > 0.5 and result.ablated_loss > 0.5
    # every planted node matters on its own: ablating any one from the circuit breaks the task
    assert all(info["ablation_loss"] > 0.5 for info in result.node_info)
    assert result.settings["ablation"] == ablation


def test_planted_edges_have_the_planted_weights(planted):
    model = planted[0]
    edges, bias = circuit_edges(model, PLANTED_NODES)
    got = {(e.src, e.tgt): e.weight for e in edges}
    assert got == {("0.attn.act_in.0", "0.attn.v.0"): 1.0, ("0.attn.v.0", "0.attn.resid_delta.1"): 4.0,
                   ("0.mlp.act_in.1", "0.mlp.post_act.3"): 1.0, ("0.mlp.post_act.3", "0.mlp.resid_delta.2"): 2.0}
    assert {e.tgt for e in bias} == {"0.mlp.post_act.3", "0.mlp.resid_delta.2"}


def test_frozen_norms_and_calibration_keep_the_planted_circuit(planted):
    model, batch, means = planted
    result = find_circuit(model, batch, batch, means, task="planted", settings=SearchSettings(),
                          freeze_norms=True, calibrate_logits=True)
    assert result.kept == PLANTED_NODES
    assert result.calibration is not None and result.calibration["scale"] > 0
    assert result.loss <= result.target_loss
