"""The faithfulness controls on constructed models whose right verdicts are known: the planted model solves
its task with a single attention head (conftest.py), and its twin with the deciding embedding channel zeroed
cannot solve it at all."""

import pytest
import torch

from sparseformer.prune.faithfulness import CONTROLS, CircuitUnderTest, faithfulness
from sparseformer.prune.means import compute_means
from sparseformer.prune.sites import mask_sites

from conftest import PLANTED_NODES, build_planted, planted_pairs

NONSENSE = (3, 4)           # filler tokens as the arbitrary targets


def means_of(model):
    gen = torch.Generator().manual_seed(1)
    return compute_means(model, [torch.randint(0, 8, (32, 8), generator=gen) for _ in range(4)],
                         mask_sites(model.config))


def verdicts(report) -> dict:
    return {c["name"]: c["status"] for c in report["controls"]}


def test_a_single_head_circuit_passes_every_control():
    model, batch = build_planted(), planted_pairs()
    report = faithfulness(model, batch, batch, means_of(model), CircuitUnderTest(kept=PLANTED_NODES, target_loss=0.15),
                          nonsense_tokens=NONSENSE, means_fn=means_of)
    assert verdicts(report) == dict.fromkeys(CONTROLS, "pass"), report["controls"]
    by = {c["name"]: c for c in report["controls"]}
    assert by["sufficiency"]["random_mean"] > 0.5 and by["necessity"]["necessity_loss"] > 0.5
    assert by["ablation"]["resample"] <= 0.15 and by["ablation"]["zero"] <= 0.15
    assert [h["head"] for h in by["attention"]["heads"]] == ["0.attn.h0"] and by["attention"]["heads"][0]["tv"] < 0.01
    assert not by["nonsense"]["control_reached"] and not by["random_init"]["control_reached"]
    assert report["circuit"]["edges"] == 4 and all(len(c["verdict"].splitlines()) == 1 for c in report["controls"])


def test_a_model_that_cannot_do_the_task_gets_no_trust():
    model = build_planted()
    with torch.no_grad():
        model.transformer.wte.weight[1:3, 0] = 0.0          # tokens 1 and 2 become indistinguishable
    batch = planted_pairs()
    report = faithfulness(model, batch, batch, means_of(model), CircuitUnderTest(kept=None, target_loss=0.15),
                          nonsense_tokens=NONSENSE, means_fn=means_of)
    assert report["full_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert verdicts(report) == {"sufficiency": "fail", "necessity": "n/a", "ablation": "n/a", "norms": "n/a",
                                "nonsense": "pass", "random_init": "pass", "attention": "n/a"}


def test_a_circuit_of_whole_sites_is_not_specific():
    """Every node at each site the planted circuit touches: random node sets of that size per site are the
    same nodes, so neither control can tell the circuit from chance."""
    model, batch = build_planted(), planted_pairs()
    sites = mask_sites(model.config)
    everything = {s: list(range(sites[s])) for s in PLANTED_NODES}
    report = faithfulness(model, batch, batch, means_of(model), CircuitUnderTest(kept=everything, target_loss=0.15),
                          nonsense_tokens=NONSENSE, means_fn=means_of, controls=["sufficiency", "necessity"])
    assert verdicts(report) == {"sufficiency": "fail", "necessity": "fail"}


def test_unknown_control_is_refused():
    model, batch = build_planted(), planted_pairs()
    with pytest.raises(ValueError, match="unknown faithfulness control 'nonsens'"):
        faithfulness(model, batch, batch, means_of(model), CircuitUnderTest(kept=PLANTED_NODES, target_loss=0.15),
                     nonsense_tokens=NONSENSE, means_fn=means_of, controls=["nonsens"])
