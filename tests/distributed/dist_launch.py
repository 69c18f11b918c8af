"""Launchers of N CPU ranks for the distributed tests, and the small training config they share.

Ranks are real processes on gloo, started the way torchrun starts them (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), each with one thread: `launch_cli` runs `sparseformer train` in every rank,
`launch_worker` runs tests/distributed/worker.py (which starts the process group itself and runs a list of
jobs, so one start-up serves several runs). `torchrun` runs the real launcher. The training model is the
tiny preset cut down with --set, with its 2048-token vocabulary and bigram table.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = 6
SMALL = ["model.n_layer=1", "model.d_model=64", "model.n_head=4", "model.d_mlp=256", "model.block_size=32",
         "train.batch_size=4", "train.seq_len=32", "train.log_every=1", "train.eval_every=2", "train.ckpt_every=3",
         "train.eval_batches=2", "data.val_frac=0.2"]
TIMEOUT_S = 240          # a launch that takes longer than this has hung (a bug): the test fails
SNIPPET = textwrap.dedent('''
    import os


    def scale(values, factor=2):
        """Multiply every value by factor."""
        out = []
        for v in values:
            out.append(v * factor)
        return out


    class Counter:
        def __init__(self, start=0):
            self.count = start

        def tick(self, n=1):
            self.count += n
            return self.count


    if __name__ == "__main__":
        print(scale([1, 2, 3]), Counter(10).tick(), os.sep, "done", 'ok')
    ''')


@dataclass
class Ranks:
    """What the ranks of one launch left: exit codes and output, in rank order."""

    returncodes: list[int]
    outputs: list[str]

    def ok(self) -> bool:
        return all(rc == 0 for rc in self.returncodes)

    def report(self) -> str:
        return "\n".join(f"--- rank {r} (exit {rc})\n{out[-4000:]}"
                         for r, (rc, out) in enumerate(zip(self.returncodes, self.outputs)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(dist_env, out: Path, *extra) -> list[str]:
    sets = [a for s in SMALL for a in ("--set", s)]
    return ["train", "--preset", "tiny", "--data", str(dist_env["corpus"]), "--out", str(out), "--steps", str(STEPS),
            "--device", "cpu", "--quiet", *sets, *map(str, extra)]


def small_config(dist_env):
    """The RunConfig that train_args gives (for in-process runs)."""
    from sparseformer.config import apply_overrides, get_preset
    cfg = get_preset("tiny")
    cfg.data.source = str(dist_env["corpus"])
    return apply_overrides(cfg, [*SMALL, f"train.steps={STEPS}", "train.device=cpu"])


def launch(dist_env, argvs: list[list[str]], faults: dict[int, str] | None = None, expect_ok: bool = True) -> Ranks:
    """Start one process per argv (rank r runs argvs[r]) with torchrun's variables; wait for all."""
    world, port = len(argvs), free_port()
    procs = []
    for rank, argv in enumerate(argvs):
        env = dict(dist_env["env"], RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if faults and rank in faults:
            env["SPARSEFORMER_FAULT"] = faults[rank]
        procs.append(subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    ranks = Ranks([p.returncode for p in procs], outputs)
    if expect_ok:
        assert ranks.ok(), ranks.report()
    return ranks


def launch_cli(dist_env, world: int, args: list[str], **kw) -> Ranks:
    """`sparseformer ARGS` in each of `world` ranks."""
    argv = ["-c", "from sparseformer.cli import main; main()", *args]
    return launch(dist_env, [argv] * world, **kw)


def launch_worker(dist_env, world: int, jobs: list[dict], name: str, **kw) -> Ranks:
    """tests/distributed/worker.py in each of `world` ranks, running `jobs` (see worker.py)."""
    spec = dist_env["root"] / f"{name}.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    return launch(dist_env, [[str(HERE / "worker.py"), str(spec)]] * world, **kw)


def torchrun(dist_env, world: int, args: list[str]) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node WORLD -m sparseformer ARGS`."""
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                          "-m", "sparseformer", *args], env=dist_env["env"], capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return res
