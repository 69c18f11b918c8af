"""Import of official checkpoints: export round-trips bit for bit, and our forward (with the same hook names)
matches a forward written directly from the format description."""

import json

import pytest
import torch
from click.testing import CliRunner

from official_ref import assert_same_tensor, base_config, official_forward, random_state, write_official
from sparseformer.checkpoint import load_run, save_checkpoint, save_config
from sparseformer.cli import main
from sparseformer.config import SWEEP_SITES, ModelConfig, RunConfig, TrainConfig
from sparseformer.hooks import record
from sparseformer.model import GPT
from sparseformer.official import export_official, import_official, load_official
from sparseformer.model import param_kind

ALL_SITES = "attn_in,attn_out,mlp_in,mlp_out,mlp_neuron,attn_v,attn_k,attn_q"
IGNORED_EXTRAS = dict(pfrac=0.125, expansion_factor=1, expansion_factor_mlp=1, bigram_table_rank=None,
                      afrac_approx=False, ignore_dw_grad=False, debug_exact_topk=True, sparse_matmul_impl="cuda",
                      rtopk=False, n_embd=None, use_tied_aux_matrix=False, debug_nans=False,
                      enable_sparse_kernels=False, dropout_cat_pos_emb=False, sinusoidal_cat_pos_emb=False)


def _n_mlp(c: dict) -> dict:
    c = dict(c)
    c["n_mlp"] = c.pop("d_mlp")
    return c


def _sparse_keys(sd: dict) -> set:
    return {k for k, v in sd.items() if k != "bigram_table" and (v.ndim == 2 or k.endswith(".bias"))}


CASES = {
    "sink-bigram-allsites-dhead8": dict(
        cfg=base_config(sink=True, enable_bigram_table=True, learnable_bigram_table=True, afrac=0.25,
                        afrac_loctypes=ALL_SITES, d_head=8),
        wpe="zero", coo="none", dtype=torch.float32),
    "coo-nmlp-dhead16-wpe": dict(
        cfg=_n_mlp(base_config(n_head=2, d_head=16, **IGNORED_EXTRAS)),
        wpe="sparse", coo="sparse", dtype=torch.float32),
    "sweep-relu-frozen-bigram-bf16": dict(
        cfg=base_config(d_head=None, afrac=0.125, afrac_loctypes=",".join(SWEEP_SITES), activation_type="relu",
                        sink=True, enable_bigram_table=True, learnable_bigram_table=False),
        wpe="zero", coo="wpe+lm_head", dtype=torch.bfloat16),
    "wide-heads-nobias-qkv-sites": dict(
        cfg=base_config(n_head=4, d_head=16, bias=False, afrac=0.25, afrac_loctypes="attn_q,attn_k,attn_v,mlp_neuron",
                        enable_bigram_table=True, learnable_bigram_table=True),
        wpe="sparse", coo="none", dtype=torch.float32, reverse=True),
}


@pytest.fixture(scope="module", params=list(CASES))
def imported(request, tmp_path_factory):
    """(config dict, original state dict as written, official dir, imported run dir) for one case."""
    case = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    sd = random_state(case["cfg"], seed=len(request.param), wpe=case["wpe"], dtype=case["dtype"])
    if case.get("reverse"):   # a file in another key order is written back in that order
        sd = dict(reversed(list(sd.items())))
    coo = {"none": set(), "sparse": _sparse_keys(sd),
           "wpe+lm_head": {"transformer.wpe.weight", "lm_head.weight"}}[case["coo"]]
    src = write_official(root / "official", case["cfg"], sd, coo=coo)
    written = torch.load(src / "final_model.pt", weights_only=True)
    import_official(src, root / "run")
    return case["cfg"], written, src, root / "run"


def test_export_round_trips_every_tensor_bit_for_bit(imported, tmp_path):
    cfg, written, _, run_dir = imported
    export_official(run_dir, tmp_path)
    back = torch.load(tmp_path / "final_model.pt", weights_only=True)
    assert list(back) == list(written)
    for key in written:
        assert_same_tensor(key, back[key], written[key])
    assert json.loads((tmp_path / "beeg_config.json").read_text()) == cfg


