"""`cxr serve`: a REST API and a web page for a trained model.

- `app`: the FastAPI application (`create_app`, `serve`) and the served model.
- `batcher`: micro-batching of concurrent requests (`MicroBatcher`).
- `static/index.html`: the page, with no external assets.
"""

__all__: list[str] = []
