"""Circuit files in a run directory: circuits/TASK.json (+ TASK.html viewer), and the summary table.

The JSON is `CircuitResult.to_dict()`; the viewer is rendered from that same document, so a circuit file
alone is enough to rebuild its viewer (`sparseformer.report.viewer.write_viewer`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

from ..checkpoint import atomic_write_text
from ..errors import CheckpointError, PruneError
from .edges import geometric_mean

CIRCUITS_DIR = "circuits"


def circuit_paths(run_dir: str | Path, task: str) -> tuple[Path, Path]:
    d = Path(run_dir) / CIRCUITS_DIR
    return d / f"{task}.json", d / f"{task}.html"


def _finite(x):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def write_outputs(run_dir: str | Path, result) -> tuple[Path, Path]:
    """Write circuits/TASK.json and the self-contained viewer circuits/TASK.html (both atomically), from a
    CircuitResult or a circuit document (its dict)."""
    from ..report.viewer import render_viewer
    doc = _finite(result if isinstance(result, dict) else result.to_dict())
    json_path, html_path = circuit_paths(run_dir, doc["task"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(doc, indent=1) + "\n")
    atomic_write_text(html_path, render_viewer(doc))
    return json_path, html_path


def read_circuit(path: str | Path) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable circuit file ({type(e).__name__}); prune again") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("edges"), int):
        raise CheckpointError(f"{path} is not a readable circuit file (no circuit in it); prune again")
    return doc


SUMMARY_KEYS = ("task", "nodes", "edges", "bias_edges", "target_loss", "full_loss", "loss", "necessity_loss",
                "random_loss", "sufficient")


def summarize_circuits(run_dir: str | Path, tasks: Iterable[str] | None = None) -> dict:
    """One row per circuit file (SUMMARY_KEYS) and the geometric means of edges and nodes over them.

    Returns {"run", "rows", "geomean_edges", "geomean_nodes"}. Asking for a task with no circuit file
    raises PruneError naming the command that makes it.
    """
    run_dir = Path(run_dir)
    d = run_dir / CIRCUITS_DIR
    if tasks:
        paths = []
        for t in tasks:
            p = d / f"{t}.json"
            if not p.is_file():
                raise PruneError(f"no circuit for task {t!r} in {run_dir}; run `sparseformer prune {run_dir} "
                                 f"--task {t}` first")
            paths.append(p)
    else:
        paths = sorted(d.glob("*.json")) if d.is_dir() else []
    rows = []
    for p in paths:
        doc = read_circuit(p)
        rows.append({k: doc.get(k) for k in SUMMARY_KEYS})
    return {"run": str(run_dir), "rows": rows,
            "geomean_edges": geometric_mean(r["edges"] for r in rows),
            "geomean_nodes": geometric_mean(r["nodes"] for r in rows)}
