"""Clinical metrics against values computed by hand, and the bootstrap's promises."""

import math

import numpy as np
import pytest

from cxr.evaluation.metrics import bootstrap_intervals, clinical_metrics, point_metrics, stratified_resamples

# Six cases, four classes; class 3 has no positives (and is never predicted).
TRUTH = np.array([0, 0, 0, 1, 1, 2])
PROBABILITIES = np.array([
    [0.7, 0.1, 0.1, 0.1],  # 0 -> 0
    [0.6, 0.2, 0.1, 0.1],  # 0 -> 0
    [0.3, 0.5, 0.1, 0.1],  # 0 -> 1
    [0.2, 0.6, 0.1, 0.1],  # 1 -> 1
    [0.1, 0.3, 0.5, 0.1],  # 1 -> 2
    [0.1, 0.1, 0.7, 0.1],  # 2 -> 2
])


def test_point_metrics_match_hand_computed_values():
    m = point_metrics(TRUTH, PROBABILITIES)
    expected = {
        "accuracy": 4 / 6, "balanced_accuracy": (2 / 3 + 0.5 + 1) / 3, "cohen_kappa": 0.5,
        "sensitivity/0": 2 / 3, "sensitivity/1": 0.5, "sensitivity/2": 1.0,
        "specificity/0": 1.0, "specificity/1": 0.75, "specificity/2": 0.8, "specificity/3": 1.0,
        "precision/0": 1.0, "precision/1": 0.5, "precision/2": 0.5,
        "f1/0": 0.8, "f1/1": 0.5, "f1/2": 2 / 3,
        "roc_auc/0": 1.0, "roc_auc/1": 7 / 8, "roc_auc/2": 1.0,
        "pr_auc/1": 0.5 * 1 + 0.5 * (2 / 3),
        "macro/specificity": (1 + 0.75 + 0.8 + 1) / 4,
        "weighted/specificity": (3 * 1 + 2 * 0.75 + 1 * 0.8) / 6,
        "macro/sensitivity": (2 / 3 + 0.5 + 1) / 3,
    }
    for name, value in expected.items():
        assert m[name] == pytest.approx(value), name


def test_a_class_without_positives_has_undefined_not_zero_metrics():
    m = point_metrics(TRUTH, PROBABILITIES)
    for name in ("sensitivity/3", "precision/3", "f1/3", "roc_auc/3", "pr_auc/3"):
        assert math.isnan(m[name]), name


def test_a_class_the_model_never_predicts_has_precision_zero_in_every_average_and_resample():
    from sklearn.metrics import precision_score

    # 100 cases of 4 classes; none of class 3's ten is found, and one class-0 image is called class 3.
    truth = np.repeat([0, 1, 2, 3], [40, 30, 20, 10])
    predicted = np.where(truth == 3, 0, truth)
    predicted[:5], predicted[5] = 1, 3
    probabilities = np.full((100, 4), 0.1)
    probabilities[np.arange(100), predicted] = 0.7
    missed = np.where(np.arange(100) == 5, 0, predicted)  # class 3 never predicted at all
    m = point_metrics(truth, np.eye(4)[missed])
    assert m["precision/3"] == 0.0
    assert m["macro/precision"] == pytest.approx(precision_score(truth, missed, average="macro", zero_division=0))
    assert m["weighted/precision"] == pytest.approx(precision_score(truth, missed, average="weighted",
                                                                    zero_division=0))
    # Resamples without image 5 (about a third) never predict class 3: its precision stays 0, not undefined,
    # so the interval does not stretch upwards to averages over three classes (0.910 before).
    low, high = bootstrap_intervals(truth, probabilities, n_resamples=300, seed=0)["macro/precision"]
    point = point_metrics(truth, probabilities)["macro/precision"]
    assert point == pytest.approx(0.6575, abs=5e-5) and low <= point <= high, (low, high)
    assert high < 0.75, (low, high)


def test_stratified_resamples_keep_class_counts_and_are_reproducible():
    truth = np.array([0] * 5 + [1] * 3 + [2] * 2)
    rows = stratified_resamples(truth, 50, seed=7)
    assert rows.shape == (50, 10)
    for sample in rows:
        assert np.bincount(truth[sample]).tolist() == [5, 3, 2]
    np.testing.assert_array_equal(rows, stratified_resamples(truth, 50, seed=7))
    assert not np.array_equal(rows, stratified_resamples(truth, 50, seed=8))


