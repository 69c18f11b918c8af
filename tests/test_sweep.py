"""Sweeps: the sweep file, budgets, the matched-loss comparison, the SVG plots, and a miniature sweep end to end
(two micro models, a few steps, two tasks) that is interrupted and resumed without retraining."""

import hashlib
import json
import math
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

import sparseformer.train as train_mod
from sparseformer.checkpoint import checkpoint_file, read_state
from sparseformer.cli import main
from sparseformer.errors import ConfigError
from sparseformer.sweep import adapters, load_sweep, run_config, run_sweep, sweep_from_dict
from sparseformer.sweep.budget import steps_for_minutes, steps_for_tokens
from sparseformer.sweep.compare import circuit_size, headline, matched_pairs
from sparseformer.report.svg import Axes

TASKS = ["single_double_quote", "for_while"]


def minimal(**extra) -> dict:
    raw = {"shape": {"base_d_model": 32, "n_layer": 1}, "budget": {"steps": 4},
           "grid": {"width": [1, 2], "pfrac": [0.25], "afrac": [0.5]}, "dense": [{"width": 1}],
           "tasks": {"names": TASKS}}
    raw.update(extra)
    return raw


# ---------------------------------------------------------------------------------------------------------
# The sweep file

def test_grid_and_dense_expand_to_named_models():
    cfg = sweep_from_dict(minimal(model=[{"name": "extra", "width": 1, "pfrac": 0.5}]))
    assert [m.name for m in cfg.models] == ["sparse_w1_p0.25_a0.5", "sparse_w2_p0.25_a0.5", "dense_w1", "extra"]
    assert [m.kind for m in cfg.models] == ["sparse", "sparse", "dense", "sparse"]
    assert cfg.prune.all_targets == [0.05, 0.15, 0.4]


def test_width_scales_shape_and_keeps_the_nonzero_budget():
    cfg = sweep_from_dict(minimal())
    w1, w2, dense = (run_config(m, cfg, steps=10) for m in cfg.models)
    assert (w2.model.d_model, w2.model.n_head, w2.model.d_mlp) == (64, 4, 256)
    assert w1.sparsity.weight_density == pytest.approx(0.25) and w2.sparsity.weight_density == pytest.approx(0.0625)
    assert w2.sparsity.embed_density == pytest.approx(0.125)            # pfrac / width (the paper's rule)
    # same pfrac -> the same number of nonzeros in each weight matrix at both widths
    assert w1.sparsity.weight_density * w1.model.d_model * w1.model.d_mlp == \
        pytest.approx(w2.sparsity.weight_density * w2.model.d_model * w2.model.d_mlp)
    assert dense.sparsity.dense and dense.model.afrac == 1.0
    assert w1.train.steps == 10 and w1.model.afrac == 0.5


@pytest.mark.parametrize("raw, message", [
    (minimal(budget={}), "exactly one of tokens, minutes, steps"),
    (minimal(budget={"tokens": 10, "steps": 3}), "exactly one of"),
    (minimal(grid={"widht": [1]}), "did you mean 'width'"),
    (minimal(base={"model": {"d_model": 99}}), "sets model.d_model"),
    (minimal(base={"model": {"block_size": 64}, "train": {"seq_len": 128}}), "exceeds model.block_size"),
    (minimal(base={"train": {"lrr": 0.1}}), "train.lrr"),
    (minimal(shape={"base_d_model": 24}), "multiple of d_head"),
    (minimal(prune={"targets": [0.1, -1]}), "positive"),
    (minimal(grid={}, dense=[]), "lists no models"),
])
def test_bad_sweep_files_fail_with_one_clear_line(raw, message):
    with pytest.raises(ConfigError, match=message) as e:
        sweep_from_dict(raw)
    assert "\n" not in str(e.value)


def test_a_context_shorter_than_task_prompts_is_accepted():
    """Task prompts are cut to the model's context, so block_size may be under 256 (the tiny preset's 128)."""
    cfg = sweep_from_dict(minimal(base={"model": {"block_size": 64}, "train": {"seq_len": 64}}))
    assert all(run_config(m, cfg, steps=2).model.block_size == 64 for m in cfg.models)


