"""The REST API: every response the issue lists, with real sample images and bad inputs made here."""

import base64
import dataclasses
import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import dicom_bytes, needs_tensorflow, ramp12
from PIL import Image

from cxr.backend import accelerators
from cxr.serve.app import create_app

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


@pytest.fixture(scope="module")
def client(tiny_run):
    return TestClient(create_app(tiny_run, engine="keras", max_upload_bytes=2_000_000, load_in_background=False))


def png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def post(client, data: bytes, name="x.png", **params):
    return client.post("/v1/predict", files={"file": (name, data)}, params=params)


def test_health_readiness_and_model_description(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    assert info["classes"] == CLASSES and info["input_size"] == 32 and info["engine"] == "keras"
    assert info["test_metrics"]["overall_accuracy"]["ci_low"] is not None and len(info["model_id"]) == 12
    # Micro-batching is on by default only for Keras on a GPU; on CPU it would only add waiting.
    assert info["max_batch"] == (16 if accelerators() else 1)


def test_a_real_radiograph_is_classified_with_calibrated_probabilities(client, sample):
    image = next((sample / "COVID" / "images").glob("*.png")).read_bytes()
    result = post(client, image).json()
    assert set(result["probabilities"]) == set(CLASSES) and result["predicted"] in CLASSES
    assert sum(result["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert sum(result["calibrated_probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert result["temperature"] > 0 and result["latency_ms"] > 0


def test_explain_adds_a_gradcam_overlay_of_the_image_size(client, sample):
    image = next((sample / "Normal" / "images").glob("*.png")).read_bytes()
    result = post(client, image, explain="true").json()
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(result["gradcam_png_base64"]), np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape[:2] == cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_GRAYSCALE).shape


def png_bomb_header(width=100_000, height=100_000) -> bytes:
    """A valid PNG signature and IHDR that declare a huge image, with a tiny body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (48, 40), (10, 20, 30, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "data", "status", "message"), [
    ("empty", b"", 422, "empty file"),
    ("text", b"hello, this is not an image", 415, "not a PNG, JPEG or DICOM image"),
    ("truncated png", png(np.full((40, 40), 128, np.uint8))[:60], 422, "PNG cannot be decoded"),
    ("png bomb", png_bomb_header(), 422, "PNG image is over the pixel limit"),
    ("large png", png_bomb_header(9000, 9000), 422, "PNG image of 9000 x 9000 pixels is over the limit of 60,000,000"),
    ("dicom without pixels", dicom_bytes(None), 422, "DICOM file has no pixel data"),
    ("oversized", b"\x89PNG\r\n\x1a\n" + b"\0" * 2_100_000, 413, "over the limit of 2,000,000 bytes"),
])
def test_bad_uploads_get_a_json_error_and_the_server_stays_up(client, name, data, status, message):
    response = post(client, data)
    assert response.status_code == status, (name, response.text)
    assert message in response.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_an_oversized_body_is_refused_before_it_is_read(client):
    import asyncio

    def call(headers: list[tuple[bytes, bytes]], chunks: int) -> tuple[int, int, bytes]:
        """Send `chunks` chunks of 1 MB to the app; return the status, the chunks it read and the body."""
        read, sent = [0], []

        head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'

        async def receive():  # a well-formed form whose file never ends
            read[0] += 1
            return {"type": "http.request", "body": (head if read[0] == 1 else b"") + b"\0" * 1_000_000,
                    "more_body": read[0] < chunks}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"multipart/form-data; boundary=x"), *headers],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
        asyncio.run(client.app(scope, receive, send))
        return sent[0]["status"], read[0], b"".join(m.get("body", b"") for m in sent[1:])

    status, read, body = call([(b"content-length", b"300000000")], chunks=300)  # declared: refused unread
    assert (status, read) == (413, 0) and b"over the limit of 2,000,000 bytes" in body
    status, read, body = call([(b"transfer-encoding", b"chunked")], chunks=300)  # streamed: stops at the limit
    assert status == 413 and read == 3 and b"over the limit of 2,000,000 bytes" in body


@pytest.mark.parametrize("image", [
    np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(np.uint16),  # 16-bit PNG
    np.dstack([np.full((40, 40, 3), 90, np.uint8), np.full((40, 40), 255, np.uint8)]),  # RGBA
])
def test_unusual_but_valid_pngs_are_accepted(client, image):
    assert post(client, png(image)).status_code == 200


def test_cmyk_jpeg_is_accepted(client):
    assert post(client, cmyk_jpeg(), "x.jpg").status_code == 200


def test_monochrome1_dicom_gets_the_prediction_of_its_monochrome2_twin(client):
    pixels = ramp12(64, 64)
    mono2 = post(client, dicom_bytes(pixels), "a.dcm").json()
    mono1 = post(client, dicom_bytes((4095 - pixels).astype(np.uint16), "MONOCHROME1"), "b.dcm").json()
    assert mono1["probabilities"] == pytest.approx(mono2["probabilities"], abs=1e-6)


def test_requests_while_the_model_loads_get_503(tiny_run, monkeypatch):
    from cxr.serve import app as serve

    monkeypatch.setattr(serve.ServedModel, "load", lambda self: None)  # never finishes loading
    client = TestClient(create_app(tiny_run))
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    response = post(client, png(np.zeros((8, 8), np.uint8)))
    assert response.status_code == 503 and "still loading" in response.json()["detail"]


def test_the_micro_batcher_groups_concurrent_requests_and_returns_each_its_own_row():
    import threading

    from cxr.serve.app import MicroBatcher

    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        time.sleep(0.05)  # a model call long enough for other requests to queue up
        return batch.reshape(len(batch), -1).mean(axis=1, keepdims=True)

    batcher = MicroBatcher(predict, max_batch=8, window_ms=20)
    results = {}
    threads = [threading.Thread(target=lambda v=v: results.__setitem__(v, batcher(np.full((4, 4, 1), v, float))))
               for v in range(11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {v: float(r[0]) for v, r in results.items()} == {v: float(v) for v in range(11)}  # 11: padding is used
    assert sum(sizes) >= 11 and max(sizes) > 1 and len(sizes) < 11 and max(sizes) <= 8
    assert all(size & (size - 1) == 0 for size in sizes)  # padded to powers of two: few compiled shapes


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    from cxr.serve.app import MicroBatcher

    calls = []

    def predict(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("model failed")
        return np.ones((len(batch), 2))

    batcher = MicroBatcher(predict, max_batch=4, window_ms=1)
    with pytest.raises(RuntimeError, match="model failed"):
        batcher(np.zeros((2, 2, 1)))
    assert batcher(np.zeros((2, 2, 1))).tolist() == [1.0, 1.0]


def test_batched_and_unbatched_serving_give_the_same_probabilities(tiny_run, sample, client):
    batched = TestClient(create_app(tiny_run, engine="keras", load_in_background=False, max_batch=4))
    assert batched.get("/v1/model").json()["max_batch"] == 4
    image = next((sample / "COVID" / "images").glob("*.png")).read_bytes()
    assert post(batched, image).json()["probabilities"] == pytest.approx(post(client, image).json()["probabilities"],
                                                                          abs=1e-6)


def test_micro_batching_is_on_by_default_only_for_keras_on_an_accelerator(monkeypatch):
    from cxr import backend
    from cxr.serve import app as serve

    assert serve.default_max_batch("onnx") == 1 and serve.default_max_batch("keras") == 1
    monkeypatch.setattr(backend, "accelerators", lambda: ["gpu:0"])
    assert serve.default_max_batch("keras") == 16 and serve.default_max_batch("onnx") == 1


def test_the_explanation_path_is_warmed_up_before_ready(client):
    served = client.app.state.served
    assert served._keras_model is not None  # loaded, and Grad-CAM compiled once, during load()
    info = client.get("/v1/model").json()
    assert info["explanations"] is True and info["explanations_note"] is None


def test_trained_is_the_end_of_training_from_the_run_records_not_a_file_time(tiny_run, tmp_path):
    import json
    import os
    import shutil

    ended = json.loads((tiny_run / "checkpoints" / "state.json").read_text())["saved"]
    copy = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    os.utime(copy / "model.keras", (978_307_200, 978_307_200))  # 2001: as a copy or a backup might leave it
    info = TestClient(create_app(copy, engine="keras", load_in_background=False)).get("/v1/model").json()
    assert info["trained"] == ended
    (tmp_path / "bare").mkdir()
    bare = shutil.copy(tiny_run / "model.keras", tmp_path / "bare" / "model.keras")
    info = TestClient(create_app(bare, engine="keras", load_in_background=False)).get("/v1/model").json()
    assert info["trained"] == ended and info["classes"] == CLASSES  # the file describes itself
    from cxr.model import load_model

    load_model(bare).save(tmp_path / "bare" / "older.keras")  # saved by Keras alone: no description
    info = TestClient(create_app(tmp_path / "bare" / "older.keras", engine="keras",
                                 load_in_background=False)).get("/v1/model").json()
    assert info["trained"] == "unknown" and info["classes"] == ["class_0", "class_1", "class_2", "class_3"]


def test_a_package_is_served_with_the_temperature_and_operating_points_it_carries(tiny_run, tmp_path, sample):
    from cxr.package import package_run
    from cxr.run import Run

    package_run(tiny_run, tmp_path / "package", echo=lambda _: None)
    served = TestClient(create_app(tmp_path / "package", engine="keras", load_in_background=False))
    info = served.get("/v1/model").json()
    assert info["classes"] == CLASSES and info["temperature"] == Run(tiny_run).temperature()[0]
    assert info["operating_points"] == Run(tiny_run).operating_points()[0]
    assert info["temperature_file"] == info["operating_points_file"] == str(tmp_path / "package" / "model.keras")
    tested = Run(tiny_run).evaluation_of()[0].read_metrics()["clinical"]["overall"]["accuracy"]
    assert info["test_metrics"]["overall_accuracy"] == tested  # from the package's metrics.json
    image = next((sample / "COVID" / "images").glob("*.png")).read_bytes()
    assert post(served, image).json()["temperature"] == info["temperature"]


@pytest.fixture(scope="module")
def onnx_only(tiny_run, tmp_path_factory):
    """`cxr export RUN --out exported/model.onnx`, served as the bare file."""
    from cxr.cli import main

    out = tmp_path_factory.mktemp("exported") / "model.onnx"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    return TestClient(create_app(out, load_in_background=False), raise_server_exceptions=False)


@needs_tensorflow  # onnx_only exports to ONNX in this process
def test_a_bare_onnx_model_says_it_cannot_explain_and_refuses_explain_with_409(onnx_only, tiny_run, sample):
    import json

    info = onnx_only.get("/v1/model").json()
    assert info["engine"] == "onnx" and info["classes"] == CLASSES and info["explanations"] is False
    assert "no Keras model beside model.onnx" in info["explanations_note"]
    assert info["trained"] == json.loads((tiny_run / "checkpoints" / "state.json").read_text())["saved"]
    image = next((sample / "COVID" / "images").glob("*.png")).read_bytes()
    refused = post(onnx_only, image, explain="true")
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/json"
    assert "explanations are not available from this server: no Keras model beside" in refused.json()["detail"]
    answered = post(onnx_only, image)
    assert answered.status_code == 200 and answered.json()["predicted"] in CLASSES


@needs_tensorflow  # onnx_only exports to ONNX in this process
def test_an_unexpected_error_is_json_and_the_server_stays_up(onnx_only, monkeypatch, sample):
    served = onnx_only.app.state.served

    def broken(batch):
        raise RuntimeError("the model file was damaged on disk")

    monkeypatch.setattr(served, "predictor", dataclasses.replace(served.predictor, predict=broken))
    image = next((sample / "COVID" / "images").glob("*.png")).read_bytes()
    response = post(onnx_only, image)
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert response.json()["detail"] == "internal server error: RuntimeError: the model file was damaged on disk"
    monkeypatch.undo()
    assert post(onnx_only, image).status_code == 200
