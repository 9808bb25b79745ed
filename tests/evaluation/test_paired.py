"""The paired comparison of two models on the same images, against scipy and values known by hand."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, chi2
from sklearn.metrics import f1_score

from cxr.evaluation.metrics import stratified_resamples
from cxr.evaluation.paired import (
    CLUSTERED_MCNEMAR_TEST,
    MCNEMAR_TEST,
    align,
    comparison_lines,
    mcnemar_clustered,
    mcnemar_exact,
    paired_comparison,
    shared_groups,
)
from cxr.evaluation.paired import _macro_f1_rows as macro_f1_rows


def _wrong(truth, right, n_classes=2):
    """Predictions that are right exactly where `right` says."""
    return np.where(right, truth, (truth + 1) % n_classes)


def _hundred_images():
    """100 images (50 per class): A right on 80, B right on 88; 78 both right, 2 only A, 10 only B, 10 neither."""
    truth = np.array([0, 1] * 50)
    right_a = np.array([True] * 78 + [True] * 2 + [False] * 10 + [False] * 10)
    right_b = np.array([True] * 78 + [False] * 2 + [True] * 10 + [False] * 10)
    return truth, _wrong(truth, right_a), _wrong(truth, right_b)


# McNemar ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("a_only", "b_only", "expected"), [
    (1, 9, 2 * (1 + 10) / 1024),  # P(X <= 1) for X ~ Bin(10, 1/2) is 11/1024, doubled
    (9, 1, 2 * (1 + 10) / 1024),
    (5, 5, 1.0),
    (0, 0, 1.0),  # no discordant images: nothing tells the models apart
    (0, 1, 1.0),
    (0, 5, 2 / 32),
])
def test_mcnemar_matches_hand_computed_values(a_only, b_only, expected):
    assert mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("a_only", "b_only"), [(2, 10), (3, 17), (40, 25), (0, 12), (100, 130)])
def test_mcnemar_is_scipys_exact_binomial_test(a_only, b_only):
    assert mcnemar_exact(a_only, b_only) == binomtest(a_only, a_only + b_only, 0.5).pvalue


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="negative"):
        mcnemar_exact(-1, 3)


# paired_comparison -----------------------------------------------------------------------------------

def test_paired_comparison_counts_and_differences_on_a_hand_built_set():
    truth, predicted_a, predicted_b = _hundred_images()
    result = paired_comparison(truth, predicted_a, predicted_b, n_resamples=300, seed=1)
    assert result["images"] == 100
    assert result["bootstrap"] == {"resamples": 300, "seed": 1, "level": 0.95, "paired": True, "stratified": True,
                                   "unit": "image"}
    mcnemar = result["mcnemar"]
    assert {key: mcnemar[key] for key in ("a_right_b_wrong", "a_wrong_b_right", "both_right", "both_wrong")} == {
        "a_right_b_wrong": 2, "a_wrong_b_right": 10, "both_right": 78, "both_wrong": 10}
    assert mcnemar["p_value"] == binomtest(2, 12, 0.5).pvalue == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar["test"] == MCNEMAR_TEST
    accuracy = result["accuracy"]
    assert (accuracy["a"], accuracy["b"], accuracy["difference"]) == (0.8, 0.88, 0.08)
    assert accuracy["ci_low"] <= 0.08 <= accuracy["ci_high"]
    # 10 images against 2 is a real gap (McNemar p < 0.05), so the paired interval stays above 0.
    assert 0 < accuracy["ci_low"] < accuracy["ci_high"] < 0.2
    f1 = result["macro_f1"]
    assert f1["a"] == pytest.approx(f1_score(truth, predicted_a, average="macro"))
    assert f1["b"] == pytest.approx(f1_score(truth, predicted_b, average="macro"))
    assert f1["difference"] == pytest.approx(f1["b"] - f1["a"])
    assert f1["ci_low"] <= f1["difference"] <= f1["ci_high"]
    assert json.loads(json.dumps(result)) == result  # JSON-ready: plain ints, floats, strings
    assert result == paired_comparison(truth, predicted_a, predicted_b, n_resamples=300, seed=1)
    assert result != paired_comparison(truth, predicted_a, predicted_b, n_resamples=300, seed=2)


def test_macro_f1_counts_only_the_classes_in_the_truth():
    truth = np.array([0, 0, 1, 1])
    result = paired_comparison(truth, truth, np.array([0, 1, 1, 1]), n_resamples=0)
    # B: class 0 precision 1, recall 1/2 -> F1 2/3; class 1 precision 2/3, recall 1 -> F1 4/5.
    assert result["macro_f1"]["a"] == 1.0
    assert result["macro_f1"]["b"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert result["macro_f1"]["difference"] == pytest.approx((2 / 3 + 4 / 5) / 2 - 1)
    # A prediction of class 2, absent from the truth: class 2's F1 of 0 is not averaged in.
    result = paired_comparison(truth, truth, np.array([0, 2, 1, 1]), n_resamples=0)
    assert result["macro_f1"]["b"] == pytest.approx((2 / 3 + 1) / 2)


def test_the_vectorised_bootstrap_f1_is_scikit_learns():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 60)
    predicted = np.where(rng.random(60) < 0.7, truth, rng.integers(0, 4, 60))  # and a class absent from truth
    rows = stratified_resamples(truth, 20, seed=5)
    labels = np.unique(truth)
    expected = [f1_score(truth[r], predicted[r], average="macro", labels=labels, zero_division=0) for r in rows]
    np.testing.assert_allclose(macro_f1_rows(truth, predicted, rows, labels), expected, rtol=1e-12)


def test_without_resamples_there_is_no_interval():
    truth, predicted_a, predicted_b = _hundred_images()
    result = paired_comparison(truth, predicted_a, predicted_b, n_resamples=0)
    assert result["bootstrap"]["resamples"] == 0
    for key in ("accuracy", "macro_f1"):
        assert result[key]["ci_low"] is None and result[key]["ci_high"] is None
    assert result["accuracy"]["difference"] == 0.08
    assert "CI" not in result["verdict"]
    assert result["verdict"] == ("B's accuracy is 8.0 points higher than A's; McNemar p = 0.0386: evidence of a "
                                 "difference at the 5 % level on these 100 images, B is the more accurate.")


def test_identical_predictions_differ_by_nothing():
    truth, predicted_a, _ = _hundred_images()
    result = paired_comparison(truth, predicted_a, predicted_a.copy(), n_resamples=200)
    for key in ("accuracy", "macro_f1"):
        assert result[key]["difference"] == 0
        assert result[key]["ci_low"] == result[key]["ci_high"] == 0
    assert result["mcnemar"]["p_value"] == 1.0
    assert result["mcnemar"]["a_right_b_wrong"] == result["mcnemar"]["a_wrong_b_right"] == 0
    assert result["verdict"].startswith("A and B have the same accuracy (95 % CI of the difference 0.0 to 0.0 points)")
    assert "no evidence of a difference" in result["verdict"]


def test_the_bootstrap_is_paired():
    # B is A with 8 of A's mistakes fixed and nothing else changed: B can never be worse on any resample of
    # the same images, so the whole interval is >= 0. Resampling the two models independently would let
    # A's score and B's score move apart and give a much wider interval reaching below 0.
    truth = np.array([0, 1, 2] * 100)
    rng = np.random.default_rng(3)
    right_a = rng.random(300) < 0.75
    fixed = rng.choice(np.flatnonzero(~right_a), 8, replace=False)
    right_b = right_a.copy()
    right_b[fixed] = True
    predicted_a, predicted_b = _wrong(truth, right_a, 3), _wrong(truth, right_b, 3)
    result = paired_comparison(truth, predicted_a, predicted_b, n_resamples=500, seed=0)
    accuracy = result["accuracy"]
    assert accuracy["difference"] == pytest.approx(8 / 300)
    assert 0 <= accuracy["ci_low"] < accuracy["difference"] < accuracy["ci_high"] < 3 * accuracy["difference"]
    assert result["macro_f1"]["ci_low"] >= 0  # fixing mistakes never lowers any class's F1 here
    rows_a, rows_b = stratified_resamples(truth, 500, seed=0), stratified_resamples(truth, 500, seed=1)
    independent = np.percentile(right_b[rows_b].mean(axis=1) - right_a[rows_a].mean(axis=1), [2.5, 97.5])
    assert independent[0] < 0
    assert accuracy["ci_high"] - accuracy["ci_low"] < (independent[1] - independent[0]) / 2


def test_a_lower_b_is_said_from_the_better_models_side():
    truth, predicted_a, predicted_b = _hundred_images()
    result = paired_comparison(truth, predicted_b, predicted_a, n_resamples=300, seed=1)
    assert result["accuracy"]["difference"] == -0.08
    assert result["mcnemar"]["a_right_b_wrong"] == 10 and result["mcnemar"]["a_wrong_b_right"] == 2
    low, high = result["accuracy"]["ci_low"], result["accuracy"]["ci_high"]
    assert result["verdict"] == (f"A's accuracy is 8.0 points higher than B's (95 % CI {-100 * high:.1f} to "
                                 f"{-100 * low:.1f}); McNemar p = 0.0386: evidence of a difference at the 5 % level "
                                 "on these 100 images, A is the more accurate.")


def test_no_evidence_when_the_discordant_images_split_evenly_enough():
    truth = np.array([0, 1] * 180)
    right_a = np.arange(360) < 300
    right_b = right_a.copy()
    right_b[:6] = False  # 6 only A right
    right_b[300:316] = True  # 16 only B right: 300 + 10 right of 360
    result = paired_comparison(truth, _wrong(truth, right_a), _wrong(truth, right_b), n_resamples=200)
    p = binomtest(6, 22, 0.5).pvalue
    assert result["mcnemar"]["p_value"] == p and p > 0.05
    assert result["verdict"].startswith("B's accuracy is 2.8 points higher than A's (95 % CI ")
    assert result["verdict"].endswith(f"); McNemar p = {p:.3g}: no evidence of a difference at the 5 % level on "
                                      "these 360 images.")


@pytest.mark.parametrize(("truth", "a", "b", "resamples", "message"), [
    ([0, 1], [0, 1], [0], 10, "same length"),
    ([[0, 1]], [[0, 1]], [[0, 1]], 10, "1-D"),
    ([], [], [], 10, "no images"),
    ([0, 1], [0, 1], [0, 1], -1, "negative"),
])
def test_paired_comparison_rejects_unusable_input(truth, a, b, resamples, message):
    with pytest.raises(ValueError, match=message):
        paired_comparison(np.array(truth), np.array(a), np.array(b), n_resamples=resamples)


# comparison_lines ------------------------------------------------------------------------------------

def test_comparison_lines_use_the_names_and_the_numbers():
    truth, predicted_a, predicted_b = _hundred_images()
    result = paired_comparison(truth, predicted_a, predicted_b, n_resamples=300, seed=1)
    lines = comparison_lines(result, "densenet-1", "densenet-2")
    accuracy, f1 = result["accuracy"], result["macro_f1"]
    assert lines[0] == "images: 100, the same for both"
    assert lines[1] == (f"accuracy: densenet-1 0.800, densenet-2 0.880, densenet-2 - densenet-1 +0.080 "
                        f"(95 % CI {accuracy['ci_low']:+.3f} to {accuracy['ci_high']:+.3f})")
    assert lines[2] == (f"macro F1: densenet-1 {f1['a']:.3f}, densenet-2 {f1['b']:.3f}, densenet-2 - densenet-1 "
                        f"{f1['difference']:+.3f} (95 % CI {f1['ci_low']:+.3f} to {f1['ci_high']:+.3f})")
    assert lines[3] == "both right 78, only densenet-1 right 2, only densenet-2 right 10, both wrong 10"
    assert lines[4] == "McNemar exact test on the 12 images only one got right: p = 0.0386"
    assert lines[5].startswith("densenet-2's accuracy is 8.0 points higher than densenet-1's (95 % CI ")
    assert lines[5].endswith("densenet-2 is the more accurate.")
    assert not any(" A " in line or "A's" in line or " B " in line for line in lines)
    lines = comparison_lines(paired_comparison(truth, predicted_a, predicted_b, n_resamples=0), "one", "two")
    assert lines[1] == "accuracy: one 0.800, two 0.880, two - one +0.080"


def test_tiny_p_values_read_as_below_a_thousandth():
    truth = np.array([0, 1] * 50)
    result = paired_comparison(truth, _wrong(truth, np.arange(100) < 50), truth, n_resamples=0)
    assert result["mcnemar"]["p_value"] < 1e-10
    assert "McNemar p < 0.001: evidence of a difference" in result["verdict"]
    assert comparison_lines(result, "x", "y")[4].endswith("p < 0.001")


# align -----------------------------------------------------------------------------------------------

def _predictions(files, truth, predicted):
    return pd.DataFrame({"file": files, "true_label": truth, "predicted_label": predicted,
                         "correct": np.array(truth) == np.array(predicted), "p_NORMAL": 0.5, "p_PNEUMONIA": 0.5})


FILES = [f"img{k}.png" for k in range(6)]
TRUTH = ["NORMAL", "NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA", "PNEUMONIA"]


def test_align_joins_shuffled_tables_on_the_file():
    frame_a = _predictions(FILES, TRUTH, ["NORMAL", "PNEUMONIA", "NORMAL", "PNEUMONIA", "PNEUMONIA", "NORMAL"])
    frame_b = _predictions(FILES, TRUTH, ["NORMAL"] * 3 + ["PNEUMONIA"] * 3).sample(frac=1, random_state=0)
    assert frame_b["file"].tolist() != FILES
    joined, reason = align(frame_a, frame_b)
    assert reason is None
    assert list(joined.columns) == ["file", "true_label", "predicted_a", "predicted_b"]
    assert joined["file"].tolist() == FILES and list(joined.index) == list(range(6))
    assert joined["true_label"].tolist() == TRUTH
    assert joined["predicted_a"].tolist() == frame_a["predicted_label"].tolist()
    assert joined["predicted_b"].tolist() == ["NORMAL"] * 3 + ["PNEUMONIA"] * 3
    # Row order of the input does not matter: A shuffled too gives the same table.
    again, _ = align(frame_a.sample(frac=1, random_state=1), frame_b)
    pd.testing.assert_frame_equal(again, joined)


def test_align_says_how_the_image_sets_differ():
    frame_a = _predictions(FILES, TRUTH, TRUTH)
    frame_b = _predictions(FILES[3:] + ["new1.png", "new2.png"], TRUTH[3:] + ["NORMAL"] * 2,
                           TRUTH[3:] + ["NORMAL"] * 2)
    joined, reason = align(frame_a, frame_b)
    assert joined is None
    assert reason == ("the image sets differ: 3 images only in A (e.g. img0.png), 2 only in B (e.g. new1.png), "
                      "3 in both")
    _, reason = align(frame_a, frame_a.iloc[1:], "run-a", "run-b")
    assert reason == "the image sets differ: 1 image only in run-a (e.g. img0.png), 0 only in run-b, 5 in both"


def test_align_refuses_files_whose_true_labels_differ():
    relabelled = TRUTH.copy()
    relabelled[1], relabelled[4] = "PNEUMONIA", "NORMAL"
    joined, reason = align(_predictions(FILES, TRUTH, TRUTH), _predictions(FILES[::-1], relabelled[::-1], TRUTH))
    assert joined is None
    assert reason == "the same files carry different true labels in A and B (2 files, e.g. img1.png)"


def test_align_refuses_repeated_files_and_missing_columns():
    frame = _predictions(FILES, TRUTH, TRUTH)
    repeated = pd.concat([frame, frame.iloc[[2]]])
    assert align(frame, repeated, "a", "b") == (None, "b lists 1 file more than once (e.g. img2.png)")
    assert align(repeated, frame)[1] == "A lists 1 file more than once (e.g. img2.png)"
    _, reason = align(frame.drop(columns="predicted_label"), frame)
    assert reason.startswith("A's predictions have no column predicted_label (columns: file, true_label, correct")
    empty = frame.iloc[:0]
    assert align(empty, empty) == (None, "A and B have no predictions")


# Copies of one radiograph ------------------------------------------------------------------------------

def test_shared_groups_join_rows_that_share_a_group_in_either_table():
    # a: {0,1} {2} {3} {4,5}; b: {0} {1,2} {3} {4} {5}, 5 unknown (-1) in b  ->  {0,1,2} {3} {4,5}
    groups = shared_groups(np.array([7, 7, 8, 9, 10, 10]), np.array([0, 1, 1, 2, 3, -1]))
    assert groups.tolist() == [0, 0, 0, 1, 2, 2]
    assert shared_groups(pd.Series([5, 3, 5, 4])).tolist() == [0, 1, 0, 2]  # one table; ids in order of rows
    assert shared_groups(np.array([-1, -1, 2])).tolist() == [0, 1, 2]  # unknown rows stand alone
    # A hand-made file may name patients, or leave a row blank (read back as "" or NaN).
    assert shared_groups(pd.Series(["p7", "p3", "p7", "", np.nan])).tolist() == [0, 1, 0, 2, 3]


def test_align_carries_the_duplicate_groups_of_either_table():
    frame_a = _predictions(FILES, TRUTH, TRUTH).assign(group=[0, 0, 1, 2, 3, 4])
    frame_b = _predictions(FILES, TRUTH, TRUTH).assign(group=[0, 1, 1, 2, 3, 3]).sample(frac=1, random_state=0)
    joined, reason = align(frame_a, frame_b)
    assert reason is None
    assert list(joined.columns) == ["file", "true_label", "predicted_a", "predicted_b", "group"]
    assert joined["group"].tolist() == [0, 0, 0, 1, 2, 2]
    # An older predictions file without groups: the other table's groups count.
    joined, _ = align(_predictions(FILES, TRUTH, TRUTH), frame_b)
    assert joined["group"].tolist() == [0, 1, 1, 2, 3, 3]


def test_the_paired_interval_is_not_narrowed_by_copies():
    # 100 images each present twice: image by image the interval of the difference is about 1/sqrt(2) as
    # wide as the unique set's; drawing copies together gives it back the unique set's width.
    truth, predicted_a, predicted_b = (np.tile(values, 2) for values in _hundred_images())
    unique = len(truth) // 2
    copies = np.tile(np.arange(unique), 2)

    def width(result):
        return result["accuracy"]["ci_high"] - result["accuracy"]["ci_low"]

    alone = paired_comparison(truth[:unique], predicted_a[:unique], predicted_b[:unique], 1000, 0)
    naive = paired_comparison(truth, predicted_a, predicted_b, 1000, 0)
    grouped = paired_comparison(truth, predicted_a, predicted_b, 1000, 0, copies=copies)
    assert naive["bootstrap"]["unit"] == "image" and grouped["bootstrap"]["unit"] == "duplicate group"
    assert grouped["accuracy"]["difference"] == naive["accuracy"]["difference"] == pytest.approx(0.08)
    assert width(naive) < 0.8 * width(alone)
    assert width(grouped) == pytest.approx(width(alone), rel=0.15)
    assert comparison_lines(grouped, "A", "B")[0] == ("images: 200, the same for both; the bootstrap draws copies "
                                                      "of one radiograph together")
    assert comparison_lines(naive, "A", "B")[0] == "images: 200, the same for both"


def test_the_clustered_mcnemar_is_durkalskis_statistic():
    # Clusters (2 only-A, 0 only-B) twice: X2 = (2 + 2)^2 / (2^2 + 2^2) = 2.
    assert mcnemar_clustered([2, 2], [0, 0]) == pytest.approx(chi2.sf(2.0, 1), rel=1e-12)
    # Discordance that cancels over the clusters is no evidence; no discordance at all is p 1.
    assert mcnemar_clustered([2, 0, 1], [0, 3, 0]) == 1.0 and mcnemar_clustered([0, 0], [0, 0]) == 1.0
    # One image per cluster: the usual asymptotic McNemar, (a - b)^2 / (a + b).
    assert mcnemar_clustered([1, 1, 0, 0, 0], [0, 0, 1, 1, 1]) == pytest.approx(chi2.sf(1 / 5, 1), rel=1e-12)


def test_mcnemar_counts_copies_of_one_radiograph_once():
    # The 100 images each present twice: image by image the exact test sees 4 against 20 discordant images
    # (p about 0.0015); counted by radiograph it is the 100 images' own evidence, 2 against 10.
    truth, predicted_a, predicted_b = (np.tile(values, 2) for values in _hundred_images())
    copies = np.tile(np.arange(100), 2)
    naive = paired_comparison(truth, predicted_a, predicted_b, 0)
    grouped = paired_comparison(truth, predicted_a, predicted_b, 0, copies=copies)
    assert naive["mcnemar"]["p_value"] == pytest.approx(binomtest(4, 24, 0.5).pvalue)
    assert grouped["mcnemar"]["test"] == CLUSTERED_MCNEMAR_TEST
    assert grouped["mcnemar"]["p_value"] == pytest.approx(chi2.sf((10 - 2) ** 2 / 12, 1), rel=1e-12)
    assert naive["mcnemar"]["p_value"] < grouped["mcnemar"]["p_value"] / 5
    assert comparison_lines(grouped, "A", "B")[4] == (
        "McNemar test for clustered pairs (Durkalski) on the 24 images only one got right, copies of one "
        f"radiograph counted as one: p = {grouped['mcnemar']['p_value']:.3g}")