def test_toml_and_json_files_load_the_same_sweep(tmp_path):
    (tmp_path / "s.toml").write_text(textwrap.dedent("""
        [sweep]
        out = "results"
        [shape]
        base_d_model = 32
        n_layer = 1
        [budget]
        steps = 4
        [grid]
        width = [1, 2]
        pfrac = [0.25]
        afrac = [0.5]
        [[dense]]
        width = 1
        [tasks]
        names = ["single_double_quote", "for_while"]
        """))
    (tmp_path / "s.json").write_text(json.dumps({**minimal(), "sweep": {"out": "results"}}))
    a, b = load_sweep(tmp_path / "s.toml"), load_sweep(tmp_path / "s.json")
    assert [m.name for m in a.models] == [m.name for m in b.models]
    assert a.out == tmp_path / "results"                      # relative to the file
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "missing.toml")


def test_budgets_turn_into_steps():
    cfg = sweep_from_dict(minimal())
    rc = run_config(cfg.models[0], cfg, steps=1)
    per_step = rc.train.batch_size * rc.train.seq_len
    assert steps_for_tokens(rc, 10 * per_step) == 10 and steps_for_tokens(rc, 10 * per_step + 1) == 11
    rc.train.eval_every, rc.train.eval_batches = 100, 30                # validation adds 10%
    assert steps_for_minutes(rc, 10, steps_per_s=2.0) == math.floor(0.95 * 600 * 2.0 / 1.1)


# ---------------------------------------------------------------------------------------------------------
# The comparison

def _model(name, kind, loss, edges: dict[str, int | None]) -> dict:
    circuits = {t: {"targets": {"0.15": {"status": "ok", "edges": e} if e is not None else {"status": "unreachable"}}}
                for t, e in edges.items()}
    return {"name": name, "kind": kind, "val_loss": loss, "circuits": circuits}


def test_matched_loss_ratio_uses_the_closest_dense_model_and_common_tasks():
    models = [_model("s", "sparse", 3.0, {"a": 10, "b": 40, "c": None}),
              _model("d_far", "dense", 2.0, {"a": 1, "b": 1, "c": 1}),
              _model("d_near", "dense", 3.1, {"a": 160, "b": None, "c": 500})]
    size = circuit_size(models[0], 0.15, n_tasks=3)
    assert size["n_tasks"] == 2 and size["geomean"] == pytest.approx(20.0)   # sqrt(10 * 40); c left out
    (pair,) = matched_pairs(models, 0.15)
    assert pair["dense"] == "d_near" and pair["common_tasks"] == ["a"]
    assert pair["ratio"] == pytest.approx(16.0)
    assert headline([pair]) is pair
    assert headline([{**pair, "ratio": None}]) is None


# ---------------------------------------------------------------------------------------------------------
# Plots

def test_svg_is_well_formed_and_skips_points_a_log_axis_cannot_show():
    ax = Axes(title="t <&>", xlog=2, ylog=10, xlabel="x", ylabel="y")
    ax.line([1, 4, 0, None], [0.1, 1.0, 5.0, 2.0], label="a")
    ax.line([2, 8], [0.5, 0.2], dash=True, label="b", texts=["p", "q"])
    root = ET.fromstring(ax.render())
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 2
    assert ax.series[0].xs == [1.0, 4.0]                    # x = 0 and None dropped on the log axis
    assert "t <&>" in "".join(root.itertext())


# ---------------------------------------------------------------------------------------------------------
# A miniature sweep, end to end

