"""The top-k projection across ranks (kernels/topk/sharded.py) against the single-process reference on the
gathered tensor, with N ranks simulated in one process.

Two simulations: `lockstep` drives every rank's `Projection` phase by phase (the reduce is the sum of the
ranks' histogram rows, the gather their stack), which runs any backend, the Triton interpreter included;
`threaded` runs the public `project_topk_sharded_` on one thread per rank with `Comm` callables that meet
at a barrier. Shards are dim-0 row blocks as FSDP2 makes them (torch.chunk sizes, the last one short and
padded, trailing ranks empty) or drawn at random.
"""

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseformer.kernels import TopkState, available
from sparseformer.kernels.topk import Comm, Projection, kernel_set, project_topk_sharded_, topk_masks_sharded
from sparseformer.kernels.topk.reference import topk_mask_ref
from sparseformer.kernels.topk.sharded import shard_targets

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
EXAMPLES = 40 if GPU else 12
PAD = 7.0                                   # value of FSDP padding rows: must never change


def skip_unless_available(backend):
    reason = available(DEV)[backend]
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def fsdp_cuts(rows, world):
    """(offset, rows held) per rank as FSDP2 shards dim 0: torch.chunk sizes; trailing ranks may be empty."""
    size = -(-rows // world) if rows else 0
    return [(min(r * size, rows), max(0, min(size, rows - r * size))) for r in range(world)], size


def shards_of(w, cuts, pad_to=None):
    """Each rank's local tensor: its rows, then padding rows (PAD) up to pad_to."""
    out = []
    for off, n in cuts:
        local = w[off:off + n].clone()
        if pad_to is not None and pad_to > n:
            local = torch.cat([local, torch.full((pad_to - n, *w.shape[1:]), PAD, dtype=w.dtype, device=w.device)])
        out.append(local)
    return out


def reference_mask(w, k, rule):
    if rule and rule[1] == "cols":
        return topk_mask_ref(w.t(), k, rule[0]).t()
    return topk_mask_ref(w, k, rule[0] if rule else None)


def lockstep(per_rank, backend, states=None):
    """Run every rank's projection phase by phase; per_rank[r] = (shards, ks, shapes, offsets, rules)."""
    projs, transposed = [], []
    for r, (shards, ks, shapes, offs, rules) in enumerate(per_rank):
        targets, _ = shard_targets(shards, ks, shapes, offs, rules)
        transposed.append([t.shard.transposed for t in targets])
        projs.append(Projection(targets, kernel_set(backend), state=states[r] if states else None, mask_mode=True,
                                rank=r))
    payloads = [p.protection() for p in projs]
    if payloads[0] is not None:
        stacked = torch.stack(payloads)
        for p in projs:
            p.receive_protection(stacked)
    passes = 0
    while True:
        rows = [p.histogram() for p in projs]
        if rows[0] is None:
            assert all(r is None for r in rows)
            break
        passes += 1
        total = torch.stack(rows).sum(0)
        for p, r in zip(projs, rows):
            r.copy_(total)
            p.decide(r)
    ties = [p.apply() for p in projs]
    stacked = torch.stack(ties) if ties[0] is not None else None
    masks = [[m.t() if tr else m for m, tr in zip(p.settle(stacked), trs)] for p, trs in zip(projs, transposed)]
    return masks, passes


class Group:
    """A simulated process group: each rank a thread, collectives meet at a barrier."""

    def __init__(self, world):
        self.world, self.slots = world, [None] * world
        self.barrier = threading.Barrier(world, timeout=120)

    def _meet(self, rank, t):
        self.slots[rank] = t.clone()
        self.barrier.wait()
        got = torch.stack(self.slots)
        self.barrier.wait()                 # nobody overwrites a slot before everyone has read them all
        return got

    def comm(self, rank, gather=True):
        def all_reduce(t):
            t.copy_(self._meet(rank, t).sum(0))
        return Comm(rank, self.world, all_reduce, (lambda t: self._meet(rank, t)) if gather else None)


def threaded(world, fn):
    """fn(rank, comm) on one thread per rank; returns the results in rank order (re-raises the first error)."""
    group, out, errors = Group(world), [None] * world, []

    def go(r):
        try:
            out[r] = fn(r, group.comm(r))
        except BaseException as e:        # noqa: BLE001  (re-raised below, in the test's thread)
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=go, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def check_masks(ws, ks, rules, cuts_per_tensor, masks_per_rank):
    """Concatenating the ranks' masks (padding cut off) gives the reference mask of each whole tensor."""
    for i, (w, k, rule) in enumerate(zip(ws, ks, rules)):
        got = torch.cat([masks_per_rank[r][i][:n] for r, (_, n) in enumerate(cuts_per_tensor[i])])
        assert torch.equal(got.cpu(), reference_mask(w, k, rule).cpu()), (i, k, rule)


def run_case(ws, ks, rules, world, backend, cuts=None, pad=True):
    """Shard every tensor over `world` ranks, project in lockstep, compare with the reference."""
    cuts_per_tensor, per_rank = [], [([], [], [], [], []) for _ in range(world)]
    for i, w in enumerate(ws):
        c, size = cuts[i] if cuts else fsdp_cuts(w.shape[0], world)
        cuts_per_tensor.append(c)
        for r, local in enumerate(shards_of(w, c, size if pad else None)):
            shards, kk, shapes, offs, rr = per_rank[r]
            shards.append(local); kk.append(ks[i]); shapes.append(tuple(w.shape)); offs.append(c[r][0])
            rr.append(rules[i])
    masks, passes = lockstep(per_rank, backend)
    check_masks(ws, ks, rules, cuts_per_tensor, masks)
    return passes


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
@pytest.mark.parametrize("case", ["ties_across_boundary", "column_ties_across_boundary", "rows_not_divisible",
                                  "empty_ranks", "k0", "k_all", "bias", "all_zero"])
def test_constructed_cases(backend, case):
    skip_unless_available(backend)
    g = torch.Generator().manual_seed(0)
    world, rule = 3, None
    if case == "ties_across_boundary":      # 24 equal magnitudes over rows 2..5: the boundary is at row 3
        w = torch.randn(9, 4, generator=g)
        w[2:6] = 0.5 * torch.sign(torch.randn(4, 4, generator=g))
        k = (w.abs() > 0.5).sum().item() + 7
    elif case == "column_ties_across_boundary":
        w = torch.randn(9, 5, generator=g) * 0.1
        w[1:7, 2] = -2.0                     # column 2: ties on every rank, protection and survivors cut inside
        w[:, 4] = 1.0
        k, rule = 14, (2, "cols")
    elif case == "rows_not_divisible":
        w, k, rule = torch.randn(7, 6, generator=g), 11, (1, "rows")
    elif case == "empty_ranks":
        w, k, world, rule = torch.randn(2, 5, generator=g), 4, 4, (1, "cols")
    elif case == "k0":
        w, k = torch.randn(5, 3, generator=g), 0
    elif case == "k_all":
        w, k, rule = torch.randn(5, 3, generator=g), 15, (1, "cols")
    elif case == "bias":
        w, k = torch.randint(-2, 3, (11,), generator=g).float(), 6
    else:
        w, k, rule = torch.zeros(6, 4), 9, (1, "cols")
    run_case([w.to(DEV)], [k], [rule], world, backend)


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_matches_single_process_projection(backend, data):
    skip_unless_available(backend)
    world = data.draw(st.integers(1, 4), label="world")
    n_t = data.draw(st.integers(1, 3), label="tensors")
    ws, ks, rules, cuts = [], [], [], []
    for _ in range(n_t):
        rows = data.draw(st.integers(1, 12))
        one_d = data.draw(st.booleans())
        cols = 1 if one_d else data.draw(st.integers(1, 9))
        seed = data.draw(st.integers(0, 2**31 - 1))
        gen = torch.Generator().manual_seed(seed)
        kind = data.draw(st.sampled_from(["normal", "ties", "zeros"]))
        w = {"normal": torch.randn(rows, cols, generator=gen),
             "ties": torch.randint(-3, 4, (rows, cols), generator=gen).float() * 0.25,
             "zeros": torch.zeros(rows, cols)}[kind]
        w = w.to(data.draw(st.sampled_from([torch.float32, torch.bfloat16]))).to(DEV)
        w = w.reshape(-1) if one_d else w
        k = data.draw(st.integers(-1, w.numel() + 2), label="k")
        rule = None if one_d else data.draw(st.sampled_from([None, (1, "rows"), (2, "rows"), (1, "cols"), (3, "cols")]))
        points = sorted(data.draw(st.lists(st.integers(0, rows), min_size=world - 1, max_size=world - 1)))
        bounds = [0] + points + [rows]
        cuts.append(([(bounds[r], bounds[r + 1] - bounds[r]) for r in range(world)], None))
        ws.append(w); ks.append(k); rules.append(rule)
    run_case(ws, ks, rules, world, backend, cuts=cuts, pad=False)


def test_warm_start_needs_fewer_passes_and_one_reduce_per_pass_for_all_tensors():
    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(10, 8, generator=g), torch.randn(6, 20, generator=g), torch.randn(30, generator=g)]
    ks, rules, world = [17, 33, 9], [(1, "rows"), (2, "cols"), None], 3
    states = [TopkState() for _ in range(world)]
    passes = []
    for step in range(3):
        ws = [w + 0.01 * torch.randn(w.shape, generator=g) for w in ws]
        per_rank = [([], [], [], [], []) for _ in range(world)]
        cuts_all = []
        for i, w in enumerate(ws):
            cuts, _ = fsdp_cuts(w.shape[0], world)
            cuts_all.append(cuts)
            for r, local in enumerate(shards_of(w, cuts)):
                for lst, v in zip(per_rank[r], (local, ks[i], tuple(w.shape), cuts[r][0], rules[i])):
                    lst.append(v)
        masks, n = lockstep(per_rank, "torch", states)
        check_masks(ws, ks, rules, cuts_all, masks)
        passes.append(n)
    assert passes[0] == 3                  # whole key range: bins of 2**21, 2**10, then single keys
    assert passes[1] == passes[2] == 2     # around the previous threshold: bins of 2**11, then single keys


