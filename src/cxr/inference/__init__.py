"""Inference: a trained model applied to new images, on Keras or ONNX Runtime.

- `engines`: one `Predictor` record over Keras or ONNX Runtime (`load_predictor`).
- `predict`: probabilities for files and folders (`predict_files`).
- `explain`: Grad-CAM maps and overlays (`gradcam`, `explain_files`).
- `export`: the ONNX file, checked against Keras before it is written (`export_onnx`).
- `temperature`: the one way a fitted temperature is applied, and where it is found.

Nothing here imports Keras until the Keras engine is chosen, so ONNX-only machines can predict.
"""

__all__: list[str] = []
