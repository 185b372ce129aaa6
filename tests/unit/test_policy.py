"""The policy file: defaults, merging, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from driftline.retrainer.policy import (
    ModelPolicy,
    PolicyError,
    SnapshotRange,
    load_policy,
    parse_policy,
)
from driftline.streams.core.drift import DEFAULT_THRESHOLDS

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "policy.example.yaml"


def problems(data: object) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as info:
        parse_policy(data, source="p.yaml")  # type: ignore[arg-type]
    return info.value.problems


# --------------------------------------------------------------------------- defaults


def test_no_file_gives_the_built_in_defaults() -> None:
    policy = load_policy(None)
    assert policy.models == {}
    p = policy.for_model("anything")
    assert p.model_id == "anything"
    assert (p.monitoring.enabled, p.monitoring.window_seconds, p.monitoring.allowed_lateness_seconds) == (True, 60, 10)
    assert p.monitoring.fdr_q == 0.05 and p.monitoring.detectors == ("adwin",)
    # the built-in thresholds are the drift engine's defaults (one source), as docs/POLICY.md lists them
    assert p.thresholds["*"] == DEFAULT_THRESHOLDS["*"]
    assert p.thresholds["*"]["hellinger"] == 0.05 and p.thresholds["*"]["mean_shift"] == 0.1
    assert "psi" not in p.thresholds["*"]
    # a retrain when 2 features drift for 2 consecutive windows ...
    assert (p.drift.enabled, p.drift.metric, p.drift.min_features, p.drift.consecutive_windows) == (
        True,
        "drifted",
        2,
        2,
    )
    # ... or when performance drops significantly against the reference
    assert (p.performance.enabled, p.performance.metric, p.performance.max_drop, p.performance.min_labels) == (
        True,
        "accuracy",
        0.05,
        500,
    )
    assert not p.change_detectors.enabled and not p.schedule.enabled
    assert p.manual.cooldown_minutes == 0
    r = p.retraining
    assert (r.cooldown_minutes, r.hysteresis_windows, r.holdout_fraction, r.trainer) == (30, 3, 0.2, "river-linear")
    assert r.promotion.metric == "accuracy" and r.promotion.min_improvement == 0


def test_built_in_values_have_one_source() -> None:
    # parsing an empty file must give exactly the dataclass defaults
    assert parse_policy({}).defaults == ModelPolicy("*")
    assert parse_policy(None).for_model("m") == ModelPolicy("m")


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("# nothing yet\n")
    assert load_policy(path).for_model("m") == ModelPolicy("m")
    assert load_policy(str(path)).source == str(path)


# --------------------------------------------------------------------------- merging


def test_models_override_defaults_key_by_key() -> None:
    policy = parse_policy(
        {
            "defaults": {"drift": {"min_features": 3}, "retraining": {"cooldown_minutes": 10}},
            "models": {
                "credit": {"drift": {"consecutive_windows": 4}},
                "churn": {"retraining": {"cooldown_minutes": 0}},
            },
        }
    )
    credit, churn, other = (policy.for_model(m) for m in ("credit", "churn", "other"))
    assert (credit.drift.min_features, credit.drift.consecutive_windows) == (3, 4)
    assert credit.retraining.cooldown_minutes == 10
    assert churn.retraining.cooldown_minutes == 0 and churn.drift.consecutive_windows == 2
    assert (other.drift.min_features, other.drift.consecutive_windows, other.model_id) == (3, 2, "other")


def test_thresholds_per_model_per_feature_per_metric() -> None:
    policy = parse_policy(
        {
            "defaults": {"monitoring": {"thresholds": {"*": {"psi": 0.25}, "income": {"psi": 0.3}}}},
            "models": {
                "credit": {
                    "monitoring": {
                        "thresholds": {
                            "*": {"ks": 0.1},
                            "income": {"ks": 0.2, "hellinger": None},
                            "age": {"wasserstein": 2.5},
                        }
                    }
                }
            },
        }
    )
    default = policy.for_model("x").thresholds
    assert default["*"]["psi"] == 0.25 and default["*"]["mean_shift"] == 0.1  # built-in kept
    assert default["income"]["psi"] == 0.3 and default["income"]["mean_shift"] == 0.1
    credit = policy.for_model("credit")
    t = credit.thresholds
    assert t["*"] == {**DEFAULT_THRESHOLDS["*"], "psi": 0.25, "ks": 0.1}  # built-in, then defaults, then the model
    assert t["income"]["psi"] == 0.3 and t["income"]["ks"] == 0.2 and "hellinger" not in t["income"]
    assert t["age"]["wasserstein"] == 2.5 and t["age"]["psi"] == 0.25
    assert credit.threshold("income", "hellinger") is None
    assert credit.threshold("debt", "hellinger") == 0.05
    assert credit.threshold("debt", "wasserstein") is None
    # the thresholds API hands out copies: the policy cannot be changed through it
    t["*"]["psi"] = 99.0
    assert credit.thresholds["*"]["psi"] == 0.25


def test_lists_and_hyperparameters_replace_rather_than_merge() -> None:
    policy = parse_policy(
        {
            "defaults": {
                "monitoring": {"detectors": ["adwin", "page_hinkley"]},
                "retraining": {"hyperparameters": {"epochs": 3, "l2": 0.1}},
            },
            "models": {
                "credit": {
                    "monitoring": {"detectors": ["kswin"]},
                    "retraining": {"hyperparameters": {"epochs": 8}},
                }
            },
        }
    )
    assert policy.for_model("other").monitoring.detectors == ("adwin", "page_hinkley")
    credit = policy.for_model("credit")
    assert credit.monitoring.detectors == ("kswin",)
    assert dict(credit.retraining.hyperparameters) == {"epochs": 8}


def test_a_model_can_turn_a_trigger_off_and_another_on() -> None:
    policy = parse_policy(
        {
            "models": {
                "quiet": {
                    "drift": {"enabled": False},
                    "change_detectors": {"enabled": True, "streams": ["error", "score"], "min_events": 2},
                    "schedule": {"every_hours": 0.5},
                    "manual": {"cooldown_minutes": 5},
                }
            }
        }
    )
    quiet = policy.for_model("quiet")
    assert not quiet.drift.enabled
    assert quiet.change_detectors.enabled and quiet.change_detectors.streams == ("error", "score")
    assert quiet.schedule.period_ms == 1_800_000 and quiet.manual.cooldown_ms == 300_000


def test_example_file_loads_and_says_what_it_claims() -> None:
    policy = load_policy(EXAMPLE)
    credit = policy.for_model("credit")
    assert credit.drift.metric == "psi" and credit.drift.threshold == 0.25 and credit.drift.min_features == 3
    assert credit.thresholds["income"]["psi"] == 0.3 and "new_category_rate" not in credit.thresholds["zip_code"]
    assert credit.performance.limit == 0.70 and credit.retraining.snapshot.since == "last_promotion"
    assert credit.retraining.promotion.metric == "roc_auc"
    houses = policy.for_model("house-prices")
    assert not houses.performance.higher_is_better and houses.schedule.every_hours == 24
    assert not houses.change_detectors.enabled and policy.for_model("other").change_detectors.enabled


def test_docs_show_the_example_file_verbatim() -> None:
    doc = (REPO / "docs" / "POLICY.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    assert EXAMPLE.read_text() in blocks


def test_snapshot_range() -> None:
    hour = 3_600_000
    assert SnapshotRange(lookback_hours=24).range(100 * hour, 99 * hour) == (76 * hour, 100 * hour)
    since = SnapshotRange(since="last_promotion", lookback_hours=24)
    assert since.range(100 * hour, 99 * hour) == (99 * hour, 100 * hour)
    assert since.range(100 * hour, None) == (76 * hour, 100 * hour)  # never promoted: fall back


# --------------------------------------------------------------------------- errors


def test_error_names_the_key_path() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy({"models": {"credit": {"drift": {"min_features": "two"}}}}, source="policy.yaml")
    assert str(info.value) == "policy.yaml: models.credit.drift.min_features: expected a positive integer, got 'two'"
    assert info.value.problems == [("models.credit.drift.min_features", "expected a positive integer, got 'two'")]
    assert isinstance(info.value, ValueError)


def test_unknown_keys_are_errors_with_a_hint() -> None:
    found = dict(
        problems(
            {
                "default": {},
                "models": {"credit": {"drfit": {}, "retraining": {"cooldown_minuts": 5}}},
            }
        )
    )
    assert found["default"].startswith("unknown key (did you mean 'defaults'?)")
    assert found["models.credit.drfit"].startswith("unknown key (did you mean 'drift'?)")
    assert found["models.credit.retraining.cooldown_minuts"].startswith(
        "unknown key (did you mean 'cooldown_minutes'?)"
    )
    assert "known: snapshot, holdout_fraction" in found["models.credit.retraining.cooldown_minuts"]


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(
            {
                "defaults": {
                    "monitoring": {
                        "window_seconds": 0,
                        "fdr_q": 1.5,
                        "thresholds": {"*": {"pis": 0.2}, "age": {"psi": -1}},
                    },
                    "drift": {"consecutive_windows": True, "op": "", "metric": "pis"},
                    "retraining": {
                        "holdout_fraction": 1.0,
                        "trainer": "not a trainer",
                        "hyperparameters": {"lr": float("nan")},
                    },
                },
                "models": {"../etc": {}, "ok": {"performance": {"min_labels": 0}}},
            },
            source="p.yaml",
        )
    paths = [path for path, _ in info.value.problems]
    assert paths == [  # in the order of the file
        "defaults.monitoring.window_seconds",
        "defaults.monitoring.fdr_q",
        "defaults.monitoring.thresholds.*.pis",
        "defaults.monitoring.thresholds.age.psi",
        "defaults.drift.consecutive_windows",
        "defaults.drift.op",
        "defaults.drift.metric",
        "defaults.retraining.holdout_fraction",
        "defaults.retraining.trainer",
        "defaults.retraining.hyperparameters.lr",
        "models.'../etc'",
        "models.ok.performance.min_labels",
    ]
    text = str(info.value)
    assert text.startswith("p.yaml: 12 problems:\n")
    assert "(did you mean 'psi'?)" in text and "quote it in YAML: op: '>'" in text
    assert "expected a positive integer, got True" in text  # a YAML boolean is not a count


def test_the_policy_takes_exactly_the_drift_engines_threshold_keys() -> None:
    from driftline.streams.core.drift import THRESHOLD_KEYS, check_thresholds

    every = {key: 0.5 for key in THRESHOLD_KEYS}
    thresholds = parse_policy({"defaults": {"monitoring": {"thresholds": {"*": every}}}}).for_model("m").thresholds
    assert check_thresholds(thresholds) == {"*": every}
    with pytest.raises(ValueError, match="set fdr_q"):
        check_thresholds({"*": {"ks_alpha": 0.01}})


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ({"version": 2}, "version", "expected 1"),
        ({"models": ["credit"]}, "models", "expected a mapping of model id"),
        ({"models": {"credit": {"drift": None}}}, "models.credit.drift", "to turn a trigger off write enabled: false"),
        ({"defaults": {"drift": {"threshold": 0.3}}}, "defaults.drift.threshold", "metric 'drifted'"),
        ({"defaults": {"performance": {"metric": "lift"}}}, "defaults.performance.metric", "no known direction"),
        ({"defaults": {"performance": {"max_drop": None}}}, "defaults.performance", "needs max_drop, limit or both"),
        (
            {"defaults": {"retraining": {"promotion": {"metric": "lift"}}}},
            "defaults.retraining.promotion.metric",
            "no known direction",
        ),
        (
            {"defaults": {"change_detectors": {"enabled": True, "detectors": ["ddm"]}}},
            "defaults.change_detectors.detectors",
            "a detector must run before it can trigger",
        ),
        (
            {"defaults": {"monitoring": {"detectors": ["adwinn"]}}},
            "defaults.monitoring.detectors",
            "unknown name 'adwinn' (did you mean 'adwin'?)",
        ),
        (
            {"defaults": {"monitoring": {"thresholds": {"*": {"ks": float("inf")}}}}},
            "defaults.monitoring.thresholds.*.ks",
            "a non-negative number",
        ),
        # a per-feature test level would undo Benjamini-Hochberg's false discovery rate: fdr_q is the knob
        (
            {"defaults": {"monitoring": {"thresholds": {"*": {"ks_alpha": 0.01}}}}},
            "defaults.monitoring.thresholds.*.ks_alpha",
            "set fdr_q (monitoring.fdr_q) instead",
        ),
        (
            {"models": {"credit": {"monitoring": {"thresholds": {"income": {"chi2_alpha": 0.01}}}}}},
            "models.credit.monitoring.thresholds.income.chi2_alpha",
            "not a threshold",
        ),
        (
            {"defaults": {"monitoring": {"thresholds": {"my feature": {"psi": "high"}}}}},
            "defaults.monitoring.thresholds.'my feature'.psi",
            "got 'high'",
        ),
        ({"defaults": {"schedule": {"every_hours": 0}}}, "defaults.schedule.every_hours", "a positive number of hours"),
        (
            {"defaults": {"retraining": {"snapshot": {"since": "forever"}}}},
            "defaults.retraining.snapshot.since",
            "expected one of 'lookback', 'last_promotion'",
        ),
        (
            {"defaults": {"retraining": {"hyperparameters": [1, 2]}}},
            "defaults.retraining.hyperparameters",
            "expected a mapping of hyperparameters",
        ),
        ({"defaults": {"drift": {"features": []}}}, "defaults.drift.features", "at least one name"),
    ],
)
def test_invalid_values(data: dict, path: str, message: str) -> None:
    found = problems(data)
    assert [p for p, _ in found] == [path], found
    assert message in found[0][1]


def test_a_bad_default_is_reported_once_not_per_model() -> None:
    found = problems({"defaults": {"performance": {"metric": "lift"}}, "models": {"a": {}, "b": {}}})
    assert [p for p, _ in found] == ["defaults.performance.metric"]
    # ... but a model that brings its own problem is told so
    found = problems({"models": {"a": {"performance": {"metric": "lift"}}, "b": {}}})
    assert [p for p, _ in found] == ["models.a.performance.metric"]


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("defaults:\n  drift: {min_features: 2\n")
    with pytest.raises(PolicyError, match=r"broken.yaml: not valid YAML"):
        load_policy(broken)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- a\n- b\n")
    with pytest.raises(PolicyError, match="expected a mapping with keys version, defaults, models"):
        load_policy(not_mapping)


def test_unquoted_op_in_yaml_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("defaults:\n  drift:\n    metric: psi\n    op: >\n    threshold: 0.2\n")
    # a bare ">" starts a folded string, here an empty one: YAML itself hides the mistake
    assert yaml.safe_load(path.read_text())["defaults"]["drift"]["op"] == ""
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.problems[0][0] == "defaults.drift.op"
    assert "quote it in YAML: op: '>'" in str(info.value)


def test_policies_are_frozen() -> None:
    p = load_policy(None).for_model("m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.drift = p.drift  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.monitoring.thresholds["*"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        load_policy(None).models["x"] = p  # type: ignore[index]


# --------------------------------------------------------------------------- data quality, multivariate, trend


def test_the_alarm_class_triggers_and_their_defaults() -> None:
    p = load_policy(None).for_model("m")
    assert (p.data_quality.enabled, p.data_quality.min_features, p.data_quality.consecutive_windows) == (False, 1, 2)
    assert p.data_quality.metrics == ("missing_rate", "new_category_rate", "out_of_range_rate")
    assert (p.multivariate.enabled, p.multivariate.consecutive_windows) == (True, 2)
    assert p.multivariate.metrics == ("reconstruction_error", "correlation_change")
    assert (p.trend.enabled, p.trend.min_features, p.trend.consecutive_windows, p.trend.features) == (True, 1, 2, None)
    example = load_policy(EXAMPLE)
    assert example.for_model("other").data_quality.enabled
    assert example.for_model("credit").data_quality.metrics == ("missing_rate", "out_of_range_rate")
    assert example.for_model("house-prices").trend.features == ("__prediction__",)
    assert example.for_model("credit").trend.features is None


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        (
            {"defaults": {"data_quality": {"metrics": ["missing_rte"]}}},
            "defaults.data_quality.metrics",
            "unknown name 'missing_rte' (did you mean 'missing_rate'?)",
        ),
        ({"defaults": {"data_quality": {"metrics": ["psi"]}}}, "defaults.data_quality.metrics", "known: missing_rate"),
        ({"models": {"c": {"data_quality": {"min_features": 0}}}}, "models.c.data_quality.min_features", "positive"),
        ({"defaults": {"data_quality": {"features": []}}}, "defaults.data_quality.features", "at least one name"),
        ({"defaults": {"data_quality": "on"}}, "defaults.data_quality", "expected a mapping"),
        (
            {"defaults": {"multivariate": {"metrics": ["correlation"]}}},
            "defaults.multivariate.metrics",
            "(did you mean 'correlation_change'?)",
        ),
        ({"defaults": {"multivariate": {"min_features": 2}}}, "defaults.multivariate.min_features", "unknown key"),
        ({"defaults": {"multivariate": {"enabled": "yes"}}}, "defaults.multivariate.enabled", "got 'yes'"),
        ({"models": {"c": {"trend": {"consecutive_windows": 0}}}}, "models.c.trend.consecutive_windows", "positive"),
        (
            {"defaults": {"trend": {"min_feature": 2}}},
            "defaults.trend.min_feature",
            "(did you mean 'min_features'?)",
        ),
    ],
)
def test_invalid_alarm_class_triggers(data: dict, path: str, message: str) -> None:
    found = problems(data)
    assert [p for p, _ in found] == [path], found
    assert message in found[0][1]
