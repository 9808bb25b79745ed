"""Training: the loop (`train`, `resume`) and the callbacks it is made of.

- `loop`: a new run and the continuation of a stopped one, told as a short story of steps.
- `controller`: the reference's adaptive learning rate (`AdaptiveLR`).
- `prompt`: the reference's ask-to-continue question (`AskToContinue`).
- `history`: one line and one history.csv row per epoch (`EpochLog`).
- `checkpoint`: what is saved after every epoch, and inside long ones, so that a run resumes exactly
  (`RunCheckpoint`).
- `progress`: a line every few minutes inside an epoch when the output is a log, not a terminal.
- `stopping`: Ctrl-C, SIGTERM and non-finite losses, stopped at a batch boundary.
- `distribute`: data parallel over every device and process of a job.
"""

__all__: list[str] = []
