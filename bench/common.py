"""Shared helpers for the bench/ scripts: timing, the environment header, results as JSON + markdown.

Conventions every bench script follows (bench/gpu_check.sh relies on them):
- `python bench/<name>.py --out DIR --name STEM [--quick]` writes DIR/STEM.json and DIR/STEM.md and prints
  the table (`write_results(os.path.join(DIR, STEM), ...)`);
- a row that fails records its error and the script goes on (`guarded`);
- numbers are milliseconds (`*_ms`), medians with p20/p80.

Timing: on a GPU `triton.testing.do_bench` (warm-up call first, L2 cleared before each rep); a function
slower than `SLOW_MS` is timed instead with a few CUDA-event runs so one bench stays within its budget.
On the CPU a median over repetitions of `time.perf_counter`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence

import torch

SLOW_MS = 50.0


def parse_run_args(ap: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, torch.device]:
    """A bench's start: parse `argv`, log INFO lines to stderr, apply --threads, resolve --device."""
    from sparseformer.checkpoint import resolve_device
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, resolve_device(args.device)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device, *, reps: int = 5, rep_ms: int = 100) -> dict:
    """Median / p20 / p80 milliseconds of fn() on `device` (its first call is untimed warm-up)."""
    dev = torch.device(device)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    first_ms = (time.perf_counter() - t0) * 1e3
    if dev.type == "cuda":
        if first_ms < SLOW_MS * 4:
            fn()
            sync(dev)
        once = _event_ms(fn)
        if once < SLOW_MS:
            import triton.testing
            med, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], rep=rep_ms)
            return {"median_ms": med, "p20_ms": p20, "p80_ms": p80}
        samples = [once] + [_event_ms(fn) for _ in range(2)]
    else:
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p20_ms": samples[int(0.2 * (len(samples) - 1))],
            "p80_ms": samples[int(round(0.8 * (len(samples) - 1)))]}


def _event_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def guarded(row: dict, fn: Callable[[], dict]) -> dict:
    """row updated with fn()'s result, or with {"error": ...} when fn raises (the bench goes on)."""
    try:
        row.update(fn())
    except Exception as e:  # a failing provider must not stop the run
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        row["traceback"] = traceback.format_exc(limit=3)[-1500:]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


def env_header(device) -> dict:
    """Where and when a result was measured: device, versions, commit, date."""
    dev = torch.device(device)
    head = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or "cpu"),
        "device_type": dev.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": _git_commit(),
        "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        import triton
        head["triton"] = triton.__version__
    except Exception:
        head["triton"] = None
    try:
        from sparseformer.kernels import available
        head["backends"] = available(dev)
    except Exception as e:
        head["backends"] = f"unavailable: {e}"
    return head


def device_line(head: dict) -> str:
    """One markdown bullet naming the device, versions, CPU load, commit and date of `env_header`."""
    return (f"- device: {head['device']} ({head['device_type']}), torch {head['torch']}, triton {head['triton']}, "
            f"CUDA {head['cuda']}, {head['cpu_count']} CPUs / {head['torch_threads']} threads (load average "
            f"{head['load_avg']} at start), commit {head['commit']}, {head['date']}")


def _git_commit() -> str | None:
    """SPARSEFORMER_COMMIT when set (bench/gpu_check.sh passes the host's commit: a device copy's git metadata
    can be stale), else git's short HEAD."""
    if os.environ.get("SPARSEFORMER_COMMIT"):
        return os.environ["SPARSEFORMER_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except Exception:
        return None


def fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def md_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A markdown table of `rows` restricted to `columns` (missing cells stay empty)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def md_header(title: str, head: dict, notes: Sequence[str] = ()) -> str:
    keys = ["date", "device", "torch", "triton", "cuda", "commit", "cpu_count", "torch_threads"]
    out = [f"# {title}", "", " · ".join(f"{k}: {head.get(k)}" for k in keys), ""]
    if isinstance(head.get("backends"), dict):
        out.append("backends: " + ", ".join(f"{k}={'ok' if v is None else 'no (' + v[:80] + ')'}"
                                            for k, v in head["backends"].items()))
        out.append("")
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + ("\n" if notes else "")


def write_results(prefix: str, title: str, head: dict, rows: list[dict], columns: Sequence[str],
                  notes: Sequence[str] = (), extra: dict | None = None) -> str:
    """Write PREFIX.json (header, notes, rows) and PREFIX.md atomically; return the markdown."""
    md = md_header(title, head, notes) + "\n" + md_table(rows, columns) + "\n"
    doc = {"title": title, "header": head, "notes": list(notes), "rows": rows, **(extra or {})}
    folder = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(folder, exist_ok=True)
    for suffix, text in ((".json", json.dumps(doc, indent=1, default=str)), (".md", md)):
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, prefix + suffix)
    return md
