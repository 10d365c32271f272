"""The built-in rewards on hand-written answers (right, wrong, garbled), their combinations and
per-data_source routing, as a recipe names them; bad reward settings fail when the recipe loads,
naming the field. Called in-process here; tests/producers/test_reward_sandbox.py runs them as a
producer does, in a worker process with a timeout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.recipe.config import ConfigError, load_recipe
from streamrl.recipe.rewards import RewardTerm, build_reward
from tests.helpers import TINY


def ask(reward: object, response: str, ground_truth: object = "5", **metadata: object
        ) -> RewardOutput:
    fn = build_reward(reward, {}) if not callable(reward) else reward  # type: ignore[arg-type]
    return fn(sample(response, ground_truth, **metadata))


def sample(response: str, ground_truth: object = "5", **metadata: object) -> RewardInput:
    return RewardInput(
        prompt_id="p-1", prompt_text="question", prompt_tokens=np.zeros(2, np.int32),
        response_text=response, response_tokens=np.zeros(4, np.int32), finish_reason="stop",
        metadata={"ground_truth": ground_truth, **metadata})


def scored(out: RewardOutput) -> tuple[float, str]:
    return out.reward, out.status


def test_math_verifies_the_last_boxed_answer_symbolically() -> None:
    assert scored(ask("math", r"So $x = \boxed{\frac{1}{2}}$.", "0.5")) == (1.0, "correct")
    assert scored(ask("math", r"\boxed{0.5}", r"\frac{1}{2}")) == (1.0, "correct")
    assert scored(ask("math", r"\boxed{x^2+2x+1}", "(x+1)^2")) == (1.0, "correct")
    assert scored(ask("math", r"first \boxed{3}, then finally \boxed{5}")) == (1.0, "correct")
    assert scored(ask("math", r"first \boxed{5}, then finally \boxed{3}")) == (0.0, "wrong")
    assert ask("math", r"\boxed{4}").details == {"parsed": 1.0}


@pytest.mark.parametrize(("response", "status"), [
    ("The answer is 5.", "no_boxed"),  # right, but not where the rule looks
    (r"\boxed{5", "no_boxed"),  # never closed
    ("}}{{\\boxed{", "no_boxed"),
    (r"\boxed{}", "unparsable"),
    (r"\boxed{\frac{{}", "no_boxed"),
    ("\x00\ufffd" * 50, "no_boxed"),
])
def test_a_garbled_math_answer_is_zero_with_its_status(response: str, status: str) -> None:
    assert scored(ask("math", response)) == (0.0, status)


def test_math_without_boxed_only_reads_the_final_answer_anywhere() -> None:
    loose = RewardTerm(name="math", options={"boxed_only": False})
    assert scored(ask(loose, "so the answer is 5")) == (1.0, "correct")


def test_a_missing_or_unreadable_ground_truth_is_the_datasets_fault_and_raises() -> None:
    math = build_reward("math", {})
    with pytest.raises(ValueError, match=r"prompt 'p-1' has no metadata\['ground_truth'\]"):
        math(RewardInput(prompt_id="p-1", prompt_text=None, prompt_tokens=np.zeros(1, np.int32),
                         response_text=r"\boxed{1}", response_tokens=np.zeros(1, np.int32),
                         finish_reason="stop", metadata={"answer": "1"}))
    with pytest.raises(ValueError, match="must be a string or a number, got list"):
        ask("math", r"\boxed{1}", ["1"])
    with pytest.raises(ValueError, match="is not an answer math-verify can parse"):
        ask("math", r"\boxed{1}", "")


@pytest.mark.parametrize(("response", "truth", "expected"), [
    ("She pays 3 * 24 = 72 dollars.\n#### 72", "72", (1.0, "correct")),
    ("#### 1,000", "1000", (1.0, "correct")),
    ("#### $1000.0", "Natalia sold 1,000 clips.\n#### 1,000", (1.0, "correct")),
    ("#### 72.", 72, (1.0, "correct")),
    ("#### -3", "-3", (1.0, "correct")),
    ("#### 71", "72", (0.0, "wrong")),
    ("#### 72.5", "72", (0.0, "wrong")),
    ("#### 7 then #### 72", "72", (1.0, "correct")),  # the last one counts
    ("The answer is 72.", "72", (0.0, "no_answer")),  # strict: no ####
    ("#### seventy-two", "72", (0.0, "no_answer")),
])
def test_gsm8k_compares_the_hash_answer_as_a_number(response: str, truth: object,
                                                    expected: tuple[float, str]) -> None:
    assert scored(ask("gsm8k", response, truth)) == expected


def test_gsm8k_flexible_takes_the_last_number_and_bad_truth_raises() -> None:
    flexible = RewardTerm(name="gsm8k", options={"flexible": True})
    assert scored(ask(flexible, "3 * 24 = 72, so she pays 72.", "72")) == (1.0, "correct")
    assert scored(ask(flexible, "no idea", "72")) == (0.0, "no_answer")
    with pytest.raises(ValueError, match="does not end in a number"):
        ask("gsm8k", "#### 1", "#### many")


def test_exact_matches_the_stripped_response() -> None:
    assert scored(ask("exact", "  Paris\n", "Paris")) == (1.0, "correct")
    assert scored(ask("exact", "paris", "Paris")) == (0.0, "wrong")
    assert scored(ask(RewardTerm(name="exact", options={"ignore_case": True}), "paris",
                      "Paris")) == (1.0, "correct")
    assert scored(ask("exact", "42", 42)) == (1.0, "correct")


def test_regex_extracts_the_answer_with_the_recipes_pattern() -> None:
    regex = RewardTerm(name="regex", options={"pattern": r"Answer:\s*(\S+)"})
    assert scored(ask(regex, "Answer: 4\nno wait. Answer: 5", "5")) == (1.0, "correct")
    assert scored(ask(regex, "Answer: 4", "5")) == (0.0, "wrong")
    assert scored(ask(regex, "5", "5")) == (0.0, "no_answer")
    named = RewardTerm(name="regex", options={"pattern": r"(=+)\s*(?P<answer>\w+)"})
    assert scored(ask(named, "== 5", "5")) == (1.0, "correct")


def test_format_rewards_the_expected_form_whatever_the_answer() -> None:
    assert scored(ask("format", r"\boxed{anything}")) == (1.0, "formatted")
    assert scored(ask("format", r"\boxed{ }")) == (0.0, "unformatted")
    think = RewardTerm(name="format", options={"pattern": r"(?s)<think>.*</think>.+",
                                               "fullmatch": True})
    assert scored(ask(think, "<think>hmm</think> 5")) == (1.0, "formatted")
    assert scored(ask(think, "5 <think>hmm</think> 5")) == (0.0, "unformatted")


def test_weighted_terms_sum_and_each_is_recorded_in_the_details() -> None:
    terms = (RewardTerm(name="math"), RewardTerm(name="format", weight=0.1),
             RewardTerm(name="exact", weight=0.0, label="verbatim"))
    out = ask(terms, r"\boxed{5}")
    assert out.reward == pytest.approx(1.1)
    assert out.details == {"math": 1.0, "math.parsed": 1.0, "format": 1.0, "verbatim": 0.0}
    assert out.status == "math: correct; format: formatted; verbatim: wrong"
    out = ask(terms, r"\boxed{4}")
    assert out.reward == pytest.approx(0.1) and out.details["math"] == 0.0
    assert ask(RewardTerm(name="format", weight=-1.0), "no box").reward == 0.0
    assert ask(RewardTerm(name="format", weight=-1.0), r"\boxed{1}").reward == -1.0


def test_data_source_picks_the_reward_per_row_with_a_default() -> None:
    fn = build_reward("math", {"openai/gsm8k": "gsm8k", "trivia": (RewardTerm(name="exact"),)})
    assert scored(fn(sample("#### 5", data_source="openai/gsm8k"))) == (1.0, "correct")
    assert scored(fn(sample("#### 5", data_source="lighteval/MATH"))) == (0.0, "no_boxed")
    assert scored(fn(sample(r"\boxed{5}", data_source="openai/gsm8k"))) == (0.0, "no_answer")
    assert scored(fn(sample(r"\boxed{5}"))) == (1.0, "correct")  # no data_source: the default
    assert scored(fn(sample(" 5 ", data_source="trivia"))) == (1.0, "correct")


def test_a_failing_term_names_itself() -> None:
    terms = (RewardTerm(name="format"), RewardTerm(name="math", label="answer"))
    with pytest.raises(RuntimeError, match=r"answer: ValueError: .*no metadata\['ground_truth'"):
        build_reward(terms, {})(RewardInput(
            prompt_id="p-1", prompt_text=None, prompt_tokens=np.zeros(1, np.int32),
            response_text="x", response_tokens=np.zeros(1, np.int32), finish_reason="stop",
            metadata={}))


def recipe(tmp_path: Path, rollout_lines: str) -> Path:
    """tests/run/tiny.toml with its reward line replaced by `rollout_lines`."""
    text = TINY.read_text()
    old = 'reward = "tests.run.tiny_task:reward"'
    assert old in text
    path = tmp_path / "recipe.toml"
    path.write_text(text.replace(old, rollout_lines))
    return path


@pytest.mark.parametrize(("lines", "message"), [
    ('reward = "mth"', r"rollout.reward: unknown reward 'mth', neither a built-in name nor an "
                       r"import path .*did you mean 'math'\? known: exact, format, gsm8k, "
                       r"math, regex"),
    ('reward = [{ name = "math" }, { name = "fromat", weight = 0.1 }]',
     r"rollout.reward\[1\]: unknown reward 'fromat'.*did you mean 'format'"),
    ('reward = "math"\nreward_by_source = { "openai/gsm8k" = "gsm9k" }',
     r"rollout.reward_by_source\['openai/gsm8k'\]: unknown reward 'gsm9k'"),
    ('reward = { name = "regex", options = { patern = "x" } }',
     r"options of reward 'regex': Object contains unknown field `patern`"),
    ('reward = { name = "regex" }', r"options of reward 'regex': Object missing required field "
                                    r"`pattern`"),
    ("reward = { name = \"regex\", options = { pattern = '(unclosed' } }",
     r"pattern '\(unclosed' does not compile"),
    ('reward = { name = "tests.run.tiny_task:reward", options = { x = 1 } }',
     r"is a function and takes no options"),
    ('reward = [{ name = "format" }, { name = "format", weight = 2.0 }]',
     r"two terms are labelled 'format'.*give one of them a `label`"),
    ('reward = []', r"rollout.reward is an empty list"),
    ('reward = "tests.run.tiny_task:rewardd"', r"has no attribute 'rewardd'"),
    ('reward = "math"\nreward_timeout_s = 0', r"reward_timeout_s \(0.0\) must be a positive"),
    ('reward = "math"\nreward_workers = 0', r"reward_workers \(0\) must be at least 1"),
])
def test_bad_reward_settings_fail_at_load_naming_the_field(tmp_path: Path, lines: str,
                                                           message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe(tmp_path, lines))


def test_names_import_paths_and_lists_load(tmp_path: Path) -> None:
    config, hooks = load_recipe(recipe(tmp_path, 'reward = "tests.run.tiny_task:reward"'))
    assert hooks.reward(sample("3", answer="3")).reward == 1.0  # a user's path as before
    config, hooks = load_recipe(recipe(
        tmp_path, 'reward = [{ name = "gsm8k" }, { name = "format", weight = 0.5, options = '
                  '{ pattern = "####" } }]\nreward_by_source = { exam = "exact" }'))
    assert config.rollout.reward == (RewardTerm(name="gsm8k"),
                                     RewardTerm(name="format", weight=0.5,
                                                options={"pattern": "####"}))
    assert hooks.reward(sample("#### 5")).reward == 1.5
    assert hooks.reward(sample("5", data_source="exam")).reward == 1.0
