"""Small models on disk for tests of what surrounds the pipeline (batch, the Python API): a whole
`compressor run` of one costs a fraction of the sample models' (most of a run is packing its
candidates, and these hold a few thousand weights, not hundreds of thousands)."""

from pathlib import Path

import graphs
import numpy as np
import onnx

from compressor.evaluate import run_model


def labeled_mlp(folder: Path, stem: str = "mlp", samples: int = 256) -> tuple[Path, Path]:
    """graphs.mlp() as ``<stem>.onnx`` and ``<stem>_test.npz``: random inputs labeled with the
    model's own top-1 (accuracy 100 %), so a run is in accuracy mode."""
    model = graphs.mlp()
    inputs = graphs.make_inputs(model, samples, seed=0)
    labels = np.argmax(run_model(model, inputs)[0], axis=1)
    path, data = folder / f"{stem}.onnx", folder / f"{stem}_test.npz"
    onnx.save(model, path)
    np.savez(data, **inputs.inputs, y=labels)
    return path, data


def conv_net(folder: Path, stem: str = "conv") -> Path:
    """graphs.conv_net() (a LeNet-like CNN) as ``<stem>.onnx``, without data."""
    path = folder / f"{stem}.onnx"
    onnx.save(graphs.conv_net(), path)
    return path
