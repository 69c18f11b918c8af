"""sparseformer.bridges: read a dense model through a sparse one (docs/bridges.md; Gao et al. 2025, 2.3, A.3-A.4).

    from sparseformer.bridges import bridge, load_bridged, steering_curve
    result = bridge("runs/tiny-dense", "runs/tiny-bridged", get_preset("tiny"))   # train the coupled sparse model
    curve = steering_curve(load_bridged("runs/tiny-bridged"), "single_double_quote", "1.attn.act_in.37")

Modules: modules (the encoders and decoders, the sites), losses (NMSE, KL, spliced forwards), objective (the
training loop's bridge objective), config (bridge.json), run (bridge, load_bridged), table (per-site metrics),
steer (steering the dense model with a sparse node's decoder direction).
"""

from .config import BridgeInfo, BridgeSettings
from .losses import BridgeTerms, bridge_terms, kl_from, nmse
from .modules import Bridges, Encoder, bridge_sites
from .objective import BridgeObjective
from .run import Bridged, BridgeResult, bridge, check_compatible, load_bridged
from .table import final_metrics, metrics_table

__all__ = ["BridgeInfo", "BridgeObjective", "BridgeResult", "BridgeSettings", "BridgeTerms", "Bridged", "Bridges",
           "Encoder", "bridge", "bridge_sites", "bridge_terms", "check_compatible", "final_metrics", "kl_from",
           "load_bridged", "metrics_table", "nmse"]
