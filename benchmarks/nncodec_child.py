"""NNCodec's side of `bench_nncodec.py`: runs inside NNCodec's own venv (benchmarks/.cache/nncodec-venv,
numpy < 2, torch), never in the project's.

    nncodec-venv/bin/python benchmarks/nncodec_child.py     # requests on stdin, one JSON object a line

A request ``{"weights": W.npz, "names": [...], "args": {...}, "out": D.npz}`` codes the arrays
``t0, t1, ...`` of W.npz, under their tensor names, as one dict with
``nncodec.nn.encode(dict_of_arrays, args)``, decodes the bitstream with ``nncodec.nn.decode`` and
writes the decoded arrays (same keys, same shapes) to D.npz; the answer line is
``{"bytes": len(bitstream), "encode_s": ..., "decode_s": ...}`` (or ``{"error": ...}``).  Answers go to
the original stdout; everything NNCodec prints goes to stderr.

The registry's torchvision is a CUDA build whose C ops do not load beside the CPU torch
('operator torchvision::nms does not exist' at import), and the dict API never uses it: NNCodec
only imports it for its dataset and model-zoo helpers.  So torchvision is not installed in the
venv, and a stub module stands in for it here (any attribute is an inert class) before nncodec
is imported.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import sys
import tempfile
import time
import types


class _Inert:
    """Stands in for any torchvision class or function: constructing or calling it does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return self


def _stub_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__path__ = []

    def getattr_(attr: str):
        if attr.startswith("__"):  # inspect and import machinery probe dunders: those must not exist
            raise AttributeError(attr)
        return _Inert

    module.__getattr__ = getattr_
    return module


def stub_torchvision() -> None:
    root = _stub_module("torchvision")
    sys.modules["torchvision"] = root
    for sub in ("transforms", "datasets", "models", "ops", "utils", "io"):
        module = _stub_module(f"torchvision.{sub}")
        sys.modules[module.__name__] = module
        setattr(root, sub, module)


def main() -> int:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # NNCodec prints progress: keep it off the answer channel
    sys.stdout = sys.stderr
    stub_torchvision()
    import numpy as np
    from nncodec.nn import decode, encode

    cache: dict[str, dict] = {}
    results = tempfile.mkdtemp(prefix="nncodec-")  # encode() also writes the bitstream to a file
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            path, names = request["weights"], request["names"]
            if path not in cache:
                with np.load(path) as f:
                    arrays = [np.ascontiguousarray(f[f"t{i}"], dtype=np.float32) for i in range(len(names))]
                cache = {path: dict(zip(names, arrays))}
            weights = cache[path]
            args = {"verbose": False, "results": results, **request["args"]}
            t0 = time.perf_counter()
            bitstream = encode(weights, args=args)
            t1 = time.perf_counter()
            decoded = decode(bitstream, args={"verbose": False})
            t2 = time.perf_counter()
            out = {
                f"t{i}": np.asarray(decoded[k], dtype=np.float32).reshape(v.shape)
                for i, (k, v) in enumerate(weights.items())
            }
            np.savez(request["out"], **out)
            answer = {"bytes": len(bitstream), "encode_s": round(t1 - t0, 3), "decode_s": round(t2 - t1, 3)}
        except Exception as e:  # noqa: BLE001 - reported to the parent, which records it
            answer = {"error": f"{type(e).__name__}: {e}"}
        answers.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
