"""Operating points: thresholds chosen on validation by hand-checkable rules, and what they reach elsewhere."""

import json

import numpy as np
import pytest

from cxr.errors import UserError
from cxr.evaluation.operating_points import (
    DEFAULT_TARGET,
    MIN_POSITIVES,
    choose_thresholds,
    default_targets,
    evaluate_at_thresholds,
    parse_targets,
)
from cxr.inference.points import check_classes, decide, describe

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


def _validation_with_twenty_positives():
    """20 COVID positives scored 0.05, 0.10, ..., 1.00 and 4 Normal images scored 0.00, 0.08, 0.12, 0.30."""
    covid = np.concatenate([np.arange(1, 21) / 20, [0.0, 0.08, 0.12, 0.3]])
    truth = np.array([0] * 20 + [1] * 4)
    return truth, np.column_stack([covid, 1 - covid])


def _one_class_points(scores, target, negatives=(0.0,)):
    """Points for class "A" of ["A", "B"] from positives with `scores` and negatives with `negatives`."""
    covid = np.concatenate([scores, negatives])
    truth = np.array([0] * len(scores) + [1] * len(negatives))
    return choose_thresholds(truth, np.column_stack([covid, 1 - covid]), ["A", "B"], {"A": target})


def test_defaults_target_every_class_but_normal():
    assert (DEFAULT_TARGET, MIN_POSITIVES) == (0.95, 20)
    assert default_targets(CLASSES) == {"COVID": 0.95, "Viral Pneumonia": 0.95}
    assert default_targets(["NORMAL", "Covid", "normal pneumonia"]) == {"Covid": 0.95, "normal pneumonia": 0.95}


def test_the_threshold_is_the_highest_that_reaches_the_target_sensitivity():
    truth, probabilities = _validation_with_twenty_positives()
    points = choose_thresholds(truth, probabilities, ["COVID", "Normal"], {"COVID": 0.95})
    # ceil(0.95 * 20) = 19: the 19th highest score, which 19 of the 20 positives reach.
    assert points["classes"]["COVID"] == {
        "target_sensitivity": 0.95, "threshold": 0.1, "sensitivity": 0.95, "specificity": 0.5,
        "positives": 20, "negatives": 4, "reliable": True, "note": None,
    }
    assert points["chosen_on"] == "val" and points["min_positives"] == 20
    assert points["classes_order"] == ["COVID", "Normal"] and "highest threshold" in points["rule"]

    every = choose_thresholds(truth, probabilities, ["COVID", "Normal"], {"COVID": 1.0})["classes"]["COVID"]
    assert (every["threshold"], every["sensitivity"], every["specificity"]) == (0.05, 1.0, 0.25)  # the lowest positive
    ninety = choose_thresholds(truth, probabilities, ["COVID", "Normal"], {"COVID": 0.9})["classes"]["COVID"]
    assert (ninety["threshold"], ninety["sensitivity"], ninety["specificity"]) == (0.15, 0.9, 0.75)
    top = choose_thresholds(truth, probabilities, ["COVID", "Normal"], {"COVID": 0.01})["classes"]["COVID"]
    assert (top["threshold"], top["sensitivity"]) == (1.0, 0.05)  # ceil(0.2) = 1: the highest positive


def test_float_error_in_target_times_positives_does_not_cost_a_rank():
    # 0.28 * 25 is 7.000000000000001 in floats: a plain ceil would take the 8th highest score, not the 7th.
    point = _one_class_points(np.arange(1, 26) / 25, target=0.28)["classes"]["A"]
    assert (point["threshold"], point["sensitivity"]) == (19 / 25, 7 / 25)


def test_ties_among_positives_report_the_sensitivity_actually_reached():
    point = _one_class_points([0.9, 0.8, 0.8, 0.8, 0.2], target=0.5)["classes"]["A"]
    # ceil(2.5) = 3rd highest is 0.8, and at 0.8 four of five positives are called positive.
    assert (point["threshold"], point["sensitivity"]) == (0.8, 0.8)


