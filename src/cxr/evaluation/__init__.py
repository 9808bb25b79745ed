"""Evaluation: what a trained model is worth, computed first, then written, then summarised.

- `evaluate`: a run's model on its splits (`evaluate_run`), into a new `eval*/` folder.
- `metrics`: clinical metrics with bootstrap intervals; the headline-metric table.
- `calibration`: reliability, expected calibration error and temperature scaling.
- `sources`: the per-source audit from the dataset's metadata files.
- `plots`, `report`: the figures and the self-contained HTML page.
- `compare`: the headline metrics of several runs side by side.
"""

__all__: list[str] = []
