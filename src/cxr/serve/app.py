"""`cxr serve`: a REST API for a trained model, safe by default.

Loopback only unless told otherwise; models load with Keras' safe mode or from ONNX; every upload
is checked by content (not by name), against a size limit before it is read whole and a pixel limit
before it is decoded, and a bad request gets a JSON error while the server stays up.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from cxr import files
from cxr.data.images import decode_gray, image_format, resize_square
from cxr.errors import ImageError
from cxr.evaluation.metrics import HEADLINE
from cxr.inference.tta import check_tta
from cxr.run import Run
from cxr.serve.batcher import MicroBatcher

__all__ = ["ServedModel", "check_upload", "create_app", "default_max_batch", "serve"]

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # the form's boundaries and headers around the file, allowed on top of the limit
MAX_PIXELS = 60_000_000  # about 7,700 x 7,700: any radiograph; a decompression bomb is far larger


class ServedModel:
    """The model behind the API, loaded in the background so that /healthz answers at once."""

    def __init__(self, model: str | os.PathLike, engine: str = "auto", max_batch: int | None = None,
                 window_ms: float = 5.0, echo=print, operating_points: str | os.PathLike | None = None,
                 tta: str = "none"):
        self.max_batch, self.window_ms, self.echo, self.tta = max_batch, window_ms, echo, tta
        self.notes: list[str] = []  # what a user of these answers should know: a stale export, a TTA mismatch
        self.operating_points_source = operating_points  # None: the run's own, when an evaluation chose them
        self.operating_points: dict | None = None
        self.operating_points_file: Path | None = None
        self.batcher: MicroBatcher | None = None
        self.model_path = Run.model_of(model)
        self.run = Run.containing(self.model_path)
        self.engine = engine
        self.predictor = None
        self.error: str | None = None
        self.temperature: float | None = None
        self.temperature_file: Path | None = None
        self.explain_note: str | None = None  # why Grad-CAM is unavailable; None when it is
        self.model_id = ""
        self._keras_model = None
        self._lock = threading.Lock()
        self.loaded = threading.Event()

    def load(self) -> None:
        """Load the model and pay every first-call cost (compiling prediction and, where there is a Keras
        model, Grad-CAM) before /readyz says ready.
        """
        from cxr.inference.engines import load_predictor
        from cxr.inference.temperature import find_temperature
        from cxr.inference.tta import fitted_mismatch_notes

        try:
            self.predictor = load_predictor(self.model_path, self.engine, echo=self.notes.append, tta=self.tta)
            self.model_id = files.sha256(self.predictor.path)[:12]  # hashed once, not per request
            size = self.predictor.image_size
            blank = np.zeros((1, size, size, 1), np.uint8)
            self.predictor.predict(blank)
            if self.max_batch is None:
                self.max_batch = default_max_batch(self.predictor.engine)
            if self.max_batch > 1:
                self.batcher = MicroBatcher(self.predictor.predict, self.max_batch, self.window_ms)
            found = find_temperature(self.model_path)
            if found:
                self.temperature, self.temperature_file = found
            self._load_operating_points()
            self.notes += fitted_mismatch_notes(self.tta, self.temperature_file, self.operating_points)
            self.explain_note = self._explain_unavailable()
            if self.explain_note is None:
                try:  # compiles Grad-CAM now, so that the first explain=true request is as fast as the rest
                    self.explain(blank)
                except Exception as error:  # predictions still work; explanations are switched off, saying why
                    self.explain_note = f"Grad-CAM failed on this model ({type(error).__name__}: {error})"
        except Exception as error:  # reported by /readyz and every request instead of crashing the server
            self.error = f"{type(error).__name__}: {error}"
        self.loaded.set()
        self.echo(self.describe())

    def _load_operating_points(self) -> None:
        from cxr.inference.points import check_classes, load_operating_points

        if self.operating_points_source is not None:
            self.operating_points, self.operating_points_file = load_operating_points(self.operating_points_source,
                                                                                      self.predictor)
        elif self.run is not None and (found := self.run.operating_points(self.model_path)) is not None:
            check_classes(found[0], self.predictor.classes)
            self.operating_points, self.operating_points_file = found
        elif self.run is None and (points := self.predictor.description.get("operating_points")):
            check_classes(points, self.predictor.classes)  # written into a handed-on model file
            self.operating_points, self.operating_points_file = points, self.predictor.path

    def describe(self) -> str:
        """One line for the console: what is served, and with which temperature and explanations."""
        if self.error:
            return f"cxr serve: the model could not be loaded: {self.error}"
        temperature = (f"temperature {self.temperature:.3f} from {self.temperature_file}" if self.temperature_file
                       else "no temperature (no evaluation of this model fitted one)")
        explain = "Grad-CAM on" if self.explain_note is None else f"Grad-CAM off ({self.explain_note})"
        points = (f"operating points from {self.operating_points_file}" if self.operating_points_file
                  else "no operating points")
        tta = "; test-time flip" if self.tta == "flip" else ""
        return "\n".join([f"cxr serve: {self.predictor.path} on {self.predictor.engine}{tta}; {temperature}; {points}; "
                          f"{explain}", *self.notes])

    def _explain_unavailable(self) -> str | None:
        keras_path = Run.keras_of(self.model_path)
        if not keras_path.is_file():
            return (f"no Keras model beside {self.model_path.name}: Grad-CAM needs {keras_path.name} "
                    "(an ONNX model has no gradients)")
        try:
            import keras  # noqa: F401
        except ImportError:
            return "Keras is not installed: Grad-CAM needs it (pip install 'cxr[tensorflow-cpu]')"
        return None

    def keras_model(self):
        """The Keras model, for Grad-CAM (ONNX has no gradients); loaded on first use."""
        with self._lock:
            if self._keras_model is None:
                from cxr.model import load_model

                self._keras_model = load_model(Run.keras_of(self.model_path))
            return self._keras_model

    def explain(self, batch: np.ndarray, class_index: int | None = None) -> np.ndarray:
        """The Grad-CAM heat map of one (1, size, size, 1) image for `class_index` (default: the Keras model's
        predicted class; the server passes the class it answers with, which ONNX or INT8 may differ on).
        """
        from cxr.inference.explain import gradcam

        heat, _ = gradcam(self.keras_model(), batch, class_index)
        return heat[0]

    def info(self) -> dict[str, Any]:
        predictor = self.predictor
        info = {"model": str(self.model_path), "model_file": str(predictor.path), "model_id": self.model_id,
                "engine": predictor.engine, "tta": self.tta, "notes": self.notes, "classes": predictor.classes,
                "input_size": predictor.image_size,
                "precision": predictor.precision, "temperature": self.temperature,
                "temperature_file": str(self.temperature_file) if self.temperature_file else None,
                "operating_points": self.operating_points,
                "operating_points_file": str(self.operating_points_file) if self.operating_points_file else None,
                "max_batch": self.max_batch, "explanations": self.explain_note is None,
                "explanations_note": self.explain_note, "trained": self.trained()}
        evaluation = self.run.latest_eval() if self.run else None
        metrics = evaluation.read_metrics() if evaluation else None
        beside = self.model_path.parent / "metrics.json"  # a `cxr package` folder keeps its evaluation's
        if self.run is None and beside.is_file():
            metrics = json.loads(beside.read_text(encoding="utf-8"))
        if metrics:  # the headline metrics, as <group>_<name>: {value, ci_low, ci_high}
            clinical = metrics.get("clinical") or {}
            info["test_metrics"] = {"images": metrics["splits"].get("test", {}).get("images"),
                                    **{f"{group}_{name}": clinical.get(group, {}).get(name)
                                       for _, group, name in HEADLINE}}
        return info

    def trained(self) -> str:
        """When training ended, from the run's own records (not a file time, which a copy changes); for a
        model file without its run, what the file records of itself; otherwise "unknown".
        """
        summary = self.run.training_summary() if self.run else None
        if summary and summary.get("ended"):
            return summary["ended"]
        carried = (self.predictor.description.get("trained") or {}).get("ended")
        return carried or self.predictor.metadata.get("trained") or "unknown"


def default_max_batch(engine: str) -> int:
    """16 for Keras on a GPU, whose throughput grows with batch size; 1 on CPU (and for ONNX
    Runtime, which runs on the CPU), where one image already keeps every core busy and batching only
    adds waiting (benchmarks/serve_load.py measured 0.75-1.01x the throughput on 2 cores).
    """
    if engine != "keras":
        return 1
    from cxr.backend import accelerators

    return 16 if accelerators() else 1


def image_size_of(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, without decoding the pixels."""
    if image_format(data) == "DICOM":
        import pydicom

        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        return int(getattr(header, "Columns", 0)), int(getattr(header, "Rows", 0))
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def check_upload(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, str]:
    """(status, message) for an upload that must be refused, or (200, kind) for one to decode."""
    if not data:
        return 422, "empty file"
    kind = image_format(data)
    if kind is None:
        return 415, "not a PNG, JPEG or DICOM image (judged by content, not by file name)"
    try:
        size = image_size_of(data)
    except Image.DecompressionBombError as error:  # Pillow's own guard, for sizes far past ours
        return 422, f"{kind} image is over the pixel limit ({error})"
    except Exception as error:
        return 422, f"{kind} header cannot be read ({error})"
    if size and size[0] * size[1] > max_pixels:
        return 422, f"{kind} image of {size[0]} x {size[1]} pixels is over the limit of {max_pixels:,} pixels"
    return 200, kind