def test_fewer_than_twenty_positives_still_give_a_threshold_marked_unreliable():
    point = _one_class_points([0.9, 0.7, 0.6] * 4, target=0.95)["classes"]["A"]
    assert point["threshold"] == 0.6 and point["sensitivity"] == 1.0 and point["reliable"] is False
    assert point["note"] == ("only 12 validation positives: the sensitivity reached on validation is too uncertain "
                             "to rely on (fewer than 20)")
    single = _one_class_points([0.4], target=0.95)["classes"]["A"]
    assert single["threshold"] == 0.4 and single["note"].startswith("only 1 validation positive:")
    nineteen = _one_class_points(np.arange(1, 20) / 20, target=0.95)["classes"]["A"]
    assert nineteen["reliable"] is False and nineteen["positives"] == 19


def test_a_class_without_validation_positives_gets_no_threshold():
    truth = np.array([0, 0, 1])
    probabilities = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    points = choose_thresholds(truth, probabilities, CLASSES, default_targets(CLASSES))
    assert list(points["classes"]) == ["COVID", "Viral Pneumonia"]  # Normal has no default target
    viral = points["classes"]["Viral Pneumonia"]
    assert viral["threshold"] is None and viral["sensitivity"] is None and viral["reliable"] is False
    assert viral["positives"] == 0 and viral["negatives"] == 3 and "no validation positives" in viral["note"]
    assert json.loads(json.dumps(points, allow_nan=False)) == points


def test_choose_thresholds_refuses_unknown_classes_and_bad_targets():
    truth, probabilities = _validation_with_twenty_positives()
    with pytest.raises(UserError, match="unknown class 'Flu'.*COVID, Normal"):
        choose_thresholds(truth, probabilities, ["COVID", "Normal"], {"Flu": 0.9})
    with pytest.raises(UserError, match=r"not a sensitivity in \(0, 1\]"):
        choose_thresholds(truth, probabilities, ["COVID", "Normal"], {"COVID": 1.5})


def test_parse_targets_overrides_and_adds_to_the_defaults():
    assert parse_targets(None, CLASSES) == parse_targets("", CLASSES) == parse_targets("  ", CLASSES) == {
        "COVID": 0.95, "Viral Pneumonia": 0.95}
    assert parse_targets("COVID=0.97, Viral Pneumonia = 0.9", CLASSES) == {"COVID": 0.97, "Viral Pneumonia": 0.9}
    added = parse_targets("Normal=0.9,COVID=1,", CLASSES)
    assert added == {"COVID": 1.0, "Normal": 0.9, "Viral Pneumonia": 0.95}
    assert list(added) == CLASSES  # model class order, whatever the order of the setting
    assert parse_targets("normal=0.8", CLASSES)["Normal"] == 0.8
    assert parse_targets("a=b=0.9", ["a=b", "c"]) == {"a=b": 0.9, "c": 0.95}  # split on the last "="


@pytest.mark.parametrize("text, message", [
    ("COVID", r"operating point 'COVID': expected CLASS=TARGET"),
    ("=0.9", r"operating point '=0.9': expected CLASS=TARGET"),
    ("COVID=high", r"'COVID=high': target 'high' is not a sensitivity in \(0, 1\]; expected CLASS=TARGET"),
    ("COVID=0", r"target '0' is not a sensitivity in \(0, 1\]"),
    ("COVID=1.5", r"target '1.5' is not a sensitivity"),
    ("COVID=nan", r"target 'nan' is not a sensitivity"),
    ("COVID=", r"target '' is not a sensitivity"),
    ("Flu=0.9", r"unknown class 'Flu'; the model's classes are: COVID, Normal, Viral Pneumonia"),
    ("COVID=0.9,covid=0.8", r"'covid=0.8': class 'COVID' is given twice"),
])
def test_parse_targets_names_the_bad_item(text, message):
    with pytest.raises(UserError, match=message):
        parse_targets(text, CLASSES)


# Test set for COVID at threshold 0.5: positives 0.9, 0.7, 0.6 | 0.3 (TP 3, FN 1); negatives 0.8, 0.55 | 0.2, 0.1,
# 0.4, 0.05 (FP 2, TN 4): sensitivity 3/4, specificity 4/6, PPV 3/5, NPV 4/5.
TEST_TRUTH = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
TEST_COVID = np.array([0.9, 0.7, 0.6, 0.3, 0.8, 0.2, 0.1, 0.4, 0.55, 0.05])


