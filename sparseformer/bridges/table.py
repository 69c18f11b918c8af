"""The per-site bridge metrics of a run as a table (the last validation row of metrics.jsonl).

Columns, per site i: NMSE of the encoder (dense -> sparse) and of the decoder (sparse -> dense), the two KL
terms, and the CE of the two single-transition paths: dense model up to site i then the sparse model from the
encoded residual (d->s), and the sparse model up to i then the dense model from the decoded residual (s->d).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import read_metrics

COLUMNS = (("nmse_enc", "NMSE enc d->s"), ("nmse_dec", "NMSE dec s->d"), ("kl_d2s", "KL d->s"),
           ("kl_s2d", "KL s->d"), ("ce_d2s", "CE d->s path"), ("ce_s2d", "CE s->d path"))


def final_metrics(run_dir: str | Path) -> dict | None:
    """{"step", "ce_sparse", "ce_dense", "sites"} from the last row with bridge metrics; None when none yet."""
    for row in reversed(read_metrics(run_dir)):
        if "sites" in row:
            return {"step": row["step"], "ce_sparse": row.get("val_loss"), "ce_dense": row.get("ce_dense"),
                    "sites": row["sites"]}
    return None


def metrics_table(metrics: dict) -> str:
    """A markdown table of final_metrics (one row per site, then the mean over sites)."""
    head = ("site",) + tuple(label for _, label in COLUMNS)
    lines = [f"validation at step {metrics['step']}: CE of the sparse model {_f(metrics['ce_sparse'])}, "
             f"of the dense model {_f(metrics['ce_dense'])} (nats per token)", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    sites = metrics["sites"]
    for site, m in sites.items():
        lines.append("| " + " | ".join([site] + [_f(m.get(key)) for key, _ in COLUMNS]) + " |")
    means = [sum(m[key] for m in sites.values()) / len(sites) for key, _ in COLUMNS]
    lines.append("| mean | " + " | ".join(_f(v) for v in means) + " |")
    return "\n".join(lines) + "\n"


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
