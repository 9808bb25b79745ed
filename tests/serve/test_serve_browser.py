"""The web page in a real headless Chromium: upload a sample radiograph, see probabilities and the overlay."""


import pytest
from helpers import CHROMIUM_FLAGS, chromium, needs_tensorflow, running

from cxr.serve.app import create_app


@pytest.fixture(scope="module")
def server(tiny_run):
    with running(create_app(tiny_run, engine="keras", load_in_background=False)) as address:
        yield address


def test_upload_shows_probabilities_the_overlay_and_the_notice(server, sample, tmp_path):
    from playwright.sync_api import sync_playwright

    image = next((sample / "Viral Pneumonia" / "images").glob("*.png"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS[1:])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(server)
        assert "Research use only. This is not a medical device" in page.inner_text(".notice")
        page.wait_for_selector("#model table")
        assert "COVID, Lung_Opacity, Normal, Viral Pneumonia" in page.inner_text("#model")
        page.keyboard.press("Tab")  # the file picker is the first control: reachable from the keyboard
        assert page.evaluate("document.activeElement.id") == "file"
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#overlay:not([hidden])", timeout=60_000)
        assert page.inner_text("#predicted").startswith("Predicted: ")
        assert page.locator(".bar").count() == 4
        assert page.evaluate("document.getElementById('overlay').naturalWidth") > 0
        calls = page.locator("#points li").all_inner_texts()  # the run's operating points, all but Normal
        assert [call.split(":")[0] for call in calls] == ["COVID", "Lung_Opacity", "Viral Pneumonia"]
        assert all(" at threshold " in call and "on validation" in call for call in calls)
        assert "on the model's own, uncalibrated probabilities" in page.inner_text("#points-note")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"})
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "notes.txt: not a PNG, JPEG or DICOM image" in page.inner_text("#error")
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 20_000


@needs_tensorflow  # exports to ONNX in this process
def test_a_server_without_grad_cam_hides_the_overlay_choice_and_still_answers(tiny_run, sample, tmp_path):
    from playwright.sync_api import sync_playwright

    from cxr.cli import main

    exported = tmp_path / "exported" / "model.onnx"
    assert main(["export", str(tiny_run), "--out", str(exported)]) == 0
    image = next((sample / "COVID" / "images").glob("*.png"))
    with running(create_app(exported, load_in_background=False)) as address, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS[1:])
        page = browser.new_page()
        page.goto(address)
        page.wait_for_selector("#explain-note:not([hidden])")
        assert "Grad-CAM overlays are not available: no Keras model beside model.onnx" in page.inner_text(
            "#explain-note")
        assert page.evaluate("document.getElementById('explain').checked") is False
        assert not page.is_visible("#explain")
        page.set_input_files("#file", str(image))
        page.wait_for_function("document.getElementById('predicted').textContent.length > 0")
        assert page.inner_text("#error") == "" and page.locator(".bar").count() == 4
        assert page.is_hidden("#overlay")
        browser.close()