def test_copies_are_resampled_together_and_a_set_without_copies_is_resampled_as_before():
    truth = np.array([0] * 6 + [1] * 4)
    before = stratified_resamples(truth, 40, 3)
    for alone in (np.arange(10), np.full(10, -1)):  # every image its own group, or groups unknown
        np.testing.assert_array_equal(stratified_resamples(truth, 40, 3, alone), before)
    pairs = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])  # class 0: three pairs; class 1: two pairs
    for rows in stratified_resamples(truth, 200, 5, pairs):
        assert np.bincount(truth[rows]).tolist() == [6, 4]
        drawn = np.bincount(rows, minlength=10)
        assert (drawn[0::2] == drawn[1::2]).all()  # a copy comes with its twin (each class's count is even)


def test_an_interval_is_not_narrowed_by_copies_of_the_same_radiographs():
    truth, probabilities = _noisy_set(200)
    unique = bootstrap_intervals(truth, probabilities, 500, 0)["accuracy"]
    twice = np.concatenate([truth, truth]), np.concatenate([probabilities, probabilities])
    naive = bootstrap_intervals(*twice, 500, 0)["accuracy"]
    grouped = bootstrap_intervals(*twice, 500, 0, copies=np.tile(np.arange(200), 2))["accuracy"]
    width = lambda interval: interval[1] - interval[0]  # noqa: E731
    assert width(naive) < 0.8 * width(unique)  # every copy counted as a case: about 1/sqrt(2) as wide
    assert width(grouped) == pytest.approx(width(unique), rel=0.15)
    result = clinical_metrics(*twice, ["A", "B", "C"], n_resamples=20, copies=np.tile(np.arange(200), 2))
    assert result["bootstrap"]["unit"] == "duplicate group"


def _noisy_set(n=300, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[truth]
    return truth, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_bootstrap_intervals_are_reproducible_and_contain_the_point_estimate():
    truth, probabilities = _noisy_set()
    first = bootstrap_intervals(truth, probabilities, n_resamples=200, seed=3)
    assert first == bootstrap_intervals(truth, probabilities, n_resamples=200, seed=3)
    assert first != bootstrap_intervals(truth, probabilities, n_resamples=200, seed=4)
    point = point_metrics(truth, probabilities)
    for name in ("accuracy", "balanced_accuracy", "cohen_kappa", "macro/f1", "roc_auc/0", "specificity/2"):
        low, high = first[name]
        assert low <= point[name] <= high and high - low > 0, name
        assert high - low < 0.25, name  # 300 cases: informative, not vacuous


def test_clinical_metrics_is_json_ready_with_nulls_for_undefined_values():
    result = clinical_metrics(TRUTH, PROBABILITIES, ["A", "B", "C", "D"], n_resamples=50, seed=1)
    assert result["bootstrap"] == {"resamples": 50, "seed": 1, "level": 0.95, "stratified": True, "unit": "image"}
    assert result["per_class"]["D"]["support"] == 0 and result["per_class"]["D"]["sensitivity"]["value"] is None
    assert result["per_class"]["A"]["f1"]["value"] == pytest.approx(0.8)
    assert result["overall"]["cohen_kappa"]["value"] == pytest.approx(0.5)
    low, high = result["overall"]["accuracy"]["ci_low"], result["overall"]["accuracy"]["ci_high"]
    assert 0 <= low <= 4 / 6 <= high <= 1


def test_present_only_reports_and_averages_the_classes_the_set_has():
    # Classes 0 and 1 present; the model sometimes predicts class 2, which the set lacks.
    truth = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.1, 0.7], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    result = clinical_metrics(truth, probabilities, ["A", "B", "C"], n_resamples=0, present_only=True)
    assert result["averaged_over"] == ["A", "B"] and list(result["per_class"]) == ["A", "B"]
    # F1: A = 2*1*0.5/1.5 = 2/3 (precision 1, sensitivity 0.5); B = 1; C (precision 0) is not averaged in.
    assert result["macro"]["f1"]["value"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["overall"]["accuracy"]["value"] == pytest.approx(0.75)
    everything = clinical_metrics(truth, probabilities, ["A", "B", "C"], n_resamples=0)
    assert everything["averaged_over"] == ["A", "B", "C"] and len(everything["per_class"]) == 3


def test_format_interval_writes_three_decimals_and_no_negative_zero():
    from cxr.evaluation.metrics import format_interval

    assert format_interval({"value": 0.84449, "ci_low": 0.7331, "ci_high": 0.9333}) == "0.844 (0.733-0.933)"
    # Cohen's kappa of a model that always answers one class: zero, computed as -1e-17 on some resamples.
    assert format_interval({"value": -1e-17, "ci_low": -2e-4, "ci_high": 0.0}) == "0.000 (0.000-0.000)"
    assert format_interval({"value": -0.25, "ci_low": None}) == "-0.250"
    assert format_interval({"value": None}) == "n/a" and format_interval(None, missing="undefined") == "undefined"
