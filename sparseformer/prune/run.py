"""Pruning the model of a run directory: the task's pairs, the mean cache and the viewer's snippets.

    from sparseformer.checkpoint import load_run
    run = load_run("runs/tiny")
    result = prune_task(run, "single_double_quote")                 # one target, validated (CircuitResult)
    search = prune_targets(run, "single_double_quote", [0.1, 0.15])  # several targets, one mask training
    report = run_faithfulness(run, result.to_dict())                 # the faithfulness controls
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

from ..errors import PruneError, SparseformerError
from ..tasks import make_batch, max_prompt_len, resolve_task
from ..tasks.dataset import TaskBatch
from .ablate import frozen_params
from .circuit import CircuitResult, MultiSearch, find_circuit, find_circuits
from .faithfulness import CONTROLS, CircuitUnderTest, faithfulness
from .means import compute_means, pretraining_batches, run_means
from .search import SearchSettings
from .sites import mask_sites
from .snippets import top_snippets

log = logging.getLogger(__name__)

ABLATIONS = ("mean", "zero")
# The nonsense control's targets: arbitrary words, as in the replication that proposed the control.
NONSENSE_WORDS = (" is", " when")


def task_pairs(run, task_name: str, *, n_train: int, n_test: int, seed: int = 0) -> tuple[TaskBatch, TaskBatch]:
    """The task's train and test pairs, tokenised for the run and cut to the model's context."""
    task = resolve_task(task_name)
    max_len = max_prompt_len(run.config.model.block_size)
    return tuple(make_batch(task, run.tokenizer, split, n, seed, max_len=max_len)
                 for split, n in (("train", n_train), ("test", n_test)))


def _check(ablation: str, targets: Sequence[float]) -> None:
    if ablation not in ABLATIONS:
        raise PruneError(f"--ablation {ablation!r} is unknown; choose one of {', '.join(ABLATIONS)}")
    for t in targets:
        if not t > 0:
            raise PruneError(f"--target-loss {t} must be positive (a per-sequence loss, e.g. 0.15)")


def prune_task(run, task_name: str, *, target_loss: float = 0.15, ablation: str = "mean", trials: int = 1,
               steps: int | None = None, seed: int = 0, freeze_norms: bool = False, calibrate: bool = False,
               progress: bool = True, n_train: int = 512, n_test: int = 64, mean_tokens: int = 32768,
               snippet_tokens: int = 16384, settings: SearchSettings | None = None, clean: bool = True,
               faithfulness: bool = False) -> CircuitResult:
    """Prune the model of a loaded run (`checkpoint.load_run`) for one task; see find_circuit. With
    `faithfulness`, run the controls on the circuit too (result.faithfulness; see run_faithfulness)."""
    _check(ablation, [target_loss])
    t0 = time.perf_counter()
    train, test = task_pairs(run, task_name, n_train=n_train, n_test=n_test, seed=seed)
    settings = settings or SearchSettings()
    if steps is not None:
        settings = dataclasses.replace(settings, steps=steps)
    means = run_means(run, n_tokens=mean_tokens) if ablation == "mean" else None
    log.info("task pairs and means took %.1f s", time.perf_counter() - t0)
    result = find_circuit(run.model, train, test, means, task=task_name, target_loss=target_loss, trials=trials,
                          settings=settings, seed=seed, freeze_norms=freeze_norms, calibrate_logits=calibrate,
                          progress=progress, clean=clean)
    tok = run.tokenizer
    result.targets = {t: tok.decode([int(t)]) for t in result.targets}
    result.run, result.step = str(run.path), run.step
    result.settings["mean_tokens"] = mean_tokens if ablation == "mean" else None
    t0 = time.perf_counter()
    try:
        batches = pretraining_batches(run, snippet_tokens, run.config.train.seq_len, seed=4321)
        result.snippets = top_snippets(run.model, batches, result.kept, decode=lambda t: tok.decode([t]))
    except (SparseformerError, OSError) as e:   # snippets are a convenience; never lose a circuit over them
        log.warning("no pretraining snippets for the viewer: %s", e)
    log.info("snippets took %.1f s", time.perf_counter() - t0)
    if faithfulness:
        result.faithfulness = run_faithfulness(run, result.to_dict(), progress=progress)
    return result


def circuit_under_test(doc: dict) -> CircuitUnderTest:
    """How a circuit document (circuits/TASK.json) was found, for the faithfulness controls."""
    st = doc["settings"]
    cal = doc.get("calibration") or {}
    return CircuitUnderTest(kept={s: list(c) for s, c in doc["kept"].items()}, target_loss=doc["target_loss"],
                            ablation=st["ablation"], freeze_norms=st["freeze_norms"], calibrate=st["calibrate"],
                            scale=cal.get("scale", 1.0), shift=cal.get("shift", 0.0),
                            settings=SearchSettings(**st["search"]), trials=st["trials"], seed=st["seed"])


def nonsense_tokens(tokenizer, words: Sequence[str] = NONSENSE_WORDS) -> tuple[int, int]:
    """The arbitrary targets of the nonsense control: the first tokens of two words."""
    a, b = (tokenizer.encode(w)[0] for w in words)
    return a, b


def run_faithfulness(run, doc: dict, *, controls: Sequence[str] = CONTROLS, n_random: int = 5,
                     progress: bool = False) -> dict:
    """The faithfulness controls (prune/faithfulness.py) for a circuit document of this run, on the pairs
    it was found with."""
    if doc.get("step") is not None and doc["step"] != run.step:
        raise PruneError(f"the {doc['task']} circuit was found at step {doc['step']} but the run is at step "
                         f"{run.step}; prune again")
    st = doc["settings"]
    train, test = task_pairs(run, doc["task"], n_train=st["train_pairs"], n_test=st["eval_pairs"], seed=st["seed"])
    mean_tokens = st.get("mean_tokens") or 32768
    means = run_means(run, n_tokens=mean_tokens)
    sites = mask_sites(run.config.model)

    def means_fn(model):
        batches = pretraining_batches(run, mean_tokens, run.config.train.seq_len)
        return compute_means(model, batches, sites)

    report = faithfulness(run.model, train, test, means, circuit_under_test(doc),
                          nonsense_tokens=nonsense_tokens(run.tokenizer), means_fn=means_fn, controls=controls,
                          n_random=n_random, progress=progress)
    report["nonsense_words"] = list(NONSENSE_WORDS)
    return report


def prune_targets(run, task_name: str, targets: Sequence[float], *, settings: SearchSettings | None = None,
                  trials: int = 1, n_train: int = 512, n_test: int = 64, mean_tokens: int = 32768,
                  ablation: str = "mean", calibrate: bool = False, seed: int = 0, clean: bool = True,
                  progress: bool = False) -> MultiSearch:
    """Prune a run's model for one task at several target losses (one mask training per trial; no
    validation or snippets); see find_circuits. Raises TaskError when the task cannot be posed."""
    _check(ablation, targets)
    train, test = task_pairs(run, task_name, n_train=n_train, n_test=n_test, seed=seed)
    means = run_means(run, n_tokens=mean_tokens) if ablation == "mean" else None
    with frozen_params(run.model):
        return find_circuits(run.model, train, test, means, targets=targets, trials=trials, settings=settings,
                             seed=seed, calibrate_logits=calibrate, progress=progress, clean=clean)
