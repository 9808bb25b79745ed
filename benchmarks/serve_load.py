"""Load on `cxr serve`: 20 concurrent clients x 50 requests with real radiographs, with and without
micro-batching, and one client alone as the baseline; throughput, p50/p99 latency and errors (which must
be 0).

The served model is the real DenseNet169 classifier at 224 px with random weights, exported to ONNX as
`cxr export` does (the engine a CPU server uses; `--engine keras` serves the .keras file instead).
The server runs as `cxr serve` in its own process on loopback; the clients are threads of this script
on the same machine, so they share its cores. Each phase stops by itself at --max-seconds.

    .venv/bin/python benchmarks/serve_load.py [--clients 20] [--requests 50] [--max-seconds 240]

Prints a table and writes benchmarks/results/serve_load-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from common import machine_info, save_result  # noqa: E402

SAMPLE = Path(os.environ.get("CXR_SAMPLE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-sample"
                             / "COVID-19_Radiography_Dataset"))
CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def make_run(folder: Path) -> Path:
    import keras

    from cxr.inference.export import export_onnx
    from cxr.model import build_model

    keras.utils.set_random_seed(0)
    build_model(len(CLASSES), 224, weights="none").save(folder / "model.keras")
    (folder / "config.yaml").write_text(yaml.safe_dump({"classes": CLASSES}))
    export_onnx(folder, echo=lambda _: None)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def phase(run: Path, images: list[bytes], max_batch: int, clients: int, requests: int, max_seconds: float,
          engine: str) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cxr", "serve", str(run), "--port", str(port), "--max-batch", str(max_batch),
               "--engine", engine]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the server did not become ready in 120 s")
        for image in images[:3]:  # warm-up
            httpx.post(f"{url}/v1/predict", files={"file": ("x.png", image)}, timeout=60)
        latencies: list[float] = []
        statuses: list[int] = []
        lock = threading.Lock()
        stop_at = time.time() + max_seconds

        def client(index: int) -> None:
            with httpx.Client(timeout=60) as session:
                for n in range(requests):
                    if time.time() > stop_at:
                        return
                    start = time.perf_counter()
                    try:
                        status = session.post(f"{url}/v1/predict", files={
                            "file": ("x.png", images[(index * requests + n) % len(images)])}).status_code
                    except httpx.HTTPError:
                        status = 0
                    with lock:
                        latencies.append((time.perf_counter() - start) * 1000)
                        statuses.append(status)

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"max_batch": max_batch, "requests": len(statuses), "errors": sum(s != 200 for s in statuses),
            "seconds": wall, "requests_per_s": len(statuses) / wall,
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            "mean_ms": statistics.mean(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=240)
    parser.add_argument("--engine", choices=["onnx", "keras"], default="onnx")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    files = sorted(SAMPLE.glob("*/images/*.png"))[:200]
    if not files:
        raise SystemExit(f"no sample images under {SAMPLE}; set CXR_SAMPLE_DATA")
    images = [f.read_bytes() for f in files]
    with tempfile.TemporaryDirectory(prefix="cxr-serve-load-") as name:
        run = make_run(Path(name))
        # The one-client phase is the baseline that shows whether throughput grows with load.
        phases = (("micro-batching (up to 16, 5 ms)", 16, args.clients), ("no batching (thread pool)", 1, args.clients),
                  ("one client, no batching", 1, 1))
        rows = {label: {"clients": clients, **phase(run, images, max_batch, clients, args.requests, args.max_seconds,
                                                    args.engine)}
                for label, max_batch, clients in phases}
    import onnxruntime

    print(f"\n{args.clients} clients x {args.requests} requests, DenseNet169 224 px on {args.engine}, "
          f"{os.cpu_count()} cores shared by server and clients")
    print(f"{'server':<34}{'requests':>9}{'errors':>8}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for label, row in rows.items():
        print(f"{label:<34}{row['requests']:>9}{row['errors']:>8}{row['requests_per_s']:>8.1f}"
              f"{row['p50_ms']:>9.0f}{row['p99_ms']:>9.0f}")
    save_result(args.out, "serve_load", {"benchmark": "serve_load", "engine": args.engine, "clients": args.clients,
                                         "requests_per_client": args.requests, "images": len(images),
                                         "machine": machine_info(onnxruntime=onnxruntime.__version__),
                                         "phases": rows})


if __name__ == "__main__":
    main()
