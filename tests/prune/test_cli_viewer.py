"""`sparseformer prune` / `circuits` on a small run directory, their one-line errors, and the viewer file."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sparseformer.checkpoint import MODEL_FILE, atomic_save_tensors, save_config
from sparseformer.cli import main
from sparseformer.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from sparseformer.data.corpus import stdlib_dir
from sparseformer.data.tokenizer import Tokenizer
from sparseformer.model import GPT
from sparseformer.prune.circuit import find_circuit
from sparseformer.prune.faithfulness import CircuitUnderTest, faithfulness
from sparseformer.prune.outputs import write_outputs
from sparseformer.prune.search import SearchSettings
from sparseformer.report.viewer import render_viewer
from sparseformer.sites import viewer_layout

NODE = shutil.which("node")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An untrained 1-layer model with a real BPE tokenizer and a small corpus of stdlib files."""
    root = tmp_path_factory.mktemp("prune_cli")
    corpus = root / "corpus"
    corpus.mkdir()
    texts, size = [], 0
    for path in sorted(stdlib_dir().glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        (corpus / path.name).write_text(text, encoding="utf-8")
        texts.append(text)
        size += len(text)
        if size > 300_000:
            break
    run = root / "run"
    run.mkdir()
    cfg = RunConfig(model=ModelConfig(n_layer=1, d_model=32, n_head=2, d_head=16, d_mlp=64, block_size=64, afrac=0.25),
                    train=TrainConfig(seq_len=64), data=DataConfig(source=str(corpus))).validate()
    save_config(run, cfg)
    Tokenizer.train(texts, vocab_size=2048).save(run / "tokenizer.json")
    torch.manual_seed(0)
    atomic_save_tensors(GPT(cfg.model).state_dict(), run / MODEL_FILE, {"step": "0"})
    return run


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEFORMER_CACHE", str(tmp_path / "cache"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(res) -> str:
    assert res.exit_code == 1, res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output, res.output
    return lines[0]


def test_prune_writes_circuit_json_and_viewer(run_dir):
    # an untrained model: a loose target is reached by the empty circuit, which still exercises the whole path
    res = invoke("prune", run_dir, "--task", "single_double_quote", "--target-loss", "5", "--steps", "3",
                 "--train-pairs", "16", "--eval-pairs", "8", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for key in ("task", "target_loss", "full_loss", "loss", "necessity_loss", "random_loss", "nodes", "edges",
                "circuit", "viewer"):
        assert key in out
    assert out["loss"] <= 5 and out["task"] == "single_double_quote"
    doc = json.loads(open(out["circuit"]).read())
    assert doc["kept"] == {} and doc["nodes"] == out["nodes"] == 0 and doc["settings"]["ablation"] == "mean"
    assert (run_dir / "means.safetensors").is_file()
    assert open(out["viewer"]).read().startswith("<!DOCTYPE html>")
    table = invoke("circuits", run_dir)
    assert table.exit_code == 0 and "single_double_quote" in table.output and "geometric mean" in table.output
    summary = json.loads(invoke("circuits", run_dir, "--json").stdout)
    assert summary["rows"][0]["task"] == "single_double_quote" and summary["geomean_edges"] == 1.0


def test_unreachable_target_names_the_full_model_loss(run_dir):
    line = one_error_line(invoke("prune", run_dir, "--task", "single_double_quote", "--steps", "1",
                                 "--train-pairs", "8", "--eval-pairs", "8"))
    assert re.search(r"unpruned model's loss on single_double_quote is \d+\.\d+ per sequence, above the target 0\.15",
                     line)


def test_unknown_task_is_one_line_with_a_suggestion(run_dir):
    line = one_error_line(invoke("prune", run_dir, "--task", "single_double_quot"))
    assert "unknown task" in line and "single_double_quote" in line


def test_run_without_a_model_is_one_line(tmp_path, run_dir):
    empty = tmp_path / "norun"
    empty.mkdir()
    (empty / "config.json").write_text((run_dir / "config.json").read_text())
    assert "model.safetensors" in one_error_line(invoke("prune", empty, "--task", "single_double_quote"))
    assert "does not exist" in one_error_line(invoke("prune", tmp_path / "missing", "--task", "single_double_quote"))
    assert "no circuit for task" in one_error_line(invoke("circuits", empty, "--tasks", "with_as"))


def test_viewer_is_self_contained_and_escapes_the_data(planted, tmp_path):
    model, batch, means = planted
    result = find_circuit(model, batch, batch, means, task="planted", settings=SearchSettings(steps=2))
    result.snippets = {"0.attn.v.0": {"top": [{"tokens": ["</script><b>", "x"], "highlight": 0, "act": 1.0}],
                                      "bottom": []}}
    json_path, html_path = write_outputs(tmp_path, result)
    page = html_path.read_text()
    assert page.count("</script>") == 2                 # the two script elements, none from the data
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(", page)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)
    data = re.search(r'<script id="circuit-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    embedded = json.loads(data)
    assert embedded.pop("layout") == viewer_layout()         # the sites as the model declares them
    assert embedded == json.loads(json_path.read_text())
    assert render_viewer(json.loads(json_path.read_text())) == page


def test_faithfulness_command_adds_its_table_to_the_circuit_and_viewer(run_dir):
    assert "no circuit for task 'with_as'" in one_error_line(invoke("faithfulness", run_dir, "--task", "with_as"))
    res = invoke("prune", run_dir, "--task", "for_while", "--target-loss", "5", "--steps", "2",
                 "--train-pairs", "8", "--eval-pairs", "8", "--json")
    assert res.exit_code == 0, res.output
    line = one_error_line(invoke("faithfulness", run_dir, "--task", "for_while", "--controls", "sufficiency,bogus"))
    assert "unknown control 'bogus'" in line
    res = invoke("faithfulness", run_dir, "--task", "for_while", "--controls", "sufficiency,ablation,nonsense",
                 "--random-draws", "2", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [c["name"] for c in report["controls"]] == ["sufficiency", "ablation", "nonsense"]
    assert all(c["status"] in ("pass", "fail", "n/a") and c["verdict"] for c in report["controls"])
    doc = json.loads((run_dir / "circuits" / "for_while.json").read_text())
    assert doc["faithfulness"]["controls"] == report["controls"]
    page = (run_dir / "circuits" / "for_while.html").read_text()
    data = re.search(r'<script id="circuit-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["faithfulness"]["controls"] == report["controls"]
    text = invoke("faithfulness", run_dir, "--task", "for_while", "--controls", "attention", "--random-draws", "2")
    assert text.exit_code == 0 and "attention  n/a" in text.output


def test_prune_with_faithfulness_prints_one_line_per_control(run_dir):
    res = invoke("prune", run_dir, "--task", "var_if", "--target-loss", "5", "--steps", "2", "--train-pairs", "8",
                 "--eval-pairs", "8", "--faithfulness", "--quiet")
    assert res.exit_code == 0, res.output
    for name in ("sufficiency", "necessity", "ablation", "norms", "nonsense", "random_init", "attention"):
        assert re.search(rf"^  {name} +(pass|fail|n/a) +\S", res.output, re.M), res.output
    doc = json.loads((run_dir / "circuits" / "var_if.json").read_text())
    assert len(doc["faithfulness"]["controls"]) == 7 and doc["before_cleaning"] is not None


def test_prune_search_options_reach_the_circuit_file(run_dir):
    assert "--edge-coef -1.0" in one_error_line(invoke("prune", run_dir, "--task", "var_if", "--edge-coef", "-1"))
    res = invoke("prune", run_dir, "--task", "else_elif", "--target-loss", "5", "--steps", "2", "--train-pairs", "8",
                 "--eval-pairs", "8", "--clean-order", "edges", "--edge-coef", "1e-4", "--json")
    assert res.exit_code == 0, res.output
    search = json.loads((run_dir / "circuits" / "else_elif.json").read_text())["settings"]["search"]
    assert search["clean_order"] == "edges" and search["edge_coef"] == 1e-4 and search["steps"] == 2


def _run_viewer_script(page: Path, actions: list) -> list[dict]:
    """Execute the viewer's script in node against a minimal DOM (viewer_dom.js); one snapshot per action."""
    actions_file = page.with_suffix(".actions.json")
    actions_file.write_text(json.dumps(actions))
    proc = subprocess.run([NODE, str(Path(__file__).with_name("viewer_dom.js")), str(page), str(actions_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(NODE is None, reason="node not found (the viewer's script runs in node)")
def test_viewer_draws_the_circuit_before_and_after_cleaning_and_the_faithfulness_table(planted, tmp_path):
    model, batch, means = planted
    result = find_circuit(model, batch, batch, means, task="planted", settings=SearchSettings(steps=1, lr=1e-9))
    before = result.before_cleaning                       # a random ranking: the bisection kept extra nodes
    assert before["nodes"] > result.nodes
    result.faithfulness = faithfulness(model, batch, batch, means, CircuitUnderTest(kept=result.kept, target_loss=0.15),
                                       nonsense_tokens=(3, 4), means_fn=None, controls=["sufficiency", "ablation"])
    _, html_path = write_outputs(tmp_path, result)
    load, on, off, click = _run_viewer_script(html_path, [["load"], ["toggle", True], ["toggle", False],
                                                          ["click", "0.attn.v.0"]])
    kept = {f"{s}.{c}" for s, chans in result.kept.items() for c in chans}
    removed = {n["id"] for n in before["removed"]}
    # after cleaning (the default view): exactly the kept nodes and their edges, nothing faded
    assert {n["id"] for n in load["nodes"]} == kept and not any(n["faded"] for n in load["nodes"])
    weight = [e for e in load["edges"] if " (removed by cleaning)" not in e["title"]]
    assert len(weight) == len(result.edge_list) + len(result.unembedding_edge_list) and not any(e["faded"] for e in load["edges"])
    # before cleaning: the bisected circuit, the removed nodes and every edge touching them faded
    assert {n["id"] for n in on["nodes"] if not n["faded"]} == kept
    assert {n["id"] for n in on["nodes"] if n["faded"]} == removed and len(kept | removed) == before["nodes"]
    assert sum(e["faded"] for e in on["edges"]) == len(before["edge_list"]) > 0
    assert sum(e["faded"] for e in on["edges"]) + len(result.edge_list) == before["edges"]
    assert f"before cleaning: {before['nodes']} nodes, {before['edges']} edges" in on["header"]
    assert off["nodes"] == load["nodes"] and off["edges"] == load["edges"]      # the toggle goes back
    selected = [n["id"] for n in load["nodes"] if n["selected"]]
    assert len(selected) == 1 and [n["id"] for n in on["nodes"] if n["selected"]] == selected   # and keeps the selection
    # the faithfulness table: one row per control with its status and verdict
    assert load["summary_headings"] == ["search trials", "faithfulness"]
    rows = {r[0]: r[1:] for r in load["summary_rows"] if r[0] in ("sufficiency", "ablation")}
    assert rows == {c["name"]: [c["status"], c["verdict"]] for c in result.faithfulness["controls"]}
    # a click selects the node and shows its loss when ablated
    assert [n["id"] for n in click["nodes"] if n["selected"]] == ["0.attn.v.0"]
    assert click["detail_rows"][0] == ["site", "0.attn.v"] and any(r[0] == "loss with it ablated" for r in click["detail_rows"])