def create_app(model: str | os.PathLike, engine: str = "auto", max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_pixels: int = MAX_PIXELS, load_in_background: bool = True, max_batch: int | None = None,
               window_ms: float = 5.0, echo=None, operating_points: str | os.PathLike | None = None,
               tta: str = "none") -> FastAPI:
    """The FastAPI application serving a model.

    Args:
        model: a run folder, a .keras or a .onnx file.
        engine: auto, keras or onnx (see cxr.inference.engines.load_predictor).
        max_upload_bytes: the largest upload; a larger one is refused before it is read whole (a request
            body over it and MULTIPART_OVERHEAD by BodyLimit, before the form is parsed).
        max_pixels: the largest image; a larger one is refused from its header, before decoding.
        load_in_background: answer /healthz at once and load the model in a thread (False: load first).
        max_batch: > 1 micro-batches concurrent requests (see MicroBatcher); 1 runs each request's image
            alone in the server's thread pool; None chooses by device (default_max_batch).
        window_ms: how long the first request of a micro-batch waits for others.
        echo: prints what is served once it has loaded (default: standard error, beside uvicorn's log).
        operating_points: a run folder or operating_points.json whose per-class thresholds each answer
            applies (default: the served run's own, when one of its evaluations chose them for this model).
        tta: "flip" averages each image's probabilities with its mirror image's (as `cxr predict --tta flip`).

    Returns:
        The application (run it with uvicorn, or `serve`).
    """
    echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    served = ServedModel(model, engine, max_batch, window_ms, echo, operating_points, check_tta(tta))
    app = FastAPI(title="cxr", description="Chest X-ray classification. Research use only, not a medical device.")
    app.state.served = served
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(BodyLimit, limit=max_upload_bytes + MULTIPART_OVERHEAD, upload_limit=max_upload_bytes)
    if load_in_background:
        threading.Thread(target=served.load, daemon=True).start()
    else:
        served.load()
    _add_status_routes(app, served)
    _add_predict_route(app, served, max_upload_bytes, max_pixels)
    return app


