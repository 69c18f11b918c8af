"""The paper's released checkpoint format: import, load and export (docs/method.md, "The paper's released
checkpoints").

An official model directory holds beeg_config.json (GPTConfig fields) and final_model.pt (a state dict, dense
or sparse COO tensors); the tokenizer is GPT-2 data-gym files encoder.json + vocab.bpe. Our module and hook
names are the official ones, so circuits found on an imported model name the nodes the paper's figures do.

    run = load_official("models/csp_yolo1", tokenizer_dir="tinypython")   # in memory
    import_official("models/csp_yolo1", "runs/yolo1")                     # a run directory
    export_official("runs/mine", "export/mine")                           # back to the official layout
"""

from .config import CONFIG_FILE, from_model_config, to_model_config
from .convert import META_FILE, OfficialModel, export_official, import_official, load_official, read_official
from .datagym import ENCODER_FILE, MERGES_FILE, read_datagym, write_datagym
from .weights import WEIGHTS_FILE, expected_shapes, from_official_name, to_official_name

__all__ = ["CONFIG_FILE", "ENCODER_FILE", "MERGES_FILE", "META_FILE", "WEIGHTS_FILE", "OfficialModel",
           "expected_shapes", "export_official", "from_model_config", "from_official_name", "import_official",
           "load_official", "read_datagym", "read_official", "to_model_config", "to_official_name",
           "write_datagym"]