@pytest.mark.parametrize("use_gather", [True, False])
def test_public_api_on_threads(use_gather):
    """project_topk_sharded_ on 3 ranks (one thread each): exact, padding untouched, and its CommStats."""
    g = torch.Generator().manual_seed(5)
    ws = [torch.randn(7, 6, generator=g), torch.randint(-2, 3, (8, 4), generator=g).float(), torch.randn(5, generator=g)]
    ks, rules, world = [12, 9, 2], [(1, "cols"), (1, "rows"), None], 3
    cuts = [fsdp_cuts(w.shape[0], world) for w in ws]

    def rank_fn(r, comm):
        comm = comm if use_gather else Comm(comm.rank, comm.world_size, comm.all_reduce)
        local = [shards_of(w, c, size)[r] for w, (c, size) in zip(ws, cuts)]
        before = [x.clone() for x in local]
        stats = project_topk_sharded_(local, ks, [w.shape for w in ws], [c[r][0] for c, _ in cuts], comm,
                                      protect=rules, backend="torch")
        return local, before, stats

    out = threaded(world, rank_fn)
    for i, (w, k, rule) in enumerate(zip(ws, ks, rules)):
        c, _ = cuts[i]
        got = torch.cat([out[r][0][i][:n] for r, (_, n) in enumerate(c)])
        assert torch.equal(got, torch.where(reference_mask(w, k, rule), w, 0.0)), i
        for r, (_, n) in enumerate(c):
            assert torch.equal(out[r][0][i][n:], out[r][1][i][n:])        # padding rows unchanged
    stats = [o[2] for o in out]
    assert all(s.calls == stats[0].calls for s in stats)                   # every rank made the same calls
    s = stats[0]
    hist_bytes = [b for kind, what, b in s.calls if what.startswith("histograms")]
    assert len(hist_bytes) == 3 and s.count("all_reduce") == (3 if use_gather else 5)   # cold: three passes
    assert hist_bytes[0] == 3 * (2 + 2048) * 8                              # pass 1 carries all 3 tensors
    assert s.calls[0][1] == ("column protection" if use_gather else "column protection (as a gather)")
    assert s.count("all_gather") == (2 if use_gather else 0)                       # column protection, tie counts