class BodyLimit:
    """Refuse a request whose body is over `limit` bytes before it is read whole: at once by its
    Content-Length, or as soon as a streamed (chunked) body passes the limit; the upload's own size is
    checked exactly once it is read. Without it Starlette receives and spools the whole multipart body
    first. (FastAPI's own `max_body_size` answers in plain text; every error of this API is JSON.)
    """

    def __init__(self, app, limit: int, upload_limit: int):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = JSONResponse({"detail": f"upload is over the limit of {self.upload_limit:,} bytes"}, 413)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await refusal(scope, receive, send)
            return
        received, over, answered = 0, False, False

        async def limited():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                over = received > self.limit
                if over:  # the form parser fails on it; its error response is replaced by the refusal
                    raise HTTPException(413)
            return message

        async def replacing(message) -> None:
            nonlocal answered
            if not over:
                await send(message)
            elif message["type"] == "http.response.start":
                answered = True
                await refusal(scope, receive, send)

        try:
            await self.app(scope, limited, replacing)
        except Exception:
            if not over:
                raise
            if not answered:
                await refusal(scope, receive, send)


def _unexpected(request: Request, error: Exception) -> JSONResponse:
    """Every error a client sees is JSON, an unexpected one too (the traceback goes to the log)."""
    return JSONResponse({"detail": f"internal server error: {type(error).__name__}: {error}"}, status_code=500)


