"""Config validation, presets, overrides and JSON round trip: one clear error per mistake."""

import pytest

from sparseformer.config import ModelConfig, RunConfig, apply_overrides, get_preset
from sparseformer.errors import ConfigError


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_outside_unit_interval(density):
    cfg = get_preset("tiny")
    with pytest.raises(ConfigError, match=r"outside \(0, 1\]"):
        apply_overrides(cfg, [f"sparsity.weight_density={density}"])


def test_d_model_not_divisible_by_d_head():
    with pytest.raises(ConfigError, match="not divisible by model.d_head"):
        ModelConfig(d_model=100, d_head=16).validate()


def test_unknown_afrac_site():
    with pytest.raises(ConfigError, match="unknown AbsTopK site 'mlp_neurons'; did you mean 'mlp_neuron'"):
        ModelConfig(afrac_sites=("mlp_neurons",)).validate()


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'tinny'; did you mean 'tiny'"):
        get_preset("tinny")


def test_unknown_override_key_suggests():
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        apply_overrides(get_preset("tiny"), ["train.lrr=3"])


def test_overrides_are_typed():
    cfg = apply_overrides(get_preset("tiny"), ["train.lr=3e-3", "train.steps=7", "sparsity.dense=true",
                                               "model.afrac_sites=attn_in,mlp_out"])
    assert cfg.train.lr == 3e-3 and cfg.train.steps == 7 and cfg.sparsity.dense is True
    assert cfg.model.afrac_sites == ("attn_in", "mlp_out")
    with pytest.raises(ConfigError, match="cannot parse"):
        apply_overrides(get_preset("tiny"), ["train.steps=many"])


def test_json_round_trip_and_unknown_keys():
    cfg = get_preset("paper-2x")
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg
    d = cfg.to_dict()
    d["model"]["n_mlp"] = 3
    with pytest.raises(ConfigError, match="unknown config key 'model.n_mlp'"):
        RunConfig.from_dict(d)


def test_paper_preset_fractions():
    cfg = get_preset("paper-2x")   # e = 2, pfrac = 0.25
    assert cfg.model.d_model == 512 and cfg.model.d_mlp == 2048 and cfg.model.n_head == 32
    assert cfg.sparsity.weight_density == pytest.approx(0.25 / 4)
    assert cfg.sparsity.final_embed_density == pytest.approx(0.25 / 2)


def test_small_preset_is_the_tiny_architecture_at_a_longer_context():
    tiny, small = get_preset("tiny"), get_preset("small")
    assert small.preset == "small"
    assert small.model.block_size == small.train.seq_len == 256      # tasks are scored within the trained context
    for field in ("n_layer", "d_model", "n_head", "d_head", "d_mlp", "bigram_table", "learned_pos_emb", "afrac"):
        assert getattr(small.model, field) == getattr(tiny.model, field)
    assert small.sparsity == tiny.sparsity
    assert small.train.steps * small.train.batch_size * small.train.seq_len > 10 * (
        tiny.train.steps * tiny.train.batch_size * tiny.train.seq_len)
    assert RunConfig.from_dict(small.to_dict()) == small
