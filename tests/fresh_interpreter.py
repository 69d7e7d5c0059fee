"""Load an exported or run folder in a fresh interpreter with plain transformers / peft (no
fedpress import), and compare its logits with the tuned model inside fedpress."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

INPUT_IDS = [[1, 504, 3219, 314, 253, 1345, 30, 198, 32, 25, 3020]]
LOAD_AND_SCORE = """
import json, sys
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
ids = torch.tensor(json.loads(sys.argv[1]))
for mode, folder, out in zip(*[iter(sys.argv[2:])] * 3):
    if mode.startswith("adapter"):  # "adapter" (base in base_model/) or "adapter:<base>"
        from peft import PeftModel
        base = mode.partition(":")[2] or folder + "/base_model"
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits
    save_file({"logits": logits.contiguous()}, out)
assert "fedpress" not in sys.modules
"""


def logits_elsewhere(exports: dict[str, Path], tmp_path: Path) -> dict[str, torch.Tensor]:
    """Logits of each exported folder (mode -> folder), computed in one fresh interpreter."""
    args = []
    for mode, folder in exports.items():
        args += [mode, str(folder), str(tmp_path / f"{len(args)}-logits.safetensors")]
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_SCORE, json.dumps(INPUT_IDS), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outs = args[2::3]
    return {m: load_file(out)["logits"] for m, out in zip(exports, outs, strict=True)}


def logits_here(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor(INPUT_IDS)).logits