def _ready(served: ServedModel) -> ServedModel:
    if not served.loaded.is_set():
        raise HTTPException(503, "the model is still loading; try again in a few seconds")
    if served.error:
        raise HTTPException(503, f"the model could not be loaded: {served.error}")
    return served


def _add_status_routes(app: FastAPI, served: ServedModel) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse((Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8"))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        if served.loaded.is_set() and not served.error:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "loading" if not served.loaded.is_set() else "failed",
                             "detail": served.error}, status_code=503)

    @app.get("/v1/model")
    def model_info() -> dict:
        return _ready(served).info()


def _add_predict_route(app: FastAPI, served: ServedModel, max_upload_bytes: int, max_pixels: int) -> None:
    @app.post("/v1/predict")
    def predict(file: UploadFile = File(...), explain: bool = Query(False)) -> dict:  # noqa: B008
        current = _ready(served)
        if explain and current.explain_note is not None:
            raise HTTPException(409, f"explanations are not available from this server: {current.explain_note}")
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"upload is over the limit of {max_upload_bytes:,} bytes")
        status, message = check_upload(data, max_pixels)
        if status != 200:
            raise HTTPException(status, message)
        try:
            gray = decode_gray(data, file.filename or "upload")
        except ImageError as error:
            raise HTTPException(422, error.reason) from None
        return _answer(current, gray, explain)


def _answer(served: ServedModel, gray: np.ndarray, explain: bool) -> dict[str, Any]:
    """The prediction for one decoded image: probabilities, calibrated ones, and the overlay if asked."""
    started = time.perf_counter()
    predictor = served.predictor
    batch = resize_square(gray, predictor.image_size)[None, ..., None]
    probabilities = (served.batcher(batch[0]) if served.batcher else np.asarray(predictor.predict(batch))[0])
    result: dict[str, Any] = {
        "model_id": served.model_id, "engine": predictor.engine,
        "predicted": predictor.classes[int(probabilities.argmax())], "probability": float(probabilities.max()),
        "probabilities": dict(zip(predictor.classes, map(float, probabilities), strict=True)),
    }
    if served.temperature is not None:
        from cxr.inference.temperature import apply_temperature

        scaled = apply_temperature(probabilities[None], served.temperature)[0]
        result["calibrated_probabilities"] = dict(zip(predictor.classes, map(float, scaled), strict=True))
        result["temperature"] = served.temperature
    if served.operating_points is not None:  # thresholds on the model's own probabilities, as chosen
        from cxr.inference.points import decide, describe

        calls = decide(probabilities, served.operating_points)[0]
        result["operating_points"] = {name: {**call, "text": describe(call)} for name, call in calls.items()}
    if explain:
        from cxr.inference.explain import overlay

        ok, png = cv2.imencode(".png", overlay(gray, served.explain(batch, int(probabilities.argmax()))))
        result["gradcam_png_base64"] = base64.b64encode(png.tobytes()).decode("ascii")
        result["explained_class"] = result["predicted"]
    result["latency_ms"] = (time.perf_counter() - started) * 1000
    return result


def serve(model: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, engine: str = "auto",
          max_upload_bytes: int = MAX_UPLOAD_BYTES, max_batch: int | None = None, window_ms: float = 5.0,
          operating_points: str | os.PathLike | None = None, tta: str = "none") -> None:
    """Serve `model` with uvicorn until stopped (see create_app); warn when reachable from elsewhere."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}, reachable from other machines; there is no authentication")
    uvicorn.run(create_app(model, engine, max_upload_bytes, max_batch=max_batch, window_ms=window_ms,
                           operating_points=operating_points, tta=tta), host=host, port=port, log_level="info")

