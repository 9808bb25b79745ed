"""The learning-rate controller and the ask-to-continue prompt, driven by scripted metric sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr.training.controller import DECISION_KEYS, AdaptiveLR
from cxr.training.prompt import AskToContinue, parse_answer


class FakeOptimizer:
    def __init__(self, learning_rate: float):
        self.learning_rate = learning_rate


class FakeModel:
    """Weights are one number: the epoch that produced them (0 = the initial weights)."""

    def __init__(self, learning_rate: float = 1e-3):
        self.optimizer = FakeOptimizer(learning_rate)
        self.weights = 0.0
        self.stop_training = False

    def get_weights(self) -> list[np.ndarray]:
        return [np.array(self.weights)]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.weights = float(weights[0])


def drive(callback: AdaptiveLR, model: FakeModel, metrics: list[tuple[float, float]], start: int = 0) -> list[dict]:
    """Run epochs with (accuracy, val_loss) pairs; each epoch 'trains' the weights to its number."""
    callback.set_model(model)
    if start == 0:
        callback.on_train_begin()
    decisions = []
    for epoch, (accuracy, val_loss) in enumerate(metrics, start=start):
        model.weights = float(epoch + 1)
        logs = {"accuracy": accuracy, "val_loss": val_loss}
        callback.on_epoch_end(epoch, logs)  # the controller adds its decision to the epoch's logs
        decisions.append({**{key: logs[key] for key in DECISION_KEYS}, "lr": model.optimizer.learning_rate,
                          "weights": model.weights,
                          "stop": model.stop_training})
        if model.stop_training:
            break
    return decisions


def test_monitors_training_accuracy_until_the_threshold_then_validation_loss():
    decisions = drive(AdaptiveLR(threshold=0.9), FakeModel(), [(0.5, 1.0), (0.6, 1.1), (0.92, 0.8), (0.95, 0.7)])
    assert [d["monitor"] for d in decisions] == ["accuracy", "accuracy", "val_loss", "val_loss"]
    assert decisions[1]["improvement_pct"] == pytest.approx(20.0)  # 0.5 -> 0.6
    # The switch is announced; val_loss improves on the lowest seen at an improving epoch (1.0 at epoch 1).
    assert decisions[2]["action"] == "now monitoring val_loss (accuracy reached 0.9); best"
    assert decisions[2]["improvement_pct"] == pytest.approx(20.0)
    assert decisions[3]["improvement_pct"] == pytest.approx(12.5)
    assert all(d["lr"] == 1e-3 and not d["weights_restored"] for d in decisions)


def test_no_improvement_halves_the_rate_and_goes_back_to_the_best_weights():
    model = FakeModel()
    decisions = drive(AdaptiveLR(patience=1), model, [(0.5, 1.0), (0.7, 0.9), (0.6, 0.8)])
    last = decisions[-1]
    assert last["lr"] == pytest.approx(5e-4) and last["next_learning_rate"] == pytest.approx(5e-4)
    assert last["weights_restored"] and last["weights"] == 2.0  # epoch 2 had the highest accuracy
    assert last["action"] == "lr 1.00e-03 -> 5.00e-04; restored epoch 2 weights"
    assert last["improvement_pct"] == pytest.approx(-100 / 7, rel=1e-3)


def test_patience_counts_epochs_without_improvement_before_a_reduction():
    decisions = drive(AdaptiveLR(patience=2), FakeModel(), [(0.5, 1), (0.4, 1), (0.4, 1), (0.4, 1), (0.4, 1)])
    assert [d["lr"] for d in decisions] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def test_without_dwell_the_current_weights_are_kept():
    decisions = drive(AdaptiveLR(dwell=False), FakeModel(), [(0.5, 1.0), (0.4, 1.0)])
    assert decisions[-1]["lr"] == pytest.approx(5e-4)
    assert decisions[-1]["weights"] == 2.0 and not decisions[-1]["weights_restored"]


def test_stops_after_stop_patience_reductions_without_improvement():
    model = FakeModel()
    decisions = drive(AdaptiveLR(stop_patience=3), model, [(0.5, 1)] + [(0.4, 1)] * 5)
    assert len(decisions) == 4 and model.stop_training
    assert decisions[-1]["lr"] == pytest.approx(1.25e-4)
    assert decisions[-1]["action"].endswith("stop: 3 learning-rate reduction(s) without improvement")


def test_an_improvement_resets_the_count_of_reductions():
    model = FakeModel()
    decisions = drive(AdaptiveLR(stop_patience=3), model, [(0.5, 1), (0.4, 1), (0.4, 1), (0.6, 1), (0.4, 1), (0.4, 1)])
    assert len(decisions) == 6 and not model.stop_training
    assert [d["lr"] for d in decisions] == pytest.approx([1e-3, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4, 6.25e-5])


def test_nan_or_missing_validation_loss_is_never_an_improvement():
    decisions = drive(AdaptiveLR(threshold=0.5), FakeModel(), [(0.6, 1.0), (0.6, math.nan), (0.6, 0.9)])
    assert [d["action"].split(";")[0] for d in decisions] == ["best", "lr 1.00e-03 -> 5.00e-04", "best"]


def test_the_best_weights_are_set_when_training_ends():
    model, callback = FakeModel(), AdaptiveLR(patience=5)
    drive(callback, model, [(0.5, 1), (0.8, 1), (0.7, 1)])
    assert model.weights == 3.0
    callback.on_train_end()
    assert model.weights == 2.0 and callback.best_epoch == 2
    # Before any epoch improved, the initial weights are the best.
    model, callback = FakeModel(), AdaptiveLR()
    callback.set_model(model)
    callback.on_train_begin()
    model.weights = 7.0
    callback.on_train_end()
    assert model.weights == 0.0


def test_saved_state_continues_exactly_like_an_uninterrupted_controller():
    metrics = [(0.5, 1), (0.4, 1), (0.6, 1), (0.95, 0.5), (0.96, 0.6), (0.97, 0.4), (0.97, 0.45)]
    whole = drive(AdaptiveLR(), FakeModel(), metrics)
    first = AdaptiveLR()
    model = FakeModel()
    head = drive(first, model, metrics[:3])
    resumed = AdaptiveLR()
    resumed.set_state(first.get_state(), first.best_weights)
    tail = drive(resumed, model, metrics[3:], start=3)
    assert head + tail == whole


def scripted(*answers):
    """A read() that returns the answers in turn and None (end of input) after them; records prompts."""
    queue, prompts = list(answers), []

    def read(prompt: str):
        prompts.append(prompt)
        return queue.pop(0) if queue else None

    return read, prompts


def run_asker(asker: AskToContinue, epochs: int) -> tuple[FakeModel, list[int]]:
    model = FakeModel()
    asker.set_model(model)
    trained = []
    for epoch in range(epochs):
        trained.append(epoch + 1)
        asker.on_epoch_end(epoch)
        if model.stop_training:
            break
    return model, trained


@pytest.mark.parametrize(("answer", "expected"), [
    ("H", ("halt", 0)), ("h ", ("halt", 0)), ("3", ("more", 3)), ("", ("continue", 0)), (None, ("continue", 0)),
    ("0", None), ("-2", None), ("2.5", None), ("yes", None),
])
def test_answers_are_parsed(answer, expected):
    assert parse_answer(answer) == expected


def test_h_halts_at_the_ask_epoch():
    read, prompts = scripted("H")
    notes, echoed = [], []
    asker = AskToContinue(2, 10, read, echoed.append, on_answer=lambda epoch, note, state: notes.append((epoch, note)))
    model, trained = run_asker(asker, 10)
    assert trained == [1, 2] and model.stop_training and asker.halted
    assert prompts == ["epoch 2/10 done. H halts, a number trains that many more epochs and asks again, "
                       "Enter trains to epoch 10: "]
    assert notes == [(1, "halted by the user after epoch 2")]


def test_a_number_trains_that_many_more_epochs_then_asks_again():
    read, prompts = scripted("3", "2", "H")
    model, trained = run_asker(AskToContinue(2, 20, read, lambda _: None), 20)
    assert [p.split(" done")[0] for p in prompts] == ["epoch 2/20", "epoch 5/20", "epoch 7/20"]
    assert trained[-1] == 7 and model.stop_training


def test_enter_trains_to_the_end_without_asking_again():
    read, prompts = scripted("")
    model, trained = run_asker(AskToContinue(1, 6, read, lambda _: None), 6)
    assert len(prompts) == 1 and trained == [1, 2, 3, 4, 5, 6] and not model.stop_training


def test_invalid_answers_are_asked_again_and_end_of_input_goes_on():
    read, prompts = scripted("maybe", "-1")
    echoed = []
    asker = AskToContinue(1, 4, read, echoed.append)
    model, trained = run_asker(asker, 4)
    assert len(prompts) == 3 and trained == [1, 2, 3, 4] and not model.stop_training
    assert echoed[:2] == ["not understood: 'maybe'; type H, a whole number of epochs, or just press Enter",
                          "not understood: '-1'; type H, a whole number of epochs, or just press Enter"]
    assert echoed[2] == "training to epoch 4 without asking again (end of input)"


def test_no_question_after_the_last_epoch_and_a_number_past_the_end_is_capped():
    read, prompts = scripted("50")
    echoed = []
    _, trained = run_asker(AskToContinue(3, 5, read, echoed.append), 5)
    assert len(prompts) == 1 and trained == [1, 2, 3, 4, 5]
    assert echoed == ["training to epoch 5 (the configured end; --resume with --epochs trains longer) "
                      "without asking again"]
    read, prompts = scripted()
    run_asker(AskToContinue(5, 5, read, echoed.append), 5)
    assert prompts == []
