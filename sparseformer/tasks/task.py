"""The task data types: a `Pair` (one datapoint of two prompts and their targets) and a `Task` (a named source
of pairs, from a generator or a file). The registry (registry.py) and the JSONL loader (jsonl.py) both build
Tasks; keeping the types here lets each import them without importing the other.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import TaskError

KINDS = ("binary", "full_vocab")


@dataclass(frozen=True)
class Pair:
    """One datapoint: prompt A must continue with target A, prompt B with target B.

    Targets are text (`'")'`, `']]\\n'`); they are scored by the first token of their encoding.
    `completion_a/_b` are optional text that, appended to prompt + target, makes a complete Python
    snippet; only checks use them (they are not part of the JSON form).
    """

    prompt_a: str
    target_a: str
    prompt_b: str
    target_b: str
    completion_a: str = field(default="", compare=False)
    completion_b: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, str]:
        """The public JSON form: prompt_a, target_a, prompt_b, target_b."""
        return {"prompt_a": self.prompt_a, "target_a": self.target_a,
                "prompt_b": self.prompt_b, "target_b": self.target_b}

    def key(self) -> str:
        """A string that identifies the pair's text (used to dedupe and to split train/test)."""
        return "\x1f".join((self.prompt_a, self.target_a, self.prompt_b, self.target_b))


@dataclass(frozen=True)
class Task:
    """A named source of pairs.

    kind="binary": side A must rank target A above target B and side B the reverse (2-way softmax).
    kind="full_vocab": side A must predict target A over the whole vocabulary; side B must avoid it
    (target B is then only an example continuation). See loss.py.
    Exactly one of `generator` (fn(random.Random) -> Pair) and `pairs` is set.
    `splits`, for file tasks, gives each pair's split ("train", "test" or None for both).
    """

    name: str
    description: str = ""
    generator: Callable[[random.Random], Pair] | None = None
    pairs: tuple[Pair, ...] | None = None
    splits: tuple[str | None, ...] | None = None
    kind: str = "binary"
    source: str = "builtin"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TaskError(f"task '{self.name}': kind={self.kind!r} is not one of {', '.join(KINDS)}")
        if (self.generator is None) == (self.pairs is None):
            raise TaskError(f"task '{self.name}': give exactly one of generator= and pairs=")

    def info(self) -> dict[str, str]:
        """name, kind, source and description, for listings."""
        return {"name": self.name, "kind": self.kind, "source": self.source, "description": self.description}
