"""Bad official checkpoints: each problem is one clear line naming what is wrong."""

import pytest
import torch
from click.testing import CliRunner

from official_ref import base_config, random_state, write_official
from sparseformer.cli import main
from sparseformer.errors import CheckpointError, SparseformerError
from sparseformer.official import import_official, load_official


def _error(src, tmp_path) -> str:
    with pytest.raises(SparseformerError) as exc:
        import_official(src, tmp_path / "run")
    msg = str(exc.value)
    assert "\n" not in msg
    assert not (tmp_path / "run" / "config.json").exists()   # nothing half-imported
    return msg


@pytest.fixture
def good(tmp_path):
    cfg = base_config(sink=True)
    return cfg, random_state(cfg, seed=0)


@pytest.mark.parametrize("missing", ["beeg_config.json", "final_model.pt"])
def test_missing_file(tmp_path, good, missing):
    src = write_official(tmp_path / "src", *good)
    (src / missing).unlink()
    assert missing in _error(src, tmp_path)


def test_missing_directory(tmp_path):
    assert "not a directory" in _error(tmp_path / "nowhere", tmp_path)


def test_shape_disagreement_names_tensor_and_both_shapes(tmp_path):
    cfg = base_config(d_mlp=64)
    sd = random_state(base_config(d_mlp=48), seed=0)
    msg = _error(write_official(tmp_path / "src", cfg, sd), tmp_path)
    assert "transformer.h.0.mlp.c_fc.weight" in msg and "[48, 32]" in msg and "[64, 32]" in msg


def test_unknown_config_key(tmp_path, good):
    cfg, sd = good
    msg = _error(write_official(tmp_path / "src", {**cfg, "rotary_base": 10000}, sd), tmp_path)
    assert "'rotary_base'" in msg and "10000" in msg


@pytest.mark.parametrize("key,value,shown", [
    ("rms_norm", False, "rms_norm=false"),
    ("tied_unembed", True, "tied_unembed=true"),
    ("residual_activation_type", "relu", 'residual_activation_type="relu"'),
    ("d_pos_emb", 8, "d_pos_emb=8"),
    ("bigram_table_rank", 16, "bigram_table_rank=16"),
    ("activation_type", "silu", 'activation_type="silu"'),
    ("sink", "yes", 'sink="yes"'),
])
def test_unsupported_architecture_setting(tmp_path, good, key, value, shown):
    cfg, sd = good
    assert shown in _error(write_official(tmp_path / "src", {**cfg, key: value}, sd), tmp_path)


def test_missing_rms_norm_means_layernorm(tmp_path, good):
    cfg, sd = good
    cfg = {k: v for k, v in cfg.items() if k != "rms_norm"}
    assert "LayerNorm" in _error(write_official(tmp_path / "src", cfg, sd), tmp_path)


def test_tensor_the_config_does_not_describe(tmp_path, good):
    cfg, sd = good
    msg = _error(write_official(tmp_path / "src", {**cfg, "sink": False}, sd), tmp_path)
    assert "transformer.h.0.attn.attn_imp.sink_logit" in msg


def test_missing_tensor(tmp_path, good):
    cfg, sd = good
    del sd["transformer.ln_f.weight"]
    msg = _error(write_official(tmp_path / "src", cfg, sd), tmp_path)
    assert "transformer.ln_f.weight is missing" in msg and "[32]" in msg


def test_n_mlp_and_d_mlp_disagree(tmp_path, good):
    cfg, sd = good
    msg = _error(write_official(tmp_path / "src", {**cfg, "n_mlp": 48}, sd), tmp_path)
    assert "n_mlp=48" in msg and "d_mlp=64" in msg


def test_afrac_that_keeps_nothing(tmp_path, good):
    cfg, sd = good
    assert "afrac" in _error(write_official(tmp_path / "src", {**cfg, "afrac": 0.01}, sd), tmp_path)


def test_corrupt_files(tmp_path, good):
    src = write_official(tmp_path / "src", *good)
    (src / "final_model.pt").write_bytes(b"not a checkpoint")
    assert "final_model.pt" in _error(src, tmp_path)
    torch.save([1, 2], src / "final_model.pt")
    assert "state dict" in _error(src, tmp_path)
    (src / "beeg_config.json").write_text("{oops")
    assert "beeg_config.json" in _error(src, tmp_path)
    (src / "beeg_config.json").write_text("[1, 2]")
    assert "JSON object" in _error(src, tmp_path)


def test_load_official_raises_the_same_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_official(tmp_path / "nowhere")


def test_cli_reports_one_error_line(tmp_path, good):
    cfg, sd = good
    src = write_official(tmp_path / "src", {**cfg, "rms_norm": False}, sd)
    res = CliRunner().invoke(main, ["import-official", str(src), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "rms_norm=false" in lines[0]
