"""Building policies from recipes: import paths, options, and the errors a typo gets."""

from __future__ import annotations

import msgspec
import pytest

from streamrl.staleness import (
    AdmissionControl,
    ImportanceWeighted,
    MaxLag,
    StalenessConfig,
    StalenessError,
    Synchronous,
    TimeWindow,
    build_policy,
)


def build(policy: str, **options):
    return build_policy(StalenessConfig(policy=policy, options=options))


@pytest.mark.parametrize("path, options, expected", [
    ("streamrl.staleness:MaxLag", {"max_lag": 2, "on_stale": "requeue"},
     MaxLag(max_lag=2, on_stale="requeue")),
    ("streamrl.staleness:AdmissionControl", {"max_staleness": 4},
     AdmissionControl(max_staleness=4)),
    ("streamrl.staleness:ImportanceWeighted", {"max_lag": None, "decay": 0.9},
     ImportanceWeighted(decay=0.9)),
    ("streamrl.staleness.policies:TimeWindow", {"window_s": 30}, TimeWindow(window_s=30.0)),
    ("streamrl.staleness:Synchronous", {}, Synchronous()),
    ("streamrl.staleness:MaxLag", {"max_lag": 1, "whole_group": False},
     MaxLag(max_lag=1, whole_group=False)),
])
def test_builds_each_policy_by_import_path(path, options, expected):
    assert build(path, **options) == expected


def test_the_default_config_builds_admission_control():
    assert build_policy(StalenessConfig()) == AdmissionControl(max_staleness=1)


def test_a_built_policy_round_trips_through_its_recorded_options():
    # A run records the policy's fields; replay or `--staleness` re-builds it from them.
    policy = ImportanceWeighted(max_lag=3, decay=0.8)
    assert build("streamrl.staleness:ImportanceWeighted",
                 **msgspec.to_builtins(policy)) == policy


def test_an_option_typo_names_the_option_and_suggests_the_fix():
    with pytest.raises(StalenessError) as error:
        build("streamrl.staleness:MaxLag", max_lagg=2)
    message = str(error.value)
    assert "'max_lagg'" in message and "did you mean 'max_lag'" in message
    assert "max_lag (required), on_stale (optional), whole_group (optional)" in message
    with pytest.raises(StalenessError, match="no option 'window'"):
        build("streamrl.staleness:TimeWindow", window=5)


def test_a_missing_or_ill_typed_option_is_named():
    with pytest.raises(StalenessError, match=r"needs option\(s\) \['max_lag'\]"):
        build("streamrl.staleness:MaxLag")
    with pytest.raises(StalenessError, match=r"Expected `int`, got `str` - at `\$.max_lag`"):
        build("streamrl.staleness:MaxLag", max_lag="2")
    with pytest.raises(StalenessError, match=r"on_stale"):
        build("streamrl.staleness:MaxLag", max_lag=1, on_stale="discard")
    with pytest.raises(StalenessError, match="decay must be in"):
        build("streamrl.staleness:ImportanceWeighted", decay=2.0)


@pytest.mark.parametrize("path, message", [
    ("streamrl.staleness:MaxLagg", "has no attribute 'MaxLagg'"),
    ("streamrl.stalenes:MaxLag", "cannot import module 'streamrl.stalenes'"),
    ("streamrl.staleness.MaxLag", "is not an import path"),
    ("streamrl.staleness:Verdict", "expected StalenessPolicy"),
    ("streamrl.staleness:build_policy", "expected StalenessPolicy"),
])
def test_an_unknown_policy_path_says_what_is_wrong(path, message):
    with pytest.raises(StalenessError, match=message) as error:
        build(path)
    assert path in str(error.value)


def test_a_custom_policy_is_built_like_the_built_in_ones():
    policy = build("tests.staleness.crafted:DropOddVersions", requeue_from=3)
    assert type(policy).__name__ == "DropOddVersions" and policy.requeue_from == 3
    with pytest.raises(StalenessError, match="did you mean 'requeue_from'"):
        build("tests.staleness.crafted:DropOddVersions", requeue_form=3)


def test_configs_are_frozen_and_refuse_unknown_fields():
    config = msgspec.convert({"policy": "streamrl.staleness:MaxLag", "options": {"max_lag": 1}},
                             StalenessConfig)
    with pytest.raises(AttributeError):
        config.policy = "x"  # type: ignore[misc]
    with pytest.raises(msgspec.ValidationError, match="unknown field `option`"):
        msgspec.convert({"policy": "streamrl.staleness:MaxLag", "option": {}}, StalenessConfig)
    with pytest.raises(AttributeError):
        MaxLag(max_lag=1).max_lag = 2  # type: ignore[misc]
