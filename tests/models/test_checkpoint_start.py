"""A process that loads a checkpoint does not pay for torch's symbolic-shape machinery: building
the model on the meta device skips random init, whose meta `normal_` would import torch._dynamo
and sympy (2-7 s of every producer's and trainer's start on a 2-core machine,
BENCHMARKS.md `profile_version_ab`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from streamrl.models import load_checkpoint
from streamrl.models.checkpoint import save_checkpoint
from tests.trainer.helpers import tiny_model

PROBE = """
import json, sys
import torch
from streamrl.models import load_checkpoint
model = load_checkpoint(sys.argv[1])
print(json.dumps({"sympy": "sympy" in sys.modules, "dynamo": "torch._dynamo" in sys.modules,
                  "meta": any(t.is_meta for t in model.state_dict().values())}))
"""


def test_load_checkpoint_skips_meta_init_and_its_imports(tmp_path: Path) -> None:
    model = tiny_model(seed=3)
    save_checkpoint(model, tmp_path)
    loaded = load_checkpoint(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert json.loads(out.stdout.splitlines()[-1]) == {"sympy": False, "dynamo": False,
                                                       "meta": False}
