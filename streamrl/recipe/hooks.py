"""`Hooks`: every import-path hook of a recipe, resolved once per process into one frozen struct
whose fields are typed by the hooks' protocols.

    hooks = resolve_hooks(config)        # raises ConfigError naming the field on a bad path
    hooks.reward(RewardInput(...))

`load_recipe` resolves them to check a recipe before anything starts and hands the result to
the run context (`RunContext.hooks`), which every component reads; a component that rebuilds its
context from the log resolves them once, on first use. Nothing else resolves a recipe's hooks.
"""

from __future__ import annotations

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


class Hooks(msgspec.Struct, kw_only=True, frozen=True):
    """A recipe's hooks, resolved. Fields mirror the recipe's import-path knobs."""

    tokenizer: Tokenizer  # data.tokenizer (an object, or a class instantiated with no
    #                       arguments), else model.path's own (streamrl/data/tokenizer.py)
    prompts: PromptSource  # data.prompts, or data.train as a DatasetPrompts
    eval_prompts: DatasetPrompts | None  # data.eval (rendered like data.train)
    init: ModelInit | None  # model.init (None: model.path is the initial checkpoint)
    reward: RewardFn  # rollout.reward (+ reward_by_source), names built (recipe/rewards.py)
    rollout: RolloutFn  # rollout.rollout
    filter: SampleFilter | None  # rollout.filter (a name in FILTERS or a path)
    engine_factory: EngineFactory | None  # rollout.engine_factory (None: the torch engine)
    evaluate: Evaluator | None  # eval.evaluate
    staleness: StalenessPolicy  # [staleness]: the policy instance
    advantage: AdvantageFn  # trainer.algorithm.advantage (a name in ADVANTAGES or a path)
    loss: LossFn  # trainer.algorithm.loss (a name in LOSSES or a path)
    correction: CorrectionFn | None  # trainer.algorithm.correction (CORRECTIONS or a path)
    step_hooks: tuple[TrainStepHook, ...]  # trainer.step_hooks


def resolve_hooks(config: RunConfig) -> Hooks:
    """Import every hook `config` names and check it against its protocol; a wrong path raises
    `ResolveError` (a ValueError) whose message names the recipe field and what is wrong."""
    rollout, algorithm = config.rollout, config.trainer.algorithm
    tokenizer = (_tokenizer(config.data.tokenizer) if config.data.tokenizer is not None
                 else load_tokenizer(str(config.model.path)))
    return Hooks(
        tokenizer=tokenizer,
        prompts=(resolve(config.data.prompts, PromptSource, what="data.prompts")
                 if config.data.prompts is not None
                 else _dataset(config, config.data.train, "train", tokenizer)),
        eval_prompts=_dataset(config, config.data.eval, "eval", tokenizer),
        init=(resolve(config.model.init, ModelInit, what="model.init")
              if config.model.init is not None else None),
        reward=build_reward(rollout.reward, rollout.reward_by_source),
        rollout=resolve(rollout.rollout, RolloutFn, what="rollout.rollout"),
        filter=(resolve(hook_path(rollout.filter, FILTERS, what="rollout.filter"),
                        SampleFilter, what="rollout.filter") if rollout.filter else None),
        engine_factory=(resolve(hook_path(rollout.engine_factory, ENGINES,
                                          what="rollout.engine_factory"),
                                EngineFactory, what="rollout.engine_factory")
                        if rollout.engine_factory else None),
        evaluate=(resolve(config.eval.evaluate, Evaluator, what="eval.evaluate")
                  if config.eval.evaluate else None),
        staleness=build_policy(config.staleness),
        advantage=cast(AdvantageFn, resolve(
            hook_path(algorithm.advantage, ADVANTAGES, what="advantage"), AdvantageFn,
            what="advantage")),
        loss=cast(LossFn, resolve(hook_path(algorithm.loss, LOSSES, what="loss"), LossFn,
                                  what="loss")),
        correction=(cast(CorrectionFn, resolve(
            hook_path(algorithm.correction, CORRECTIONS, what="correction"), CorrectionFn,
            what="trainer.algorithm.correction")) if algorithm.correction else None),
        step_hooks=tuple(resolve(path, TrainStepHook, what="trainer.step_hooks")
                         for path in config.trainer.step_hooks))


def check_prompts(hooks: Hooks) -> None:
    """Read, check and render the recipe's dataset files now, in the driver's process: a bad row
    raises `DataError` naming its file, row and column before anything is written."""
    for source in (hooks.prompts, hooks.eval_prompts):
        if isinstance(source, DatasetPrompts):
            source.load()


def _dataset(config: RunConfig, path: str | None, split: str,
             tokenizer: Tokenizer) -> DatasetPrompts | None:
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
    return DatasetPrompts(path, split=split, tokenizer=tokenizer, options=options)


def _tokenizer(path: str) -> Tokenizer:
    target = resolve(path, what="data.tokenizer")
    tok = target() if isinstance(target, type) else target
    if not isinstance(tok, Tokenizer):
        raise ValueError(f"data.tokenizer {path!r} has no encode/decode/vocab_size/pad_token_id/"
                         "stop_token_id")
    return tok