def test_masks_and_nan_on_one_rank():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(6, 5, generator=g)
    cuts, size = fsdp_cuts(6, 2)
    masks = threaded(2, lambda r, comm: topk_masks_sharded([shards_of(w, cuts, size)[r]], [8], [w.shape],
                                                             [cuts[r][0]], comm, backend="torch")[0][0])
    assert torch.equal(torch.cat([masks[0][:3], masks[1][:3]]), topk_mask_ref(w, 8))
    bad = w.clone()
    bad[4, 1] = float("nan")                                               # on rank 1 only
    shards = shards_of(bad, cuts, size)
    before = [s.clone() for s in shards]

    def rank_fn(r, comm):
        with pytest.raises(ValueError, match="'mlp.c_fc'"):
            project_topk_sharded_([shards[r]], [8], [w.shape], [cuts[r][0]], comm, names=["mlp.c_fc"], backend="torch")
        return True

    assert threaded(2, rank_fn) == [True, True]                             # every rank raises, none hangs
    assert all(torch.equal(s.nan_to_num(), b.nan_to_num()) for s, b in zip(shards, before))


def test_sparse_adamw_step_across_ranks_equals_one_process():
    """Three SparseAdamW steps on 2 ranks' shards (torch backend, global grad scale passed in) give the
    single-process step's weights and moments bit for bit, protection and weight decay included."""
    from sparseformer.kernels import sparse_adamw_step_
    from sparseformer.kernels.adamw import AdamWTensor, grad_rms_scale

    g = torch.Generator().manual_seed(11)
    shapes = [(9, 6), (5, 12), (7,)]
    specs = [(20, (1, "cols"), 0.1), (15, (2, "rows"), 0.1), (3, None, 0.0)]
    full = [torch.randn(s, generator=g) * 0.05 for s in shapes]
    moments = [(torch.zeros(s), torch.zeros(s)) for s in shapes]
    world = 2
    cuts = [fsdp_cuts(s[0], world)[0] for s in shapes]
    local = [[(p[o:o + n].clone(), m[o:o + n].clone(), v[o:o + n].clone()) for (o, n) in c]
             for p, (m, v), c in zip(full, moments, cuts)]
    states = [TopkState() for _ in range(world)]

    def items(params, grads, step, sharded_rank=None):
        out = []
        for i, ((p, m, v), gr, (k, prot, wd)) in enumerate(zip(params, grads, specs)):
            extra = {} if sharded_rank is None else dict(global_shape=shapes[i], row_offset=cuts[i][sharded_rank][0])
            out.append(AdamWTensor(param=p, grad=gr, exp_avg=m, exp_avg_sq=v, step=step, lr=0.02, beta1=0.9,
                                   beta2=0.95, eps=0.1, weight_decay=wd, k=k, protect=prot, name=f"t{i}", **extra))
        return out

    for step in range(1, 4):
        grads = [torch.randn(s, generator=g) for s in shapes]
        scale = grad_rms_scale(grads)
        sparse_adamw_step_(items([(p, m, v) for p, (m, v) in zip(full, moments)], grads, step), backend="torch")

        def rank_fn(r, comm):
            mine = [local[i][r] for i in range(len(shapes))]
            mine_g = [gr[o:o + n] for gr, (o, n) in zip(grads, (c[r] for c in cuts))]
            return sparse_adamw_step_(items(mine, mine_g, step, r), backend="torch", comm=comm, grad_scale=scale,
                                      state=states[r])

        threaded(world, rank_fn)
        for i in range(len(shapes)):
            for part, ref in zip(range(3), (full[i], *moments[i])):
                assert torch.equal(torch.cat([local[i][r][part] for r in range(world)]), ref), (step, i, part)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_fused_step_with_comm_equals_fused_step_without(backend):
    """The device step with a one-rank Comm (the sharded path: shard targets, exact bins, the fused first
    histogram reduced) gives the weights of the device step without one, bit for bit, over warm steps."""
    skip_unless_available(backend)
    from sparseformer.kernels import sparse_adamw_step_
    from sparseformer.kernels.adamw import AdamWTensor

    g = torch.Generator().manual_seed(13)
    shapes, specs = [(12, 10), (40,), (6, 9)], [(30, None, 0.1), (9, None, 0.0), (20, (1, "cols"), 0.1)]
    runs = [[(torch.randn(s, generator=g) * 0.05).to(DEV) for s in shapes]]
    runs.append([p.clone() for p in runs[0]])
    moments = [[(torch.zeros_like(p), torch.zeros_like(p)) for p in ps] for ps in runs]
    states, stats = [TopkState(), TopkState()], None
    one = Comm(0, 1, lambda t: None, lambda t: t[None].clone())
    for step in range(1, 4):
        grads = [torch.randn(s, generator=g).to(DEV) for s in shapes]
        for r, (ps, ms) in enumerate(zip(runs, moments)):
            items = [AdamWTensor(param=p, grad=gr.clone(), exp_avg=m, exp_avg_sq=v, step=step, lr=0.02, beta1=0.9,
                                 beta2=0.95, eps=0.1, weight_decay=wd, k=k, protect=prot, name=f"t{i}",
                                 global_shape=tuple(p.shape))
                     for i, (p, (m, v), gr, (k, prot, wd)) in enumerate(zip(ps, ms, grads, specs))]
            out = sparse_adamw_step_(items, backend=backend, state=states[r], comm=one if r else None)
            stats = out if r else stats
        for a, b in zip(*runs):
            assert torch.equal(a, b), step
    assert [what for _, what, _ in stats.calls][:1] == ["column protection"]


def test_decay_multiplies_the_survivors_on_every_rank():
    g = torch.Generator().manual_seed(17)
    w = torch.randn(5, 4, generator=g)
    cuts, size = fsdp_cuts(5, 2)
    shards = shards_of(w, cuts, size)

    def rank_fn(r, comm):
        project_topk_sharded_([shards[r]], [7], [w.shape], [cuts[r][0]], comm, decay=0.5, backend="torch")

    threaded(2, rank_fn)
    got = torch.cat([shards[r][:n] for r, (_, n) in enumerate(cuts)])
    assert torch.equal(got, torch.where(topk_mask_ref(w, 7), w * 0.5, 0.0))
