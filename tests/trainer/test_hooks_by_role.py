"""Each process resolves only the hooks its role reads: checking a recipe (the driver) resolves
every hook a user named but imports no trainer for a built-in name, and a component's lazy hooks
load nothing until read."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

from streamrl.hooks.resolve import ResolveError, resolve
from streamrl.hooks.train import CorrectionFn
from streamrl.recipe.config import load_config
from streamrl.recipe.hooks import resolve_hooks
from streamrl.recipe.trainer import CORRECTIONS
from tests.helpers import TINY


def test_every_correction_name_resolves_to_its_hook() -> None:
    for path in CORRECTIONS.values():  # checked by name only at load: they must resolve
        assert callable(resolve(path, CorrectionFn, what="correction"))


def test_lazy_hooks_resolve_a_field_when_it_is_first_read() -> None:
    hooks = resolve_hooks(load_config(TINY), lazy=True)
    assert vars(hooks).keys() == {"config"}
    assert callable(hooks.loss) and hooks.loss is hooks.loss  # resolved once
    assert "tokenizer" not in vars(hooks) and "reward" not in vars(hooks)


def test_checking_a_recipe_imports_no_trainer_but_still_refuses_a_bad_path() -> None:
    code = ("import sys; from streamrl.recipe.config import load_config; "
            "from streamrl.recipe.hooks import resolve_hooks; "
            f"resolve_hooks(load_config({str(TINY)!r})); "
            "print('streamrl.consumers.trainer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
    config = load_config(TINY)
    algorithm = msgspec.structs.replace(config.trainer.algorithm,
                                        loss="streamrl.consumers.trainer.losses:no_such_loss")
    bad = msgspec.structs.replace(config, trainer=msgspec.structs.replace(
        config.trainer, algorithm=algorithm))
    with pytest.raises(ResolveError, match="has no attribute 'no_such_loss'"):
        resolve_hooks(bad)