SNIPPET = textwrap.dedent('''
    def add(a, b):
        """Return the sum."""
        return a + b

    for i in range(10):
        print("value", i, 'x')
    while i > 0:
        i -= 1
    ''')


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """Run a two-model sweep that is interrupted while training the second model, then resumed."""
    root = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.setenv("SPARSEFORMER_CACHE", str(root / "cache"))
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(16):
        (corpus / f"m{i}.py").write_text(SNIPPET.replace("add", f"add{i}").replace("10", str(i + 2)) * 3)
    raw = {
        "sweep": {"name": "mini", "data": str(corpus), "device": "cpu"},
        "shape": {"base_d_model": 32, "n_layer": 1},
        "base": {"model": {"vocab_size": 300, "bigram_table": False},
                 "sparsity": {"protect_per_neuron": 1},
                 "train": {"batch_size": 4, "seq_len": 16, "lr": 0.01, "log_every": 2, "eval_every": 4,
                           "ckpt_every": 4, "eval_batches": 2},
                 "data": {"val_frac": 0.2}},
        "budget": {"steps": 8},
        "grid": {"width": [1], "pfrac": [0.25], "afrac": [0.5]},
        "dense": [{"width": 1}],
        "tasks": {"names": TASKS, "eval_pairs": 8},
        "prune": {"target_loss": 5.0, "targets": [0.01], "steps": 3, "batch_pairs": 4, "train_pairs": 8,
                  "test_pairs": 8, "mean_tokens": 128},
    }
    config = root / "mini.json"
    config.write_text(json.dumps(raw))
    cfg = load_sweep(config)

    real_train, real_prune = train_mod.train, adapters.prune_targets
    calls = {"train": [], "prune": []}

    def interrupting_train(run_cfg, out, **kw):
        calls["train"].append((Path(out).name, kw.get("resume", False)))
        if Path(out).name == "dense_w1" and not kw.get("resume"):
            res = real_train(run_cfg, out, **{**kw, "max_steps": 3})
            res.interrupted = True                            # as if Ctrl-C had stopped it at step 3
            return res
        return real_train(run_cfg, out, **kw)

    def counting_prune(run, task, *a, **kw):
        calls["prune"].append((run.path.name, task))
        return real_prune(run, task, *a, **kw)

    mp.setattr(train_mod, "train", interrupting_train)
    mp.setattr(adapters, "prune_targets", counting_prune)
    first = run_sweep(cfg, progress=False)
    first_calls = {k: list(v) for k, v in calls.items()}
    first_results = json.loads((first.out / "results.json").read_text())
    sparse_dir = first.runs / "sparse_w1_p0.25_a0.5"
    weights_hash = hashlib.sha256(checkpoint_file(sparse_dir, "model.safetensors").read_bytes()).hexdigest()
    for v in calls.values():
        v.clear()
    second = run_sweep(cfg, progress=False)
    yield dict(config=config, first=first, first_calls=first_calls, first_results=first_results, second=second,
               calls=calls, sparse_dir=sparse_dir, weights_hash=weights_hash, mp=mp)
    mp.undo()


def test_interrupted_sweep_writes_a_partial_table(mini):
    first, res = mini["first"], mini["first_results"]
    assert first.interrupted and not res["complete"]
    assert [m["name"] for m in res["models"]] == ["sparse_w1_p0.25_a0.5"]
    assert mini["first_calls"]["train"] == [("sparse_w1_p0.25_a0.5", False), ("dense_w1", False)]


