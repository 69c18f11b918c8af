"""The cleaning pass: on the planted-circuit model it returns exactly the planted nodes, whatever extra
nodes the bisection kept, and every node it keeps is necessary."""

import torch

from sparseformer.prune.ablate import Ablator
from sparseformer.prune.circuit import find_circuit
from sparseformer.prune.clean import clean_circuit
from sparseformer.prune.edges import EdgeGraph, circuit_edges, count_edges
from sparseformer.prune.search import SearchSettings, keep_loss_fn
from sparseformer.prune.sites import flat_from_kept, kept_from_flat, mask_sites, n_nodes, node_ids

from conftest import PLANTED_EDGES, PLANTED_NODES


def test_cleaning_strips_extra_nodes_down_to_the_planted_circuit(planted):
    model, batch, means = planted
    sites = mask_sites(model.config)
    loss_of = keep_loss_fn(Ablator(model, means), sites, batch, calibrated=False)
    planted_flat = flat_from_kept(PLANTED_NODES, sites)
    gen = torch.Generator().manual_seed(0)
    for extra in (5, 40, n_nodes(sites)):                      # a few extra nodes, many, every node
        keep = planted_flat.clone()
        keep[torch.randperm(n_nodes(sites), generator=gen)[:extra]] = True
        order = torch.randperm(n_nodes(sites), generator=gen).tolist()     # any order
        c = clean_circuit(loss_of, keep.float(), order, target=0.15)
        assert kept_from_flat(c.keep.nonzero()[:, 0].tolist(), sites) == PLANTED_NODES
        assert c.loss <= 0.15 and len(c.removed) == int(keep.sum()) - 7
        # every remaining node is necessary, and the last pass measured it
        assert len(c.node_losses) == 7 and all(v > 0.15 for v in c.node_losses.values())


def test_a_circuit_above_the_target_comes_back_unchanged(planted):
    model, batch, means = planted
    sites = mask_sites(model.config)
    loss_of = keep_loss_fn(Ablator(model, means), sites, batch, calibrated=False)
    keep = torch.zeros(n_nodes(sites))
    c = clean_circuit(loss_of, keep, range(n_nodes(sites)), target=0.15)
    assert torch.equal(c.keep, keep) and c.removed == [] and c.loss > 0.15


def test_find_circuit_cleans_a_poorly_ranked_bisection(planted):
    """A mask run that barely moves tau ranks the nodes by their random init, so the bisection keeps
    many extra nodes."""
    model, batch, means = planted
    random_ranking = SearchSettings(steps=1, lr=1e-9)
    result = find_circuit(model, batch, batch, means, task="planted", settings=random_ranking)
    before = result.before_cleaning
    assert before is not None and before["nodes"] > result.nodes
    assert result.kept == PLANTED_NODES and result.edges == PLANTED_EDGES
    assert len(before["removed"]) == before["nodes"] - result.nodes
    assert result.trials[0]["nodes_before"] == before["nodes"] and result.trials[0]["nodes"] == 7
    assert all(info["ablation_loss"] > result.target_loss for info in result.node_info)
    assert result.settings["node_ablation_pairs"] == batch.n_pairs
    unclean = find_circuit(model, batch, batch, means, task="planted", settings=random_ranking, clean=False)
    assert unclean.before_cleaning is None and unclean.nodes == before["nodes"]


def test_edge_graph_counts_the_edges_of_any_circuit_and_each_nodes_degree(planted):
    model, _, _ = planted
    sites = mask_sites(model.config)
    graph = EdgeGraph(model, sites)
    gen = torch.Generator().manual_seed(0)
    for p in (0.1, 0.4, 1.0):
        keep = (torch.rand(n_nodes(sites), generator=gen) < p).float()
        kept = kept_from_flat(keep.nonzero()[:, 0].tolist(), sites)
        edges, _ = circuit_edges(model, kept)
        assert int(graph.count(keep)) == count_edges(model, kept) == len(edges)
        ids = node_ids(kept_from_flat(range(n_nodes(sites)), sites), sites)
        deg = graph.degrees(keep)
        for i in keep.nonzero()[:, 0].tolist():
            assert deg[i] == sum(1 for e in edges if ids[i] in (e.src, e.tgt))
    m = torch.full((n_nodes(sites),), 0.5, requires_grad=True)      # differentiable for the mask search
    graph.count(m).backward()
    assert torch.allclose(m.grad, graph.degrees(torch.ones(n_nodes(sites))) * 0.5)


def test_cleaning_most_edges_first_and_an_edge_penalty_still_find_the_planted_circuit(planted):
    model, batch, means = planted
    for settings in (SearchSettings(steps=1, lr=1e-9, clean_order="edges"),           # random ranking
                     SearchSettings(edge_coef=1e-3, clean_order="edges")):
        result = find_circuit(model, batch, batch, means, task="planted", settings=settings)
        assert result.kept == PLANTED_NODES and result.edges == PLANTED_EDGES
        assert all(info["ablation_loss"] > result.target_loss for info in result.node_info)
