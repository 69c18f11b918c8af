"""The circuit viewer: one self-contained HTML file (inline CSS, JS and SVG; no server, no network).

`render_viewer(doc)` fills viewer.html with a circuit document (the circuits/TASK.json dict). The page
draws the circuit from the embeddings (bottom) to the logits (top), layer by layer: nodes labelled by site
and channel (heads as h{n}.ch{c}), weight edges coloured by sign with width by |weight|, and the residual
stream (write -> later read of the same channel, not an edge) dashed. Clicking a node shows its
top-activating pretraining snippets with the token highlighted, and the task loss with that node ablated.
For a cleaned circuit, the "before cleaning" box redraws the bisected circuit with the nodes the cleaning
removed (and their edges) faded; a circuit with a faithfulness report gets its table (one row per control:
status and verdict) in the side panel. tests/prune/viewer_dom.js runs the page's script in node for the tests.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path

from ..checkpoint import atomic_write_text
from ..sites import viewer_layout


def _template() -> str:
    return resources.files(__package__).joinpath("viewer.html").read_text(encoding="utf-8")


def render_viewer(doc: dict) -> str:
    """The viewer page for one circuit document, as a string; the page lays out the sites as the model
    declares them (`sparseformer.sites`)."""
    doc = {**doc, "layout": viewer_layout()}
    # "<" never appears outside JSON strings, and inside them \u003c is the same character, so the
    # embedded document cannot close its <script> element.
    data = json.dumps(doc, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    page = _template().replace("__DATA__", data, 1)            # first, and the <title> comes before the data,
    return page.replace("__TITLE__", html.escape(str(doc.get("task", "circuit"))), 1)   # so neither hits the other


def write_viewer(circuit_json: str | Path, html_path: str | Path | None = None) -> Path:
    """(Re)build the viewer of a circuit file; by default next to it as TASK.html."""
    circuit_json = Path(circuit_json)
    doc = json.loads(circuit_json.read_text(encoding="utf-8"))
    out = Path(html_path) if html_path is not None else circuit_json.with_suffix(".html")
    atomic_write_text(out, render_viewer(doc))
    return out
