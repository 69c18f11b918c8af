"""bench/profile_step.py puts a real profiled training step (tiny model, CPU) into the right categories."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import profile_step  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    out = {}
    for engine in ("ours", "paper"):
        args = ["--device", "cpu", "--n-layer", "1", "--batch-size", "2", "--seq-len", "32", "--warmup", "1",
                "--timed", "1", "--profiled", "1", "--engines", engine, "--density", str(1 / 512)]
        out[engine] = profile_step.run(args)[0]
    return out


def test_every_part_of_the_step_is_found(rows):
    for engine, row in rows.items():
        ms = row["per_step_ms"]
        for cat in ("forward and dX products", "dW products", "AbsTopK", "attention", "norms and elementwise",
                    "projection + Adam", "the rest"):
            assert ms[cat] > 0, (engine, cat)
        assert set(ms) == set(profile_step.CATEGORIES)
        assert 0 < row["outside_matmul_share"] < 1
    # at 1/512 our CPU linears run a sparse product that reads a format; the paper's dense linears have none
    assert rows["ours"]["per_step_ms"]["format build"] > 0
    assert rows["paper"]["per_step_ms"]["format build"] == 0


def test_weight_gradients_are_the_products_over_tokens(rows):
    """Every dW item is a matmul summing over the 64 tokens or a bias sum, never a forward product."""
    for row in rows.values():
        names = {t["name"] for t in row["top"] if t["category"] == "dW products"}
        assert names and names <= {"aten::mm", "aten::sum", "aten::addmm"}
