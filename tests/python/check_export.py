#!/usr/bin/env python3
"""Checks an exported fmnist model with real consumers (driven by tests/export.rs).

    check_export.py onnx MODEL.onnx LOGITS.npy TOLERANCE
        onnx.checker (full_check) passes; onnxruntime on the 10,000 test images gives the same
        predicted class as fmnist for >= 99.9% of images and logits within TOLERANCE of
        fmnist's (LOGITS.npy from `fmnist eval --logits`); the metadata names the classes.
    check_export.py safetensors MODEL.safetensors LOGITS.npy TOLERANCE
        the linear model or MLP computed with numpy from the safetensors and the architecture
        JSON beside them gives fmnist's logits within TOLERANCE.
The ONNX tolerance is absolute; the safetensors one scales with a logit's size above 1 (see
`compare`).
Prints one JSON line with the figures; exits 1 when a check fails.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from fmnist_data import load_arrays  # noqa: E402


def test_images() -> np.ndarray:
    images = load_arrays()[2]
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def compare(logits: np.ndarray, expected: np.ndarray, tolerance: float, scaled: bool) -> dict:
    """Classes agree on >= 99.9% of images, and every logit is within `tolerance` of fmnist's;
    with `scaled`, a tolerance scaled by the logit's size above 1 (an f32 logit of 25 is good to
    about 2e-6 only, and numpy sums in another order than fmnist)."""
    agree = float((logits.argmax(1) == expected.argmax(1)).mean())
    diff = np.abs(logits - expected)
    worst = float(diff.max())
    relative = float((diff / np.maximum(1.0, np.abs(expected))).max())
    within = (relative if scaled else worst) <= tolerance
    return {"agreement": agree, "max_abs_diff": worst, "max_scaled_diff": relative,
            "ok": agree >= 0.999 and within}


def check_onnx(path: str, expected: np.ndarray, tolerance: float) -> dict:
    import onnx
    import onnxruntime

    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    logits, probabilities = session.run(["logits", "probabilities"], {"image": test_images()})
    result = compare(logits, expected, tolerance, scaled=False)
    sums = probabilities.sum(1)
    result.update(inputs=inputs, outputs=outputs, opset=model.opset_import[0].version,
                  classes=json.loads(meta.get("class_names", "[]")), recipe="recipe" in meta,
                  probabilities_sum_to_one=bool(np.allclose(sums, 1.0, atol=1e-5)))
    result["ok"] = (result["ok"] and inputs == ["image"] and outputs == ["logits", "probabilities"]
                    and len(result["classes"]) == 10 and result["recipe"]
                    and result["probabilities_sum_to_one"])
    return result


def activation(name: str, x: np.ndarray) -> np.ndarray:
    from math import erf, sqrt
    if name == "relu":
        return np.maximum(x, 0)
    if name == "tanh":
        return np.tanh(x)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if name == "elu":
        return np.where(x > 0, x, np.expm1(x))
    if name == "selu":
        return 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x))
    if name == "leaky-relu":
        return np.where(x > 0, x, 0.01 * x)
    if name == "gelu":
        return x * 0.5 * (1 + np.vectorize(erf)(x / sqrt(2)))
    raise SystemExit(f"unknown activation {name}")


def check_safetensors(path: str, expected: np.ndarray, tolerance: float) -> dict:
    from safetensors.numpy import load_file

    weights = load_file(path)
    architecture = json.loads(Path(path).with_suffix(".json").read_text())
    model, norm = architecture["model"], architecture["normalization"]
    x = (test_images() - norm["mean"]) / norm["std"]
    x = x.reshape(len(x), -1).astype(np.float64)
    hidden = model["hidden"] if model["arch"] == "mlp" else []
    for i in range(len(hidden)):
        x = x @ weights[f"hidden.{i}.weight"].T + weights[f"hidden.{i}.bias"]
        if model["batch_norm"]:
            p = f"norms.{i}."
            x = ((x - weights[p + "running_mean"]) / np.sqrt(weights[p + "running_var"] + 1e-5)
                 * weights[p + "weight"] + weights[p + "bias"])
        x = activation(model["activation"], x)
    logits = x @ weights["output.weight"].T + weights["output.bias"]
    result = compare(logits.astype(np.float32), expected, tolerance, scaled=True)
    result["tensors"] = sorted(weights)
    return result


def main():
    kind, path, logits_path, tolerance = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    expected = np.load(logits_path)
    check = check_onnx if kind == "onnx" else check_safetensors
    result = check(path, expected, tolerance)
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
