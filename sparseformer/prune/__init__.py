"""sparseformer.prune: circuit pruning with node masks (SPEC §5).

    from sparseformer.checkpoint import load_run
    from sparseformer.prune import prune_task, write_outputs
    run = load_run("runs/tiny")
    result = prune_task(run, "single_double_quote")          # target loss 0.15 per sequence, mean ablation
    json_path, html_path = write_outputs(run.path, result)   # circuits/TASK.json and the HTML viewer

Modules: sites (mask sites, node ids), means (mean cache), ablate (masked forwards, frozen norms),
search (mask training, bisection, calibration), edges, validate, snippets, circuit (end to end),
outputs (files and the summary table), taskdata (the bridge to sparseformer.tasks).
"""

from .circuit import CircuitResult, find_circuit, prune_task
from .edges import circuit_edges, geometric_mean
from .means import compute_means, run_means
from .outputs import read_circuit, summarize_circuits, write_outputs
from .search import SearchSettings
from .sites import mask_sites

__all__ = ["CircuitResult", "SearchSettings", "circuit_edges", "compute_means", "find_circuit", "geometric_mean",
           "mask_sites", "prune_task", "read_circuit", "run_means", "summarize_circuits", "write_outputs"]