def _covid_points():
    """COVID at threshold 0.5 (target 1.0, the lowest of its validation positives); Viral Pneumonia at 0.6."""
    truth = np.array([0, 0, 2, 2, 1])
    covid = np.array([0.5, 0.9, 0.1, 0.2, 0.3])
    viral = np.array([0.1, 0.0, 0.6, 0.8, 0.3])
    probabilities = np.column_stack([covid, 1 - covid - viral, viral])
    return choose_thresholds(truth, probabilities, CLASSES, {"COVID": 1.0, "Viral Pneumonia": 1.0})


def _test_probabilities(truth_covid, viral):
    return np.column_stack([truth_covid, 1 - truth_covid - viral, viral])


def test_evaluate_at_thresholds_matches_hand_computed_values():
    points = _covid_points()
    assert points["classes"]["COVID"]["threshold"] == 0.5
    viral = np.array([0.0, 0.1, 0.0, 0.3, 0.1, 0.7, 0.5, 0.2, 0.3, 0.8])
    result = evaluate_at_thresholds(TEST_TRUTH, _test_probabilities(TEST_COVID, viral), CLASSES, points,
                                    n_resamples=0)
    assert result["bootstrap"] == {"resamples": 0, "seed": 0, "level": 0.95, "stratified": True, "unit": "image"}
    covid = result["classes"]["COVID"]
    assert (covid["threshold"], covid["positives"], covid["negatives"], covid["predicted_positive"]) == (0.5, 4, 6, 5)
    expected = {"sensitivity": 3 / 4, "specificity": 4 / 6, "ppv": 3 / 5, "npv": 4 / 5}
    for metric, value in expected.items():
        assert covid[metric] == {"value": pytest.approx(value), "ci_low": None, "ci_high": None}, metric
    assert covid["target_sensitivity"] == 1.0 and covid["reliable"] is False
    # Viral Pneumonia at 0.6: positives 0.8 | 0.2, 0.3 (TP 1, FN 2); negatives 0.7 | the other six (FP 1, TN 6).
    viral_result = result["classes"]["Viral Pneumonia"]
    assert viral_result["predicted_positive"] == 2
    assert {m: viral_result[m]["value"] for m in expected} == pytest.approx(
        {"sensitivity": 1 / 3, "specificity": 6 / 7, "ppv": 1 / 2, "npv": 6 / 8})
    assert "Normal" not in result["classes"]


