"""The reference system's question to the user after an epoch: "H to halt, or a number of epochs".

`AskToContinue` asks after the epoch has been saved, so that thinking at the prompt never risks an
epoch; its state (when to ask next) is a plain dict, kept with the run's checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

__all__ = ["AskToContinue", "parse_answer"]
HALT = "halt"
CONTINUE = "continue"


def parse_answer(answer: str | None) -> tuple[str, int] | None:
    """The user's answer: ("halt", 0), ("more", n), ("continue", 0) for Enter or end of input; None if invalid."""
    if answer is None:
        return CONTINUE, 0
    text = answer.strip()
    if text == "":
        return CONTINUE, 0
    if text.lower() == "h":
        return HALT, 0
    if text.isdigit() and int(text) > 0:
        return "more", int(text)
    return None


class AskToContinue(keras.callbacks.Callback):
    """Ask after epoch `ask_epoch` whether to halt, train n more epochs and ask again, or go on.

    Put this callback after the one that saves the epoch.

    Args:
        ask_epoch: the first epoch after which to ask (None or 0: never).
        epochs: the run's last epoch (no question after it).
        read: `read(prompt)` returns the answer, or None at the end of input (taken as Enter).
        echo: where messages go.
        on_answer: `on_answer(epoch, note, state)` records each answer and the prompt's new state
            (`get_state()`), so that the saved run asks again when an uninterrupted one would.
    """

    def __init__(self, ask_epoch: int | None, epochs: int, read: Callable[[str], str | None],
                 echo: Callable[[str], None] = print,
                 on_answer: Callable[[int, str, dict[str, Any]], None] | None = None):
        super().__init__()
        self.next_ask = ask_epoch or None
        self.epochs = epochs
        self.read = read
        self.echo = echo
        self.on_answer = on_answer
        self.halted = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        done = epoch + 1
        if self.next_ask is None or done < self.next_ask or done >= self.epochs or self.model.stop_training:
            return
        prompt = (f"epoch {done}/{self.epochs} done. H halts, a number trains that many more epochs and asks "
                  f"again, Enter trains to epoch {self.epochs}: ")
        while True:
            answer = self.read(prompt)
            parsed = parse_answer(answer)
            if parsed is not None:
                break
            self.echo(f"not understood: {answer!r}; type H, a whole number of epochs, or just press Enter")
        kind, more = parsed
        if kind == HALT:
            self.model.stop_training = self.halted = True
            note = f"halted by the user after epoch {done}"
        elif kind == "more" and done + more < self.epochs:
            self.next_ask = done + more
            note = f"training {more} more epoch(s), asking again after epoch {self.next_ask}"
        else:
            self.next_ask = None
            end = " (end of input)" if answer is None else ""
            cap = " (the configured end; --resume with --epochs trains longer)" if kind == "more" else ""
            note = f"training to epoch {self.epochs}{cap} without asking again{end}"
        self.echo(note)
        if self.on_answer:
            self.on_answer(epoch, note, self.get_state())

    def get_state(self) -> dict[str, Any]:
        return {"next_ask": self.next_ask}

    def set_state(self, state: dict[str, Any]) -> None:
        if "next_ask" in state:
            self.next_ask = state["next_ask"]
