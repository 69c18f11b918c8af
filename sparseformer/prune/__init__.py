"""sparseformer.prune: circuit pruning with node masks and mean ablation (docs/pruning.md).

    from sparseformer.checkpoint import load_run
    from sparseformer.prune import prune_task, write_outputs
    run = load_run("runs/tiny")
    result = prune_task(run, "single_double_quote")          # target loss 0.15 per sequence, mean ablation
    json_path, html_path = write_outputs(run.path, result)   # circuits/TASK.json and the HTML viewer

Modules: sites (node ids; the sites themselves are declared in sparseformer.sites), means (mean cache),
ablate (masked forwards, frozen norms), search (mask training, bisection, calibration), clean (the cleaning
pass), circuit (find_circuits / find_circuit on any model), edges, validate, faithfulness + controls (how
far to trust a circuit), snippets, run (a run directory's task, means and snippets), outputs (files and the
summary table).
"""

from .circuit import CircuitResult, MultiSearch, TargetSearch, find_circuit, find_circuits
from .edges import circuit_edges, count_edges, geometric_mean
from .means import compute_means, run_means
from .outputs import read_circuit, summarize_circuits, write_outputs
from .faithfulness import CONTROLS, CircuitUnderTest, faithfulness
from .run import prune_targets, prune_task, run_faithfulness, task_pairs
from .search import SearchSettings
from .sites import mask_sites

__all__ = ["CONTROLS", "CircuitResult", "CircuitUnderTest", "MultiSearch", "SearchSettings", "TargetSearch",
           "circuit_edges", "compute_means", "count_edges", "faithfulness", "find_circuit", "find_circuits",
           "geometric_mean", "mask_sites", "prune_targets", "prune_task", "read_circuit", "run_faithfulness",
           "run_means", "summarize_circuits", "task_pairs", "write_outputs"]
