"""The HTML report: self-contained, and rendered by a real headless Chromium with every image loaded."""

import json
import re

from helpers import run_chromium


def test_the_report_is_self_contained_and_says_what_it_is(tiny_run):
    page = (tiny_run / "eval" / "report.html").read_text(encoding="utf-8")
    assert "Research use only. This is not a medical device" in page
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page  # nothing fetched
    assert page.count('<img src="data:image/png;base64,') == 5
    for heading in ("Test set:", "Sources", "Per class (test set)", "Dataset", "Configuration"):
        assert heading in page
    assert "no &lt;Class&gt;.metadata.xlsx files in" in page  # phantoms have no metadata: said, not hidden


def test_chromium_renders_the_report_with_every_image_and_the_headline_numbers(tiny_run, tmp_path):
    report = tiny_run / "eval" / "report.html"
    done = run_chromium("--dump-dom", report.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body[^>]*>", done.stdout).group(0)
    assert 'data-images-loaded="5"' in body and 'data-images-total="5"' in body, body
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    accuracy = metrics["clinical"]["overall"]["accuracy"]
    assert f"{accuracy['value']:.3f}" in done.stdout and f"{accuracy['ci_low']:.3f}" in done.stdout
    assert f"{metrics['calibration']['temperature']:.3f}" in done.stdout

    shot = tmp_path / "report.png"
    done = run_chromium("--window-size=1200,3000", f"--screenshot={shot}", report.as_uri())
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000, done.stderr[-2000:]