def test_forward_and_hooks_match_the_official_forward(imported):
    cfg, written, _, run_dir = imported
    model = load_run(run_dir).model.double()
    idx = torch.randint(0, cfg["vocab_size"], (2, cfg["block_size"]), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_acts = official_forward(written, cfg, idx)
    with record(model, None) as rec, torch.no_grad():
        logits = model(idx)
    torch.testing.assert_close(logits.double(), ref_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.argmax(-1), ref_logits.argmax(-1))
    assert set(rec) == set(ref_acts)                       # the released hook names, nothing more or less
    for name, act in ref_acts.items():
        torch.testing.assert_close(rec[name], act, atol=1e-9, rtol=1e-9, msg=name)


def test_load_official_in_memory_equals_the_imported_run(imported):
    cfg, _, src, run_dir = imported
    idx = torch.randint(0, cfg["vocab_size"], (1, 9))
    mem = load_official(src)
    assert mem.config.preset == "official" and mem.tokenizer is None
    with torch.no_grad():
        assert torch.equal(mem.model(idx), load_run(run_dir).model(idx))


def test_info_shows_current_nonzero_count_as_k(imported):
    from sparseformer.cli.train import run_info
    _, _, _, run_dir = imported
    info = run_info(run_dir)
    assert info["preset"] == "official" and info["all_at_k"]
    sparse = [r for r in info["tensors"] if r["k"] is not None]
    assert {r["name"] for r in sparse} == {r["name"] for r in info["tensors"] if param_kind(r["name"])}
    assert sparse and all(r["k"] == r["nonzero"] for r in sparse)


def test_export_modes_dense_and_coo(imported, tmp_path):
    _, written, _, run_dir = imported
    for mode in ("dense", "coo"):
        out = tmp_path / mode
        export_official(run_dir, out, mode=mode)
        back = torch.load(out / "final_model.pt", weights_only=True)
        for key, t in written.items():
            dense = t.to_dense() if t.is_sparse else t
            b = back[key]
            if mode == "dense" or param_kind(key.replace(".attn_imp.", ".")) is None:
                assert b.layout == torch.strided, key
            else:   # COO exactly where it is smaller: int64 indices + values per nonzero vs the dense bytes
                es = dense.element_size()
                assert b.is_sparse == (int(dense.count_nonzero()) * (8 * dense.ndim + es) < dense.numel() * es), key
            assert torch.equal(b.to_dense() if b.is_sparse else b, dense), key


@pytest.mark.parametrize("learned_pos_emb", [False, True])
def test_a_model_trained_here_exports_to_the_official_forward(tmp_path, learned_pos_emb):
    mcfg = ModelConfig(vocab_size=40, n_layer=2, d_model=32, n_head=4, d_head=8, d_mlp=64, block_size=12, sink=True,
                       bigram_table=True, afrac=0.25, afrac_sites=SWEEP_SITES, learned_pos_emb=learned_pos_emb)
    torch.manual_seed(0)
    model = GPT(mcfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if param_kind(name):
                p.mul_(torch.rand_like(p) < 0.3)
            if name.endswith("sink_logit"):
                p.normal_()
    run = tmp_path / "run"
    run.mkdir()
    save_config(run, RunConfig(model=mcfg, train=TrainConfig(seq_len=12)).validate())
    save_checkpoint(run, model, None, 7, {}, finished=True)
    export_official(run, tmp_path / "export")
    sd = torch.load(tmp_path / "export" / "final_model.pt", weights_only=True)
    cfg = json.loads((tmp_path / "export" / "beeg_config.json").read_text())
    assert cfg["rms_norm"] is True and cfg["tied_unembed"] is False and cfg["d_mlp"] == 64
    assert sd["transformer.wpe.weight"].shape == (12, 32)
    assert bool(sd["transformer.wpe.weight"].any()) == learned_pos_emb
    idx = torch.randint(0, 40, (2, 12))
    ref, _ = official_forward(sd, cfg, idx)
    with torch.no_grad():
        torch.testing.assert_close(model.double()(idx).double(), ref, atol=1e-5, rtol=1e-5)
    again = import_official(tmp_path / "export", tmp_path / "again")
    assert again.config.model == mcfg
    for name, p in again.model.state_dict().items():
        assert torch.equal(p, model.state_dict()[name].float()), name


def test_cli_import_info_export(tmp_path):
    cfg = base_config(sink=True, afrac=0.25)
    src = write_official(tmp_path / "official", cfg, random_state(cfg, seed=3))
    runner = CliRunner()
    res = runner.invoke(main, ["import-official", str(src), "--out", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["tokenizer"] is False and summary["n_layer"] == 2 and summary["d_head"] == 8
    assert "tokenizer" in res.stderr                      # says task commands need one
    res = runner.invoke(main, ["info", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["preset"] == "official"
    res = runner.invoke(main, ["import-official", str(src), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "--force" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["import-official", str(src), "--out", str(tmp_path / "run"), "--force"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["export-official", str(tmp_path / "run"), "--out", str(tmp_path / "exp"), "--coo",
                               "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["files"] == ["beeg_config.json", "final_model.pt"]
    res = runner.invoke(main, ["sample", str(tmp_path / "run")])
    assert res.exit_code == 1 and "tokenizer" in res.output


def test_uncoalesced_coo_imports_with_the_same_values(tmp_path):
    cfg = base_config()
    sd = random_state(cfg, seed=5)
    w = sd["lm_head.weight"]
    nz = w.nonzero().T
    half = w[nz[0], nz[1]] / 2   # every value stored as two halves at the same index
    sd["lm_head.weight"] = torch.sparse_coo_tensor(torch.cat([nz, nz], 1), torch.cat([half, half]), w.shape,
                                                      check_invariants=True)
    assert not sd["lm_head.weight"].is_coalesced()
    src = write_official(tmp_path / "src", cfg, sd)
    run = load_official(src)
    assert torch.equal(run.model.lm_head.weight, sd["lm_head.weight"].to_dense())
    import_official(src, tmp_path / "run")
    export_official(tmp_path / "run", tmp_path / "exp")
    back = torch.load(tmp_path / "exp" / "final_model.pt", weights_only=True)["lm_head.weight"]
    assert back.is_sparse and back.is_coalesced() and torch.equal(back.to_dense(), sd["lm_head.weight"].to_dense())