def test_resume_does_not_retrain_or_reprune_finished_models(mini):
    calls = mini["calls"]
    assert calls["train"] == [("dense_w1", True)]                     # only the interrupted model, resumed
    assert all(run == "dense_w1" for run, _ in calls["prune"])
    weights = checkpoint_file(mini["sparse_dir"], "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == mini["weights_hash"]
    state = read_state(mini["second"].runs / "dense_w1")
    assert state["finished"] and state["step"] == 8


def test_results_table_contents(mini):
    out = mini["second"].out
    res = json.loads((out / "results.json").read_text())
    assert res["complete"]
    assert res["sweep"]["targets"] == [0.01, 5.0] and res["sweep"]["tasks"] == TASKS
    sparse, dense = res["models"]
    assert (sparse["kind"], dense["kind"]) == ("sparse", "dense")
    assert sparse["weight_density"] == pytest.approx(0.25) and dense["weight_density"] == 1.0
    assert sparse["nonzero"] < sparse["params"] and dense["nonzero"] == dense["params"]
    for m in (sparse, dense):
        assert m["steps"] == 8 and m["tokens"] == 8 * 4 * 16 and m["val_loss"] > 0
        assert set(m["tasks"]) == set(TASKS)
        for task in TASKS:
            ev, circ = m["tasks"][task], m["circuits"][task]
            assert 0 <= ev["accuracy"] <= 1 and ev["n"] > 0
            assert circ["targets"]["0.01"] == {"status": "unreachable"}    # no micro model gets there
            ok = circ["targets"]["5"]
            assert ok["status"] == "ok" and ok["loss"] <= 5.0 and 0 <= ok["nodes"] <= circ["n_nodes_total"]
        low, high = m["circuit_size"]["0.01"], m["circuit_size"]["5"]
        assert (low["geomean"], low["n_tasks"], low["of"]) == (None, 0, 2)
        edges = [m["circuits"][t]["targets"]["5"]["edges"] for t in TASKS]
        assert high["n_tasks"] == 2
        assert high["geomean"] == pytest.approx(math.exp(sum(math.log(max(e, 1)) for e in edges) / 2))
    (pair,) = res["comparison"]["targets"]["5"]["pairs"]
    assert (pair["sparse"], pair["dense"], pair["common_tasks"]) == (sparse["name"], dense["name"], sorted(TASKS))
    sizes = [m["circuit_size"]["5"]["geomean"] for m in (dense, sparse)]
    assert pair["ratio"] == pytest.approx(sizes[0] / sizes[1])
    md = (out / "results.md").read_text()
    assert "sparse_w1_p0.25_a0.5" in md and "unreached" in md and "(0/2)" in md and "dense/sparse" in md
    for name in ("frontier.svg", "edges_vs_target.svg"):
        ET.fromstring((out / name).read_text())


def test_cli_reuses_everything_and_lists_the_plan(mini, monkeypatch):
    def no_training(*a, **kw):
        raise AssertionError("a finished sweep must not train again")
    monkeypatch.setattr(train_mod, "train", no_training)
    runner = CliRunner()
    plan = runner.invoke(main, ["sweep", str(mini["config"]), "--dry-run", "--json"])
    assert plan.exit_code == 0, plan.output
    assert [m["status"] for m in json.loads(plan.output)["models"]] == ["finished", "finished"]
    again = runner.invoke(main, ["sweep", str(mini["config"]), "--json"])
    assert again.exit_code == 0, again.output
    assert len(json.loads(again.output)["models"]) == 2
    bad = runner.invoke(main, ["sweep", str(mini["config"].with_suffix(".yaml"))])
    assert bad.exit_code == 1 and bad.output.startswith("Error: ") and len(bad.output.strip().splitlines()) == 1


def test_per_model_overrides_apply_after_base_and_respect_the_grid():
    cfg = sweep_from_dict(minimal(base={"train": {"lr": 0.01}},
                                  dense=[{"width": 1, "set": {"train": {"lr": 0.005}}}]))
    sparse, dense = run_config(cfg.models[0], cfg, 5), run_config(cfg.models[-1], cfg, 5)
    assert (sparse.train.lr, dense.train.lr) == (0.01, 0.005)
    with pytest.raises(ConfigError, match="sets sparsity.weight_density"):
        sweep_from_dict(minimal(dense=[{"width": 1, "set": {"sparsity": {"weight_density": 0.5}}}]))


def test_a_run_trained_with_another_config_is_named_not_reused(tmp_path):
    from sparseformer.checkpoint import config_difference, save_config
    from sparseformer.sweep.runner import _check_same_config

    cfg = sweep_from_dict(minimal())
    planned = run_config(cfg.models[0], cfg, steps=4)
    save_config(tmp_path, planned)
    assert config_difference(tmp_path, planned) is None
    _check_same_config(tmp_path, planned)
    with pytest.raises(ConfigError, match=r"trained with train.steps=4 but the sweep now asks for 5; pass --force"):
        _check_same_config(tmp_path, run_config(cfg.models[0], cfg, steps=5))
    assert config_difference(tmp_path, run_config(cfg.models[0], cfg, steps=5), ignore=("train.steps",)) is None
