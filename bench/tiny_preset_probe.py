"""The experiments behind the `tiny` preset: train a variant in chunks and track the task losses.

    python bench/tiny_preset_probe.py NAME STEPS CHUNK [section.field=value ...] [--max-len N]

Trains the tiny preset with the overrides into runs/tiny_probe/NAME, and after every CHUNK steps prints one JSON
line with the validation loss and the loss of single_double_quote, else_elif and bracket_counting (256 test
pairs; prompts cut to --max-len tokens, default the model's context). The committed logs and the commands that
made them are in bench/results/tiny_preset_probe/README.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sparseformer.checkpoint import load_run
from sparseformer.config import apply_overrides, get_preset
from sparseformer.tasks.evaluate import evaluate
from sparseformer.train import train

TASKS = ["single_double_quote", "else_elif", "bracket_counting"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("steps", type=int)
    ap.add_argument("chunk", type=int)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--max-len", type=int, default=255)
    ap.add_argument("--runs", type=Path, default=Path("runs/tiny_probe"))
    args = ap.parse_args()
    cfg = apply_overrides(get_preset("tiny"), [f"train.steps={args.steps}"] + args.overrides)
    out = args.runs / args.name
    t0, done = time.time(), 0
    while done < args.steps:
        first = done == 0
        done = min(args.steps, done + args.chunk)
        r = train(cfg, out, resume=not first, force=first, progress=False, max_steps=args.chunk)
        run = load_run(out)
        rows = evaluate(run.model, run.tokenizer, TASKS, n=256, max_len=args.max_len)
        print(json.dumps({"step": done, "t": round(time.time() - t0), "val": r.val_loss, "train": r.final_loss,
                          "tasks": {row["task"]: round(row["loss"], 3) for row in rows}}), flush=True)


if __name__ == "__main__":
    main()
