"""bench/gpu_goals.py: verdicts from bench documents, and the committed H200 reports read as they are."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_goals  # noqa: E402

GPU_RESULTS = ROOT / "bench" / "results" / "gpu"


def spmm_doc(best_ms, auto_ms, masked_ms=1.0, dens=1 / 1024):
    base = dict(T=16384, K=2048, N=8192, density=dens, dtype="bfloat16")
    rows = [dict(base, op=op, provider=p, ms=ms) for op in ("fwd", "dX") for p, ms in
            (("ideal", 0.1), ("dense", 1.0), ("masked", masked_ms), ("ours:ell", best_ms), ("ours:gather", 9.0),
             ("ours:auto(ell)", auto_ms))]
    rows.append(dict(base, op="compact", provider="ours:compact", ms=0.01))
    return dict(ceilings=dict(bandwidth=4e12, flops=8e14), rows=rows)


def by_goal(goals, start):
    return next(g for g in goals if g["goal"].startswith(start))


def test_product_goals_met_and_not_met(tmp_path):
    table, goals = gpu_goals.products(spmm_doc(best_ms=0.15, auto_ms=0.15))
    assert by_goal(goals, "forward and dX at d_model 2048")["verdict"] == "met"        # 0.1 / 0.15 = 67%
    assert by_goal(goals, "the dispatcher's pick")["verdict"] == "met"
    assert {c["best_method"] for c in table} == {"ell"}
    _, goals = gpu_goals.products(spmm_doc(best_ms=0.25, auto_ms=1.2))
    assert by_goal(goals, "forward and dX at d_model 2048")["verdict"] == "NOT met"    # 40%
    assert by_goal(goals, "the dispatcher's pick")["verdict"] == "NOT met"             # 0.83x of masked
    fmt = gpu_goals.format_goal(spmm_doc(best_ms=0.15, auto_ms=0.15))
    # one bf16 read of 2048 x 8192 at 4 TB/s is 8.4 us; the build took 10 us
    assert fmt[0]["verdict"] == "NOT met" and "1.2x" in fmt[0]["measured"]


def test_missing_benches_are_not_measured(tmp_path):
    doc, md = gpu_goals.report([str(tmp_path)])
    assert {g["verdict"] for g in doc["goals"]} == {"not measured"}
    assert "not run" in md


def test_a_gpu_check_report_and_a_folder_combine(tmp_path):
    (tmp_path / "bench_train_step.json").write_text(json.dumps(dict(rows=[
        dict(engine="paper", density=1 / 1024, speedup=1.0, max_loss_diff_vs_paper=0.0, tokens_per_s=1e5),
        dict(engine="ours", density=1 / 1024, speedup=1.6, max_loss_diff_vs_paper=0.01, tokens_per_s=1.6e5)])))
    report = tmp_path / "gpu_report.json"
    report.write_text(json.dumps(dict(benches=dict(bench_spmm=spmm_doc(0.15, 0.15)))))
    doc, _ = gpu_goals.report([str(report), str(tmp_path)])
    assert by_goal(doc["goals"], "training step")["verdict"] == "met"
    assert by_goal(doc["goals"], "forward and dX at d_model 2048")["verdict"] == "met"


@pytest.mark.skipif(not (GPU_RESULTS / "H200_2026-11-26-run2_gpu_check.json").exists(), reason="no committed report")
def test_reads_the_committed_h200_reports():
    """The committed run2 report: ELL forward K=2048 N=8192 at 1/1024 took 1.7 ms against a 0.318 ms ideal."""
    doc, _ = gpu_goals.report([str(GPU_RESULTS / "H200_2026-11-26-run2_gpu_check.json")])
    case = next(c for c in doc["products"] if (c["op"], c["K"], c["N"]) == ("fwd", 2048, 8192)
                and c["density"] == 1 / 1024)
    assert case["best_method"] == "ell" and case["best_roofline"] == pytest.approx(0.318 / 1.7, rel=0.01)
    assert by_goal(doc["goals"], "training step")["verdict"] == "NOT met"


def test_the_emit_goal_reads_the_batched_format_rows():
    def row(provider, x, exact=True):
        return dict(preset="d2048", provider=provider, net_ms=0.4 * x, x_floor=x, exact=exact)
    topk = dict(rows=[row("format: emit_formats[torch] all weights", 0.1),            # the CPU path: not a goal
                      row("format: emit_formats[triton] all weights", 0.8),
                      row("format: emit_formats[triton]+ell all weights", 1.5),
                      row("format: compact() per weight", 0.5)])
    plain, ell = gpu_goals.emit_goal(topk)
    assert plain["verdict"] == "met" and "0.8x" in plain["measured"] and "[triton] all" in plain["measured"]
    assert ell["verdict"] == "NOT met" and "1.5x" in ell["measured"]
    topk["rows"][1]["exact"] = False                # fast but wrong is not met
    assert gpu_goals.emit_goal(topk)[0]["verdict"] == "NOT met"
    assert {g["verdict"] for g in gpu_goals.emit_goal(None)} == {"not measured"}
