"""How `sparsify` converts a module: one `Adapter` per kind of module that holds a 2-D weight.

Built in: nn.Linear (weight [out, in]; becomes a SparseLinear sharing its Parameters) and Hugging Face's
Conv1D (weight stored [in, out], y = x W + b; recognised by name and shape, so transformers need not be
installed). Any other module with a 2-D `weight` (and optional `bias`) joins through `register_adapter`:

    register_adapter(MyProjection, transposed=False)            # forward is y = x W^T + b: sparse matmuls
    register_adapter(lambda m: isinstance(m, MyMixer), product=False)   # keep its forward, hold k only

A converted non-Linear module keeps its object, Parameters, hooks, state-dict keys and isinstance
checks: its class is swapped for a subclass `Sparse<Class>` that mixes in SparseProduct (holds k; with
`product=True` computes y = x W^T + b through the sparse matmuls on the [out, in] view of the weight), and
`densify` swaps the class back. Per-neuron protection is on the output neurons of either layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from torch import nn

from .linear import SparseLinear, SparseProduct

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "convert", "register_adapter", "restore"]

# what SparseProduct/SparseOwner add to a converted module (removed again by `restore`)
_ADDED = ("k", "bias_k", "protect", "kind", "neuron_axis", "dw_policy", "backend", "method", "refresh_mode",
          "_plan", "_plan_key")


@dataclass(frozen=True)
class Adapter:
    """How sparsify converts one kind of module holding a 2-D `weight` (and optionally a `bias`)."""
    name: str
    matches: Callable[[nn.Module], bool]
    transposed: bool = False     # the weight is stored [in, out] (y = x W + b), not [out, in]
    product: bool = True         # forward is y = x W^T + b on the [out, in] view: run the sparse matmuls;
                                 # False keeps the module's own forward (dense on the masked weight)

    @property
    def neuron_axis(self) -> str:
        """The side of the stored weight that indexes output neurons."""
        return "cols" if self.transposed else "rows"


def _is_conv1d(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return (type(m).__name__ == "Conv1D" and isinstance(w, nn.Parameter) and w.ndim == 2
            and tuple(w.shape) == (getattr(m, "nx", None), getattr(m, "nf", None)))


ADAPTERS: list[Adapter] = [
    Adapter("Linear", lambda m: isinstance(m, nn.Linear)),
    Adapter("Conv1D", _is_conv1d, transposed=True),
]


def register_adapter(matches: type | Callable[[nn.Module], bool], *, transposed: bool = False, product: bool = True,
                     name: str | None = None) -> Adapter:
    """Teach sparsify a module type (a class, or a predicate on modules); returns the Adapter. Later
    registrations win over earlier ones and the built-ins."""
    if isinstance(matches, type):
        cls = matches
        matches, name = (lambda m: isinstance(m, cls)), name or cls.__name__
    adapter = Adapter(name or getattr(matches, "__name__", "custom"), matches, transposed, product)
    ADAPTERS.insert(0, adapter)
    return adapter


def adapter_for(module: nn.Module) -> Adapter | None:
    """The adapter that converts `module`, or None; a sparse module without a budget gets one in place."""
    if isinstance(module, SparseProduct):
        if module.k is not None:
            return None
        return Adapter(type(module).__name__, lambda m: True, transposed=getattr(module, "_transposed", False))
    w = getattr(module, "weight", None)
    if not isinstance(w, nn.Parameter) or w.ndim != 2:
        return None
    return next((a for a in ADAPTERS if a.matches(module)), None)


@lru_cache(maxsize=None)
def _sparse_class(cls: type, transposed: bool, product: bool) -> type:
    def weight_out_in(self):
        return self.weight.t() if transposed else self.weight

    def extra_repr(self):
        return f"{cls.extra_repr(self)}, {self.sparse_repr()}"

    body = {"weight_out_in": weight_out_in, "extra_repr": extra_repr, "dense_class": cls, "_transposed": transposed,
            "__module__": __name__}
    if cls.__repr__ is not nn.Module.__repr__:             # a class that writes its own repr (Conv1D does)
        body["__repr__"] = lambda self: f"Sparse{cls.__repr__(self)}[{self.sparse_repr()}]"
    if not product:
        body["forward"] = cls.forward
    return type(f"Sparse{cls.__name__}", (SparseProduct, cls), body)


def convert(module: nn.Module, adapter: Adapter, k: int, protect: int | None, **options) -> nn.Module:
    """The sparse version of `module` holding budget k (protect: j per output neuron): a SparseLinear
    sharing an nn.Linear's Parameters, or the module itself with its class swapped (module docstring)."""
    protect = (protect, adapter.neuron_axis) if protect else None
    if isinstance(module, SparseProduct):             # already sparse-capable: give it the budget in place
        module._setup(**options)
        module.set_budget("weight", k, protect)
        return module
    if adapter.name == "Linear" and type(module) is not SparseLinear and isinstance(module, nn.Linear):
        return SparseLinear.from_linear(module, k=k, protect=protect, **options)
    module.__class__ = _sparse_class(type(module), adapter.transposed, adapter.product)
    module._setup(**options)
    module._init_owner(k, protect, "weight", adapter.neuron_axis)
    return module


def restore(module: nn.Module) -> nn.Module:
    """The plain module again (the inverse of `convert`), sharing the Parameters."""
    module._unregister_owned()
    if isinstance(module, SparseLinear):
        return module.to_linear()
    for key in _ADDED:
        module.__dict__.pop(key, None)
    module.__class__ = module.dense_class
    return module