def test_bootstrap_intervals_bracket_the_value_and_are_reproducible():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 200)
    covid = np.clip(rng.normal(0.3, 0.2, 200) + 0.4 * (truth == 0), 0, 1)
    viral = np.clip(rng.normal(0.4, 0.2, 200) + 0.3 * (truth == 2), 0, 1 - covid)
    probabilities = _test_probabilities(covid, viral)
    result = evaluate_at_thresholds(truth, probabilities, CLASSES, _covid_points(), n_resamples=200, seed=3)
    assert result == evaluate_at_thresholds(truth, probabilities, CLASSES, _covid_points(), n_resamples=200, seed=3)
    assert result != evaluate_at_thresholds(truth, probabilities, CLASSES, _covid_points(), n_resamples=200, seed=4)
    for name in ("COVID", "Viral Pneumonia"):
        for metric in ("sensitivity", "specificity", "ppv", "npv"):
            entry = result["classes"][name][metric]
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], (name, metric)
            assert 0 < entry["ci_high"] - entry["ci_low"] < 0.3, (name, metric)
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_a_class_absent_from_the_evaluated_set_has_no_sensitivity_but_a_specificity():
    truth = np.array([0, 0, 0, 1, 1, 1])  # external data without Viral Pneumonia
    covid = np.array([0.9, 0.7, 0.3, 0.2, 0.6, 0.1])
    viral = np.array([0.0, 0.1, 0.65, 0.1, 0.2, 0.3])  # one false positive at 0.6
    result = evaluate_at_thresholds(truth, _test_probabilities(covid, viral), CLASSES, _covid_points(),
                                    n_resamples=100, seed=1)
    viral_result = result["classes"]["Viral Pneumonia"]
    assert (viral_result["positives"], viral_result["negatives"], viral_result["predicted_positive"]) == (0, 6, 1)
    assert viral_result["sensitivity"] == {"value": None, "ci_low": None, "ci_high": None}
    assert viral_result["specificity"]["value"] == pytest.approx(5 / 6)
    assert viral_result["npv"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    # Resamples without the false positive have no PPV; the interval comes from the others.
    assert viral_result["ppv"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    covid_result = result["classes"]["COVID"]
    assert covid_result["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert covid_result["ppv"]["value"] == pytest.approx(2 / 3)


def test_classes_without_a_threshold_are_left_out_of_evaluation_and_decisions():
    truth = np.array([0, 0, 1])
    probabilities = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    points = choose_thresholds(truth, probabilities, CLASSES, default_targets(CLASSES))
    assert list(evaluate_at_thresholds(truth, probabilities, CLASSES, points, n_resamples=10)["classes"]) == ["COVID"]
    assert list(decide(probabilities, points)[0]) == ["COVID"]


def test_evaluate_refuses_points_of_another_model():
    with pytest.raises(UserError, match="chosen for a model with classes COVID, Normal, Viral Pneumonia"):
        evaluate_at_thresholds(TEST_TRUTH, np.zeros((10, 3)), ["Normal", "COVID", "Viral Pneumonia"],
                               _covid_points(), n_resamples=0)


def test_decide_calls_each_class_against_its_threshold():
    points = _covid_points()  # COVID at 0.5 (columns 0), Viral Pneumonia at 0.6 (column 2)
    probabilities = np.array([[0.5, 0.2, 0.3], [0.3, 0.1, 0.6], [0.49, 0.5, 0.01]])
    decisions = decide(probabilities, points)
    assert [{name: call["positive"] for name, call in image.items()} for image in decisions] == [
        {"COVID": True, "Viral Pneumonia": False},  # p == threshold is positive
        {"COVID": False, "Viral Pneumonia": True},
        {"COVID": False, "Viral Pneumonia": False},
    ]
    assert decisions[0]["COVID"] == {"positive": True, "threshold": 0.5, "sensitivity_on_validation": 1.0,
                                     "validation_positives": 2, "reliable": False}
    assert decide(probabilities[1], points) == decisions[1:2]  # one image as a 1-D row
    with pytest.raises(UserError, match="do not fit operating points for 3 classes"):
        decide(np.zeros((2, 2)), points)


def test_describe_says_the_call_the_threshold_and_the_validation_sensitivity():
    truth, probabilities = _validation_with_twenty_positives()
    points = choose_thresholds(truth, probabilities, ["COVID", "Normal"], {"COVID": 0.95})
    negative, positive = decide(np.array([[0.05, 0.95], [0.1, 0.9]]), points)
    assert describe(negative["COVID"]) == "negative at threshold 0.100 (sensitivity 0.950 on validation)"
    assert describe(positive["COVID"]) == "positive at threshold 0.100 (sensitivity 0.950 on validation)"
    unreliable = decide(np.array([0.9, 0.05, 0.05]), _covid_points())[0]["COVID"]
    assert describe(unreliable) == ("positive at threshold 0.500 (sensitivity 1.000 on validation, "
                                    "from only 2 positives: unreliable)")
    near_one = {"positive": False, "threshold": 0.99973, "sensitivity_on_validation": 0.95, "reliable": True}
    assert describe(near_one) == "negative at threshold 0.99973 (sensitivity 0.950 on validation)"


def test_check_classes_refuses_operating_points_of_another_model():
    points = _covid_points()
    check_classes(points, list(CLASSES))
    with pytest.raises(UserError, match="classes COVID, Normal, Viral Pneumonia, not this model's Normal, COVID$"):
        check_classes(points, ["Normal", "COVID"])
    with pytest.raises(UserError, match="classes COVID, Normal, Viral Pneumonia, not this model's COVID, Viral"):
        check_classes(points, ["COVID", "Viral Pneumonia", "Normal"])
    with pytest.raises(UserError, match="classes unknown"):
        check_classes({"classes": {}}, CLASSES)


def test_probabilities_that_are_not_finite_are_refused():
    truth = np.array([0, 0, 1, 1])
    probabilities = np.array([[np.nan, np.nan], [0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])  # NaN would sort first
    with pytest.raises(ValueError, match="not finite"):
        choose_thresholds(truth, probabilities, ["A", "B"], {"A": 1.0})
