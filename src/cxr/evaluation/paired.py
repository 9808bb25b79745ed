"""The paired comparison of two classifiers scored on the same images.

Two runs' intervals side by side (`compare`) overlap far more often than the runs really differ: each
interval carries the whole sampling noise of the test set, while the difference between two models
scored on the same images only carries the noise of the images where they disagree. So this module
compares them pair by pair: a paired bootstrap (the same resampled images for both models) gives the
interval of the difference, and McNemar's exact test on the discordant images gives its p value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import binomtest, chi2
from sklearn.metrics import f1_score

from cxr.data.split import group_ids
from cxr.evaluation.metrics import resampling_unit, stratified_resamples

__all__ = ["CLUSTERED_MCNEMAR_TEST", "MCNEMAR_TEST", "align", "comparison_lines", "mcnemar_clustered", "mcnemar_exact",
           "paired_comparison", "shared_groups"]

MCNEMAR_TEST = "McNemar exact (two-sided binomial on discordant pairs, scipy.stats.binomtest)"
CLUSTERED_MCNEMAR_TEST = ("McNemar for clustered pairs (Durkalski et al. 2003, Stat Med 22:2417): chi-square, 1 df, "
                          "over duplicate groups")
LEVEL = 0.95
_COLUMNS = ("file", "true_label", "predicted_label")


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """McNemar's exact test: under "equally accurate" each discordant image is a fair coin toss between
    the two models, so the p value is the two-sided exact binomial test of `a_only` in `a_only + b_only`.

    Args:
        a_only: images model A got right and model B wrong.
        b_only: images model B got right and model A wrong.

    Returns:
        The two-sided p value; 1.0 without discordant images (nothing tells the models apart).

    Raises:
        ValueError: a count is negative.
    """
    a_only, b_only = int(a_only), int(b_only)
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts cannot be negative: {a_only}, {b_only}")
    if a_only + b_only == 0:
        return 1.0
    return float(binomtest(a_only, a_only + b_only, 0.5).pvalue)


def mcnemar_clustered(a_only: np.ndarray, b_only: np.ndarray) -> float:
    """McNemar's test when pairs come in clusters (here: copies of one radiograph), which are not independent
    evidence: X2 = (sum_k (a_k - b_k))^2 / sum_k (a_k - b_k)^2 over the clusters k, chi-square with 1 degree of
    freedom (Durkalski et al. 2003). With every cluster a single image it is the usual asymptotic McNemar,
    (a - b)^2 / (a + b).

    Args:
        a_only: per cluster, images model A got right and model B wrong.
        b_only: per cluster, images model B got right and model A wrong.

    Returns:
        The two-sided p value; 1.0 without discordant images.
    """
    differences = np.asarray(a_only, dtype=float) - np.asarray(b_only, dtype=float)
    spread = float((differences ** 2).sum())
    if spread == 0:
        return 1.0
    return float(chi2.sf(differences.sum() ** 2 / spread, 1))


def align(frame_a: pd.DataFrame, frame_b: pd.DataFrame, name_a: str = "A",
          name_b: str = "B") -> tuple[pd.DataFrame | None, str | None]:
    """Two predictions tables (`evaluate.predictions_frame`) joined image by image, when a paired
    comparison is possible: exactly the same files, with the same true labels, in any order.

    Args:
        frame_a: model A's table (columns file, true_label, predicted_label, ...).
        frame_b: model B's table.
        name_a: what the reason calls A (a run's name, say).
        name_b: what the reason calls B.

    Returns:
        (the joined table: file, true_label, predicted_a, predicted_b, and group where either table has the
        split's duplicate groups, sorted by file; None), or (None, a sentence saying why the tables cannot
        be paired). Two images share a group when they share one in either table (older predictions
        files have no group: then only the other table's count).
    """
    for name, frame in ((name_a, frame_a), (name_b, frame_b)):
        missing = [column for column in _COLUMNS if column not in frame.columns]
        if missing:
            return None, (f"{name}'s predictions have no column {', '.join(missing)} "
                          f"(columns: {', '.join(map(str, frame.columns))})")
        repeated = frame["file"][frame["file"].duplicated()].unique()
        if len(repeated):
            return None, f"{name} lists {_count(len(repeated), 'file')} more than once (e.g. {repeated[0]})"
    if len(frame_a) == 0 and len(frame_b) == 0:
        return None, f"{name_a} and {name_b} have no predictions"
    files_a, files_b = set(frame_a["file"]), set(frame_b["file"])
    only_a, only_b = sorted(files_a - files_b), sorted(files_b - files_a)
    if only_a or only_b:
        return None, (f"the image sets differ: {_count(len(only_a), 'image')} only in {name_a}{_example(only_a)}, "
                      f"{len(only_b)} only in {name_b}{_example(only_b)}, {len(files_a & files_b)} in both")
    joined = pd.merge(frame_a[_with_group(frame_a)], frame_b[_with_group(frame_b)], on="file",
                      suffixes=("_a", "_b"), validate="one_to_one")
    differ = joined.loc[joined["true_label_a"] != joined["true_label_b"], "file"].sort_values()
    if len(differ):
        return None, (f"the same files carry different true labels in {name_a} and {name_b} "
                      f"({_count(len(differ), 'file')}, e.g. {differ.iloc[0]})")
    joined = joined.rename(columns={"true_label_a": "true_label", "predicted_label_a": "predicted_a",
                                    "predicted_label_b": "predicted_b", "group": "group_a"})
    columns = ["file", "true_label", "predicted_a", "predicted_b"]
    groups = [joined[name] for name in ("group_a", "group_b") if name in joined]
    if groups:
        joined["group"] = shared_groups(*groups)
        columns.append("group")
    return joined[columns].sort_values("file", ignore_index=True), None


def shared_groups(*partitions: pd.Series | np.ndarray) -> np.ndarray:
    """One duplicate group per row such that rows sharing a group in any of the partitions share one here
    (the connected components of "same group somewhere"). Ids may be numbers or names (cxr writes numbers; a
    hand-made file may name patients); negative or blank ids: not known to be copies.

    Args:
        partitions: group ids of the same rows, one array per table.

    Returns:
        Group ids 0..k-1, one per row.
    """
    n = len(partitions[0])
    rows, nodes, offset = [], [], n
    for partition in partitions:
        ids = group_ids(pd.Series(np.asarray(partition)))  # numbers or names (a patient id), blanks
        known = np.flatnonzero(ids >= 0)
        _, codes = np.unique(ids[known], return_inverse=True)
        rows.append(known)
        nodes.append(offset + codes)
        offset += int(codes.max()) + 1 if len(codes) else 0
    rows_, nodes_ = np.concatenate(rows), np.concatenate(nodes)
    graph = coo_matrix((np.ones(len(rows_)), (rows_, nodes_)), shape=(offset, offset))
    _, labels = connected_components(graph, directed=False)
    _, compact = np.unique(labels[:n], return_inverse=True)
    return compact


def paired_comparison(truth: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray, n_resamples: int = 1000,
                      seed: int = 0, copies: np.ndarray | None = None) -> dict:
    """Accuracy and macro F1 of two models on the same images, the intervals of their differences from a
    paired stratified bootstrap, and McNemar's exact test, as JSON-ready data.

    Differences are B - A. Each resample draws the same images for both models, so what the interval
    measures is how much the gap moves, not how much each model's score moves.

    Args:
        truth: the true class index of each image.
        predicted_a: model A's predicted class index of each image.
        predicted_b: model B's, in the same image order.
        n_resamples: bootstrap resamples (0: no intervals).
        seed: their seed.
        copies: each image's duplicate group (`align`'s group column): copies of one radiograph are
            resampled together (see metrics.stratified_resamples); None: image by image.

    Returns:
        {"images", "bootstrap", "accuracy", "macro_f1", "mcnemar", "verdict"}; "accuracy" and "macro_f1"
        hold "a", "b", "difference", "ci_low", "ci_high" (None without resamples).

    Raises:
        ValueError: the arrays are empty, not one-dimensional or of different lengths, or n_resamples < 0.
    """
    truth, predicted_a, predicted_b = (np.asarray(values) for values in (truth, predicted_a, predicted_b))
    if truth.ndim != 1 or predicted_a.shape != truth.shape or predicted_b.shape != truth.shape:
        raise ValueError(f"truth and predictions must be 1-D arrays of the same length: {truth.shape}, "
                         f"{predicted_a.shape}, {predicted_b.shape}")
    if len(truth) == 0:
        raise ValueError("no images to compare")
    if n_resamples < 0:
        raise ValueError(f"n_resamples cannot be negative: {n_resamples}")
    n = len(truth)
    right_a, right_b = predicted_a == truth, predicted_b == truth
    labels = np.unique(truth)
    f1_a = float(f1_score(truth, predicted_a, average="macro", labels=labels, zero_division=0))
    f1_b = float(f1_score(truth, predicted_b, average="macro", labels=labels, zero_division=0))
    accuracy = {"a": float(right_a.mean()), "b": float(right_b.mean()),
                # From the counts, so 88 and 80 right of 100 differ by exactly 0.08.
                "difference": float((int(right_b.sum()) - int(right_a.sum())) / n), "ci_low": None, "ci_high": None}
    macro_f1 = {"a": f1_a, "b": f1_b, "difference": f1_b - f1_a, "ci_low": None, "ci_high": None}
    if n_resamples:
        rows = stratified_resamples(truth, n_resamples, seed, copies)
        gaps = (right_b[rows].sum(axis=1) - right_a[rows].sum(axis=1)) / n
        f1_gaps = _macro_f1_rows(truth, predicted_b, rows, labels) - _macro_f1_rows(truth, predicted_a, rows, labels)
        tail = (1 - LEVEL) / 2 * 100
        for entry, values in ((accuracy, gaps), (macro_f1, f1_gaps)):
            entry["ci_low"], entry["ci_high"] = (float(bound) for bound in np.percentile(values, [tail, 100 - tail]))
    a_only, b_only = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    unit = resampling_unit(truth, copies)
    if unit == "duplicate group":  # copies are one piece of evidence: the test counts groups, not images
        _, cluster = np.unique(np.asarray(copies), return_inverse=True)
        test, p_value = CLUSTERED_MCNEMAR_TEST, mcnemar_clustered(
            np.bincount(cluster, weights=right_a & ~right_b), np.bincount(cluster, weights=right_b & ~right_a))
    else:
        test, p_value = MCNEMAR_TEST, mcnemar_exact(a_only, b_only)
    result = {
        "images": n,
        "bootstrap": {"resamples": int(n_resamples), "seed": int(seed), "level": LEVEL, "paired": True,
                      "stratified": True, "unit": unit},
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "mcnemar": {"a_right_b_wrong": a_only, "a_wrong_b_right": b_only,
                    "both_right": int((right_a & right_b).sum()), "both_wrong": int((~right_a & ~right_b).sum()),
                    "p_value": p_value, "test": test},
    }
    result["verdict"] = _verdict(result, "A", "B")
    return result


def comparison_lines(result: dict, name_a: str, name_b: str) -> list[str]:
    """The lines a user reads: images, accuracy and macro F1 of each model with the difference and its
    interval, how often they agree, McNemar's p and the verdict.

    Args:
        result: `paired_comparison`'s result.
        name_a: what to call model A (a run's name, say).
        name_b: what to call model B.

    Returns:
        The lines, without line ends.
    """
    counts = result["mcnemar"]
    discordant = counts["a_right_b_wrong"] + counts["a_wrong_b_right"]
    lines = [f"images: {result['images']}, the same for both"
             + ("; the bootstrap draws copies of one radiograph together"
                if result["bootstrap"].get("unit") == "duplicate group" else "")]
    for label, key in (("accuracy", "accuracy"), ("macro F1", "macro_f1")):
        entry = result[key]
        interval = (f" (95 % CI {entry['ci_low']:+.3f} to {entry['ci_high']:+.3f})"
                    if entry.get("ci_low") is not None else "")
        lines.append(f"{label}: {name_a} {entry['a']:.3f}, {name_b} {entry['b']:.3f}, "
                     f"{name_b} - {name_a} {entry['difference']:+.3f}{interval}")
    test = (f"McNemar test for clustered pairs (Durkalski) on the {_count(discordant, 'image')} only one got right, "
            "copies of one radiograph counted as one" if counts["test"] == CLUSTERED_MCNEMAR_TEST
            else f"McNemar exact test on the {_count(discordant, 'image')} only one got right")
    lines += [f"both right {counts['both_right']}, only {name_a} right {counts['a_right_b_wrong']}, "
              f"only {name_b} right {counts['a_wrong_b_right']}, both wrong {counts['both_wrong']}",
              f"{test}: p {_p_text(counts['p_value'])}",
              _verdict(result, name_a, name_b)]
    return lines


# Helpers ---------------------------------------------------------------------------------------------

def _macro_f1_rows(truth: np.ndarray, predicted: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Macro F1 of every resample (one per row of `rows`) at once; scikit-learn's f1_score one resample at
    a time is the same number, far slower. F1 = 2 TP / (true + predicted cases); stratified
    resamples keep every class of `labels`, so the denominator is never 0.
    """
    true, guess = truth[rows], predicted[rows]
    scores = []
    for label in labels:
        is_true, is_guess = true == label, guess == label
        scores.append(2 * (is_true & is_guess).sum(axis=1) / (is_true.sum(axis=1) + is_guess.sum(axis=1)))
    return np.mean(scores, axis=0)


def _with_group(frame: pd.DataFrame) -> list[str]:
    return [*_COLUMNS, "group"] if "group" in frame.columns else list(_COLUMNS)


def _verdict(result: dict, name_a: str, name_b: str) -> str:
    """One sentence: which model is more accurate by how much, and whether McNemar's test sees it."""
    entry, p, n = result["accuracy"], result["mcnemar"]["p_value"], result["images"]
    gap, low, high = entry["difference"], entry["ci_low"], entry["ci_high"]
    if gap < 0:  # say it from the better model's side, the interval with it
        name_a, name_b = name_b, name_a
        gap, low, high = -gap, None if high is None else 0.0 - high, None if low is None else 0.0 - low
    bounds = "" if low is None else f"{100 * low:.1f} to {100 * high:.1f}"
    if gap == 0:
        first = f"{name_a} and {name_b} have the same accuracy"
        first += f" (95 % CI of the difference {bounds} points)" if bounds else ""
    else:
        first = f"{name_b}'s accuracy is {100 * gap:.1f} points higher than {name_a}'s"
        first += f" (95 % CI {bounds})" if bounds else ""
    images = "this one image" if n == 1 else f"these {n} images"
    if p < 0.05:
        return (f"{first}; McNemar p {_p_text(p)}: evidence of a difference at the 5 % level on {images}, "
                f"{name_b} is the more accurate.")
    return f"{first}; McNemar p {_p_text(p)}: no evidence of a difference at the 5 % level on {images}."


def _p_text(p: float) -> str:
    """'= 0.21', '= 0.0215', '< 0.001': three significant digits, so 0.0496 does not read as 0.05."""
    return "< 0.001" if p < 0.001 else f"= {p:.3g}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _example(files: list) -> str:
    return f" (e.g. {files[0]})" if files else ""
