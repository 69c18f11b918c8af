"""Steering: a planted pair where the decoder direction is known (a permuted, rescaled copy of the dense model,
bridged back exactly) moves the dense output exactly as patching the corresponding dense channel does; node
parsing; the CLI's files and the viewer's curves."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from sparseformer.bridges import BridgeInfo, Bridged, bridge, bridge_sites
from sparseformer.bridges.objective import freeze
from sparseformer.bridges.steer import parse_node, steering_curve, top_node
from sparseformer.checkpoint import load_run
from sparseformer.cli import main
from sparseformer.errors import ConfigError
from sparseformer.hooks import record, replace
from sparseformer.tasks import make_batch, resolve_task

from .conftest import micro
from .planted import permutation_bridges, permuted_copy

TASK = "single_double_quote"


def _planted(dense, alpha: float, seed: int = 0):
    for m in dense.model.modules():
        if isinstance(m, torch.nn.RMSNorm):
            m.eps = 1e-30             # the copy then computes the same function to float rounding, not to eps
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(seed))
    sparse = dataclasses.replace(dense, model=freeze(permuted_copy(dense.model, perm, alpha)))
    sites = bridge_sites(2)
    info = BridgeInfo(dense_run=str(dense.path), dense_step=dense.step, dense_model_sha256="-", sites=sites,
                      d_dense=32, d_sparse=32, encoder_k=None)
    return Bridged(sparse=sparse, dense=dense, bridges=permutation_bridges(sites, perm, alpha), info=info), perm


@torch.no_grad()
def _dense_patched(dense, site, channel, strengths):
    """What steering should give: the dense model's own channel patched by strength * its counterfactual delta."""
    batch = make_batch(resolve_task(TASK), dense.tokenizer, "test", 16, 0, max_len=64)
    batch = batch.select((batch.lengths_a == batch.lengths_b).nonzero().flatten())
    N = len(batch)
    with record(dense.model, site) as rec:
        dense.model(batch.idx)
    act = rec[site][..., channel]
    last = batch.last[:N]
    delta = (act[N:] - act[:N]) * (torch.arange(act.shape[1])[None] <= last[:, None])
    out = []
    for s in strengths:
        def patch(x, _n, s=s):
            x = x.clone()
            x[..., channel] += s * delta
            return x
        with replace(dense.model, {site: patch}):
            z = dense.model(batch.idx[:N])[torch.arange(N), last]
        out.append(float(z.softmax(-1).gather(1, batch.target_b[:, None]).mean()))
    return out


@pytest.mark.parametrize("node_site, alpha", [("1.attn.act_in", 2.0), ("0.mlp.act_in", 0.3),
                                              ("0.attn.resid_delta", 0.5)])
def test_planted_steering_moves_the_dense_output_as_predicted(dense_run, node_site, alpha):
    strengths = [0.0, 1.0, 10.0, 30.0]             # one channel of a 40-step micro model moves its output a little
    dense = load_run(dense_run)
    # the dense channel whose counterfactual delta is largest
    batch = make_batch(resolve_task(TASK), dense.tokenizer, "test", 16, 0, max_len=64)
    with record(dense.model, node_site) as rec:
        dense.model(batch.idx)
    j = int((rec[node_site][16:] - rec[node_site][:16]).abs().sum((0, 1)).argmax())
    bridged, perm = _planted(dense, alpha)
    c = int((perm == j).nonzero())                        # the sparse channel that carries dense channel j
    curve = steering_curve(bridged, TASK, f"{node_site}.{c}", strengths, n_pairs=16, controls=2)
    want = _dense_patched(bridged.dense, node_site, j, strengths)
    assert curve["dense"]["p_target"] == pytest.approx(want, rel=1e-5, abs=1e-8)
    assert curve["sparse"]["p_target"] == pytest.approx(want, rel=1e-5, abs=1e-8)    # the copy is the same function
    assert abs(want[-1] - want[0]) > 1e-3 * want[0]                                   # 100x the tolerance
    if node_site.endswith("act_in"):
        assert curve["rms_sparse"] / curve["rms_dense"] == pytest.approx(alpha, rel=1e-5)
    assert curve["n_pairs"] + curve["n_dropped"] == 16 and len(curve["control"]["channels"]) == 2


def test_nodes_without_a_residual_channel_are_refused():
    assert parse_node("1.attn.act_in.5", 2, 32).bridge_site == "1.resid_in"
    assert parse_node("1.mlp.act_in.5", 2, 32).dense_site == "1.mlp.act_in"
    assert parse_node("0.mlp.resid_delta.5", 2, 32).dense_site == "1.resid_in"
    assert parse_node("1.attn.resid_delta.5", 2, 32).bridge_site == "1.resid_mid"
    for node, msg in (("1.attn.q.3", "carries no residual channel"), ("1.mlp.resid_delta.3", "after the last bridge"),
                      ("2.attn.act_in.3", "layers 0..1"), ("0.attn.act_in.40", "outside the residual width"),
                      ("attn.act_in", "not of the form")):
        with pytest.raises(ConfigError, match=msg):
            parse_node(node, 2, 32)


def test_cli_steer_writes_the_curve_the_plot_and_the_viewer(corpus, dense_run, tmp_path):
    out = tmp_path / "b"
    bridge(dense_run, out, micro(corpus, steps=4), progress=False)
    runner = CliRunner()
    res = runner.invoke(main, ["prune", str(out), "--task", TASK, "--target-loss", "5", "--steps", "2",
                               "--train-pairs", "8", "--eval-pairs", "8", "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["steer", str(out), "--task", TASK, "--node", "1.attn.act_in.3", "--strengths",
                               "0,1", "--pairs", "8", "--controls", "1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["strengths"] == [0.0, 1.0] and len(doc["dense"]["p_target"]) == 2
    curve_json, svg, html = (out / "steering" / TASK / "1.attn.act_in.3.json", out / "steering" / TASK /
                             "1.attn.act_in.3.svg", out / "circuits" / f"{TASK}.html")
    assert json.loads(curve_json.read_text())["node"] == "1.attn.act_in.3"
    assert svg.read_text().startswith("<svg") and "dense, steered" in svg.read_text()
    page = html.read_text()
    assert '"steering":{"1.attn.act_in.3":' in page and "function steeringPlot" in page
    res = runner.invoke(main, ["steer", str(out), "--task", TASK, "--node", "1.attn.q.3"])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(main, ["steer", str(out), "--task", TASK, "--node", "top"])      # the empty circuit
    assert res.exit_code == 1 and "no residual read or write node" in res.output


def test_top_node_is_the_costliest_steerable_node_of_the_circuit(tmp_path):
    nodes = [("1.attn.q.3", 9.0), ("1.mlp.resid_delta.2", 8.0), ("0.mlp.act_in.7", 0.4),
             ("1.attn.act_in.5", 0.9), ("0.attn.resid_delta.1", None)]
    doc = {"edges": 3, "model": {"n_layer": 2},
           "node_info": [{"id": n, "site": n.rpartition(".")[0], "ablation_loss": loss} for n, loss in nodes]}
    (tmp_path / "circuits").mkdir()
    (tmp_path / "circuits" / f"{TASK}.json").write_text(json.dumps(doc))
    assert top_node(tmp_path, TASK) == "1.attn.act_in.5"       # q carries no residual channel; the last write
    with pytest.raises(ConfigError, match="needs the circuit"):   # has no bridge after it
        top_node(tmp_path, "other_task")
