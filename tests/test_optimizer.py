"""SparseAdamW's contract (param groups "params", "lr", "k", "protect", "weight_decay", "name"), its math
against a hand-written step in the order of docs/method.md ("The optimizer step"), and the fused device path
against the torch path."""

import pytest
import torch

from sparseformer.kernels import available
from sparseformer.kernels.topk.reference import topk_mask_ref
from sparseformer.sparsity.optimizer import SparseAdamW

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def model_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.nn.Parameter((torch.randn(12, 20, generator=g) * 0.05).to(DEV))
    w2 = torch.nn.Parameter((torch.randn(20, 12, generator=g) * 0.05).to(DEV))
    b = torch.nn.Parameter((torch.randn(20, generator=g) * 0.05).to(DEV))
    gain = torch.nn.Parameter(torch.ones(12, device=DEV))
    return [w1, w2, b, gain]


def groups(ps, k1=60, k2=50):
    return [dict(params=[ps[0]], k=k1, protect=(2, "rows"), weight_decay=0.1, name="mlp.c_fc"),
            dict(params=[ps[1]], k=k2, protect=(1, "cols"), weight_decay=0.1, name="mlp.c_proj"),
            dict(params=[ps[2]], k=5, weight_decay=0.0, name="bias"),
            dict(params=[ps[3]], weight_decay=0.0, name="norm")]


def set_grads(ps, seed):
    g = torch.Generator().manual_seed(seed)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g).to(DEV)


def test_one_step_matches_spec_by_hand():
    ps = model_params()
    ref = [p.detach().clone() for p in ps]
    opt = SparseAdamW(groups(ps), lr=0.02, backend="torch")
    set_grads(ps, 1)
    grads = [p.grad.clone() for p in ps]
    opt.step()
    n = sum(x.numel() for x in grads)
    rms = torch.sqrt(sum((x.double() ** 2).sum() for x in grads) / n)
    specs = [(60, (2, "rows"), 0.1), (50, (1, "cols"), 0.1), (5, None, 0.0), (None, None, 0.0)]
    for p, p0, g, (k, prot, wd) in zip(ps, ref, grads, specs):
        gs = (g.double() / (rms + 1e-5))
        m = 0.1 * gs
        v = 0.05 * gs * gs
        new = p0.double() - 0.02 / 0.1 * m / (torch.sqrt(v / 0.05) + 0.1)
        if k is not None:
            view = new if prot is None or prot[1] == "rows" else new.t()
            keep = topk_mask_ref(view.float(), k, prot[0] if prot else None)
            keep = keep if prot is None or prot[1] == "rows" else keep.t()
            new = torch.where(keep, new, 0.0)
        new = new * (1 - 0.02 * wd)
        torch.testing.assert_close(p.detach().double(), new, rtol=1e-5, atol=1e-7)


def test_contract_counts_protection_and_decay_keep_zeros():
    ps = model_params()
    opt = SparseAdamW(groups(ps), lr=0.01, backend="torch")
    for step, k1 in enumerate([200, 120, 60]):             # the trainer anneals k and sets lr each step
        opt.param_groups[0]["k"] = k1
        opt.param_groups[0]["lr"] = 0.01 * (step + 1)
        set_grads(ps, step)
        opt.step()
        assert int((ps[0] != 0).sum()) == k1
        assert int((ps[1] != 0).sum()) == 50
        assert int((ps[2] != 0).sum()) == 5
        assert bool(((ps[0] != 0).sum(1) >= 2).all())      # rows keep their top-2
        assert bool(((ps[1] != 0).sum(0) >= 1).all())      # columns keep their top-1
        assert int((ps[3] != 0).sum()) == 12               # dense group untouched by the projection
    assert opt.state[ps[0]]["step"] == 3


def test_params_without_grad_are_skipped_and_bad_axis_raises():
    ps = model_params()
    opt = SparseAdamW(groups(ps), lr=0.01, backend="torch")
    before = ps[1].detach().clone()
    set_grads(ps, 0)
    ps[1].grad = None
    opt.step()
    assert torch.equal(ps[1].detach(), before) and ps[1] not in opt.state
    bad = SparseAdamW([dict(params=[ps[0]], k=10, protect=(2, "diag"))], lr=0.01, backend="torch")
    ps[0].grad = torch.ones_like(ps[0])
    with pytest.raises(ValueError, match="'rows' or 'cols'"):
        bad.step()


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_fused_backend_matches_torch_and_resumes(backend):
    reason = available(DEV)[backend]
    if reason is not None:
        pytest.skip(reason)
    a, b = model_params(), model_params()
    oa = SparseAdamW(groups(a), lr=0.02, weight_decay=0.0, backend="torch")
    ob = SparseAdamW(groups(b), lr=0.02, weight_decay=0.0, backend=backend)
    for step in range(3):
        set_grads(a, 10 + step)
        set_grads(b, 10 + step)
        oa.step()
        ob.step()
        for x, y in zip(a, b):
            assert torch.equal(x != 0, y != 0)
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    # a state dict saved by one backend resumes in the other
    oc = SparseAdamW(groups(b), lr=0.02, backend="torch")
    oc.load_state_dict(ob.state_dict())
    set_grads(a, 99)
    set_grads(b, 99)
    oa.step()
    oc.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
