"""`Hooks`: every import-path hook of a recipe, resolved once per process, each field typed by
its hook's protocol.

    hooks = resolve_hooks(config)        # raises ConfigError naming the field on a bad path
    hooks.reward(RewardInput(...))
    hooks = resolve_hooks(config, lazy=True)   # each field resolved on its first read

`load_recipe` resolves them all to check a recipe before anything starts and hands the result to
the run context (`RunContext.hooks`); a component that rebuilds its context from the log resolves
them lazily, so each process pays only for the hooks its role reads (a trainer loads no tokenizer
and imports no reward; a producer imports no loss). Nothing else resolves a recipe's hooks.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, cast

import msgspec

from streamrl.data.prompts import DatasetPrompts, PromptOptions
from streamrl.data.tokenizer import load_tokenizer
from streamrl.hooks.engine import EngineFactory
from streamrl.hooks.resolve import resolve
from streamrl.hooks.rollout import RewardFn, RolloutFn, SampleFilter
from streamrl.hooks.run import Evaluator, ModelInit, PromptSource, Tokenizer
from streamrl.hooks.train import AdvantageFn, CorrectionFn, LossFn, TrainStepHook
from streamrl.recipe.engine import ENGINES
from streamrl.recipe.filters import FILTERS
from streamrl.recipe.rewards import build_reward
from streamrl.recipe.trainer import ADVANTAGES, CORRECTIONS, LOSSES, hook_path
from streamrl.staleness import StalenessPolicy, build_policy

if TYPE_CHECKING:
    from streamrl.recipe.config import RunConfig


class Hooks:
    """A recipe's hooks. Each field mirrors one of the recipe's import-path knobs and is resolved
    on first read, then kept: a process pays only for the hooks it uses (a trainer never loads
    the tokenizer nor imports a reward's packages), and `resolve_hooks` reads them all at once
    where a recipe is checked (the driver, before anything is written)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def resolve_all(self) -> Hooks:
        """Check every field now: a wrong path raises here, naming the recipe field. Each is
        resolved, except a trainer hook given by a built-in name (ADVANTAGES, LOSSES,
        CORRECTIONS) or its path: found in its table, it is resolved on first read,
        so a process that does not train never imports the trainer (tests/recipe resolve every
        table entry). A user's import path is always imported and checked against its type."""
        algorithm = self.config.trainer.algorithm
        built_in = {name for name, value, table in (
            ("advantage", algorithm.advantage, ADVANTAGES), ("loss", algorithm.loss, LOSSES),
            ("correction", algorithm.correction, CORRECTIONS))
            if value in table or value in table.values()}
        for name in HOOK_FIELDS:
            if name not in built_in:
                getattr(self, name)
        return self

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """data.tokenizer (an object, or a class instantiated with no arguments), else
        model.path's own (streamrl/data/tokenizer.py)."""
        config = self.config
        return (_tokenizer(config.data.tokenizer) if config.data.tokenizer is not None
                else load_tokenizer(str(config.model.path)))

    @functools.cached_property
    def prompts(self) -> PromptSource:
        """data.prompts, or data.train as a DatasetPrompts."""
        data = self.config.data
        if data.prompts is not None:
            return resolve(data.prompts, PromptSource, what="data.prompts")
        return _dataset(self.config, data.train, "train", self)  # type: ignore[return-value]

    @functools.cached_property
    def eval_prompts(self) -> DatasetPrompts | None:
        """data.eval (rendered like data.train)."""
        return _dataset(self.config, self.config.data.eval, "eval", self)

    @functools.cached_property
    def init(self) -> ModelInit | None:
        """model.init (None: model.path is the initial checkpoint)."""
        init = self.config.model.init
        return resolve(init, ModelInit, what="model.init") if init is not None else None

    @functools.cached_property
    def reward(self) -> RewardFn:
        """rollout.reward (+ reward_by_source), names built (recipe/rewards.py)."""
        rollout = self.config.rollout
        return build_reward(rollout.reward, rollout.reward_by_source)

    @functools.cached_property
    def rollout(self) -> RolloutFn:
        """rollout.rollout."""
        return resolve(self.config.rollout.rollout, RolloutFn, what="rollout.rollout")

    @functools.cached_property
    def filter(self) -> SampleFilter | None:
        """rollout.filter (a name in FILTERS or a path)."""
        name = self.config.rollout.filter
        if not name:
            return None
        return resolve(hook_path(name, FILTERS, what="rollout.filter"), SampleFilter,
                       what="rollout.filter")

    @functools.cached_property
    def engine_factory(self) -> EngineFactory | None:
        """rollout.engine_factory (None: the torch engine)."""
        name = self.config.rollout.engine_factory
        if not name:
            return None
        return resolve(hook_path(name, ENGINES, what="rollout.engine_factory"), EngineFactory,
                       what="rollout.engine_factory")

    @functools.cached_property
    def evaluate(self) -> Evaluator | None:
        """eval.evaluate."""
        path = self.config.eval.evaluate
        return resolve(path, Evaluator, what="eval.evaluate") if path else None

    @functools.cached_property
    def staleness(self) -> StalenessPolicy:
        """[staleness]: the policy instance."""
        return build_policy(self.config.staleness)

    @functools.cached_property
    def advantage(self) -> AdvantageFn:
        """trainer.algorithm.advantage (a name in ADVANTAGES or a path)."""
        name = self.config.trainer.algorithm.advantage
        return cast(AdvantageFn, resolve(hook_path(name, ADVANTAGES, what="advantage"),
                                         AdvantageFn, what="advantage"))

    @functools.cached_property
    def loss(self) -> LossFn:
        """trainer.algorithm.loss (a name in LOSSES or a path)."""
        name = self.config.trainer.algorithm.loss
        return cast(LossFn, resolve(hook_path(name, LOSSES, what="loss"), LossFn, what="loss"))

    @functools.cached_property
    def correction(self) -> CorrectionFn | None:
        """trainer.algorithm.correction (CORRECTIONS or a path)."""
        name = self.config.trainer.algorithm.correction
        if not name:
            return None
        return cast(CorrectionFn, resolve(
            hook_path(name, CORRECTIONS, what="correction"), CorrectionFn,
            what="trainer.algorithm.correction"))

    @functools.cached_property
    def step_hooks(self) -> tuple[TrainStepHook, ...]:
        """trainer.step_hooks."""
        return tuple(resolve(path, TrainStepHook, what="trainer.step_hooks")
                     for path in self.config.trainer.step_hooks)


HOOK_FIELDS = ("tokenizer", "prompts", "eval_prompts", "init", "reward", "rollout", "filter",
               "engine_factory", "evaluate", "staleness", "advantage", "loss", "correction",
               "step_hooks")
"""Every field of `Hooks`, in the order `resolve_all` reads them (the tokenizer first: the
datasets render with it)."""


def resolve_hooks(config: RunConfig, *, lazy: bool = False) -> Hooks:
    """Import every hook `config` names and check it against its protocol; a wrong path raises
    `ResolveError` (a ValueError) whose message names the recipe field and what is wrong. With
    `lazy`, each hook is resolved on its first read instead (a component rebuilding its context
    from the log: the driver has checked them all before the run started)."""
    hooks = Hooks(config)
    return hooks if lazy else hooks.resolve_all()


def check_prompts(hooks: Hooks) -> None:
    """Read, check and render the recipe's dataset files now, in the driver's process: a bad row
    raises `DataError` naming its file, row and column before anything is written."""
    for source in (hooks.prompts, hooks.eval_prompts):
        if isinstance(source, DatasetPrompts):
            source.load()


def _dataset(config: RunConfig, path: str | None, split: str,
             hooks: Hooks) -> DatasetPrompts | None:
    """`path` as prompts (read lazily: only the driver reads it); eval rows go once, in order."""
    if path is None:
        return None
    data = config.data
    options = PromptOptions(prompt_key=data.prompt_key, system_prompt=data.system_prompt,
                            apply_chat_template=data.apply_chat_template)
    if split == "train":
        options = msgspec.structs.replace(options, shuffle=data.shuffle, epochs=data.epochs,
                                          num_prompts=data.num_prompts)
    else:
        options = msgspec.structs.replace(options, shuffle=False, epochs=1)
    return DatasetPrompts(path, split=split, tokenizer=hooks.tokenizer, options=options)


def _tokenizer(path: str) -> Tokenizer:
    target = resolve(path, what="data.tokenizer")
    tok = target() if isinstance(target, type) else target
    if not isinstance(tok, Tokenizer):
        raise ValueError(f"data.tokenizer {path!r} has no encode/decode/vocab_size/pad_token_id/"
                         "stop_token_id")
    return tok
