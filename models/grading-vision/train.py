"""Train `grading-vision`: fresh / bruise / rot / scab from one RGB photo of an apple, plus an
int8 (static, calibrated) variant.

    python models/grading-vision/train.py [--data DIR] [--seed N] [--skip-cv] [--epochs N]

The images carry a capture-condition shortcut (fresh: white studio background; rot: cut out on
white with black corners; bruise/scab: orchard photos). Counter-measures and checks:
- a fruit mask per image (OpenCV GrabCut from a centre rectangle, training only; close-ups
  where GrabCut keeps < 15 % of the frame fall back to a centred ellipse);
- training replaces the background behind the fruit with random colours, noise or blurred
  pieces of other photos, so the background carries no class;
- every held-out fold is also scored with the background masked to grey (`masked`) and with
  the fruit masked out (`background_only`, which should fall towards chance).

Validation: 5-fold StratifiedGroupKFold by the manifest's `group` (augmented copies and the
same physical apple never straddle a split). The training recipe is fixed in this file (chosen
once on a selection split inside fold 1's training part, recorded as SELECTION); it is not
tuned per fold. Each fold's model is also quantized (int8, calibrated on that fold's
training images) and scored, so the int8 numbers are cross-validated too.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _train_common as C  # noqa: E402

NAME = "grading-vision"
VERSION = "1.0.0"
MANIFEST_SHA256 = "0192e3acd0ebd0f6af58d635b252fd81b79e9db77281dc70cda59684a9fb2d0b"
CLASSES = ["fresh", "bruise_defect", "rot_defect", "scab_defect"]
HEALTHY = "fresh"
SIZE = 96  # model input, pixels
CACHE = 128  # training images are cached at this size for random crops
MASK_GREY = 128
EPOCHS = 60
BATCH = 32
# chosen on a selection split inside CV fold 1's training part (see SELECTION)
# background_p: images with a GrabCut mask; background_p_fallback: ellipse-mask close-ups
RECIPE = {
    "background_p": 1.0,
    "background_p_fallback": 0.5,
    "crop_min": 0.8,
    "rotate": "90",
    "jitter": 0.15,
}
SELECTION = {
    "split": "StratifiedGroupKFold(4, shuffle, seed 7) inside the training part of outer fold 1: "
    "507 train / 172 validation images; outer fold 1's held-out images were never used",
    "compared (4-class accuracy on that validation split; masked in brackets)": {
        "bg 0.7, crop 0.65-1, free rotation, jitter 0.3, 30 epochs": "0.843 (0.578)",
        "bg 0.5, crop 0.8-1, 90-degree rotations, jitter 0.15, 30 epochs": "0.876 (0.805)",
        "same, 60 epochs (candidate v1)": "0.935 (0.854)",
        "bg 0.8, crop 0.8-1, 90-degree rotations, jitter 0.15, 60 epochs": "0.886 (0.816)",
    },
    "after_cv": "candidate v1 (bg 0.5 everywhere) was cross-validated in full: 4-class 0.815, "
    "healthy-vs-defective 0.9325, but with the background masked healthy recall fell to "
    "0.225 (the studio-background shortcut). The shipped recipe therefore always replaces the "
    "background where GrabCut found the fruit (p 1.0; 0.5 for ellipse-mask close-ups). This "
    "change was made after seeing the CV diagnostics, so the CV numbers below are slightly "
    "optimistic for this one choice.",
    "note": "the other outer folds' held-out images overlap the selection split",
}
SLICE_PER_CLASS = 10  # the first images of each class (manifest order) for the test's check
CALIB_IMAGES = 200


def load_manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(r["class"] in CLASSES for r in rows)
    return rows


def decode(path: Path, size: int):
    """The runtime decoding (see manifest `inputs.preprocessing`): RGB, bilinear resize."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def to_input(u8: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] float32 in [0, 1] (the model's input)."""
    return np.ascontiguousarray(u8.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def fruit_mask(img: np.ndarray) -> tuple[np.ndarray, bool]:
    """GrabCut from a centre rectangle; (mask, fell_back_to_ellipse)."""
    import cv2

    h, w = img.shape[:2]
    m = int(0.06 * w)
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)
    cv2.grabCut(
        cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
        mask,
        (m, m, w - 2 * m, h - 2 * m),
        bgd,
        fgd,
        4,
        cv2.GC_INIT_WITH_RECT,
    )
    fg = np.isin(mask, [cv2.GC_FGD, cv2.GC_PR_FGD])
    if fg.mean() >= 0.15:
        return fg, False
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1, True


def load_images(root: Path, rows: list[dict], cache_dir: Path):
    """Runtime-decoded eval images, training images at CACHE px and fruit masks.

    Cached (git-ignored) in `cache_dir`, keyed by the dataset manifest's sha256."""
    from PIL import Image

    cache = cache_dir / f"images-{MANIFEST_SHA256[:16]}-{SIZE}-{CACHE}.npz"
    if cache.exists():
        z = np.load(cache)
        C.log(f"loaded decoded images and masks from {cache.name}")
        return z["ev"], z["big"], z["masks"], z["small_masks"], z["fallback"]
    n = len(rows)
    ev = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    big = np.zeros((n, CACHE, CACHE, 3), np.uint8)
    masks = np.zeros((n, CACHE, CACHE), bool)
    fallback = np.zeros(n, bool)
    for i, r in enumerate(rows):
        p = root / r["path"]
        ev[i] = decode(p, SIZE)
        big[i] = decode(p, CACHE)
        masks[i], fallback[i] = fruit_mask(big[i])
        if (i + 1) % 200 == 0:
            C.log(f"decoded and masked {i + 1}/{n} images")
    small_masks = np.stack(
        [
            np.asarray(
                Image.fromarray(m.astype(np.uint8) * 255).resize(
                    (SIZE, SIZE), Image.Resampling.NEAREST
                )
            )
            > 127
            for m in masks
        ]
    )
    cache_dir.mkdir(exist_ok=True)
    np.savez_compressed(
        cache, ev=ev, big=big, masks=masks, small_masks=small_masks, fallback=fallback
    )
    return ev, big, masks, small_masks, fallback


class Augment:
    """Random crop/flip/rotate/colour jitter and background replacement (numpy + Pillow)."""

    def __init__(self, big, masks, fallback, pool, seed: int, recipe: dict):
        self.big, self.masks, self.pool, self.recipe = big, masks, pool, recipe
        self.fallback = fallback
        self.rng = np.random.default_rng(seed)

    def background(self, shape) -> np.ndarray:
        from PIL import Image, ImageFilter

        rng = self.rng
        kind = rng.integers(0, 5)
        if kind == 0:  # solid colour
            return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), shape).copy()
        if kind == 1:  # white-ish or black-ish, like the studio shots
            v = rng.choice([rng.integers(220, 256), rng.integers(0, 35)])
            return np.full(shape, v, np.uint8)
        if kind == 2:  # coloured noise
            base = rng.integers(0, 256, 3)
            return np.clip(base + rng.normal(0, 40, shape), 0, 255).astype(np.uint8)
        if kind == 3:  # vertical gradient
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            t = np.linspace(0, 1, shape[0])[:, None, None]
            return np.broadcast_to(a + (b - a) * t, shape).astype(np.uint8).copy()
        # a heavily blurred, random photo from this training set (any class)
        j = rng.choice(self.pool)
        im = Image.fromarray(self.big[j]).filter(ImageFilter.GaussianBlur(10))
        return np.asarray(im.resize((shape[1], shape[0])))

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        from PIL import Image, ImageEnhance

        rng, rc = self.rng, self.recipe
        out = np.zeros((len(idx), SIZE, SIZE, 3), np.uint8)
        for k, i in enumerate(idx):
            img = self.big[i]
            p_bg = rc["background_p_fallback"] if self.fallback[i] else rc["background_p"]
            if rng.random() < p_bg:
                m = self.masks[i][..., None]
                img = np.where(m, img, self.background(img.shape))
            pil = Image.fromarray(img)
            s = rng.uniform(rc["crop_min"], 1.0) * CACHE
            x0, y0 = rng.uniform(0, CACHE - s, 2)
            pil = pil.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=(x0, y0, x0 + s, y0 + s))
            if rng.random() < 0.5:
                pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if rc["rotate"] == "free":
                pil = pil.rotate(
                    float(rng.uniform(0, 360)),
                    Image.Resampling.BILINEAR,
                    fillcolor=tuple(int(v) for v in rng.integers(0, 256, 3)),
                )
            else:
                pil = pil.rotate(90 * int(rng.integers(0, 4)))
            j = rc["jitter"]
            pil = ImageEnhance.Brightness(pil).enhance(rng.uniform(1 - j, 1 + j))
            pil = ImageEnhance.Contrast(pil).enhance(rng.uniform(1 - j, 1 + j))
            pil = ImageEnhance.Color(pil).enhance(rng.uniform(1 - j, 1 + j))
            out[k] = np.asarray(pil)
        return out


def build_net():
    import torch
    from torch import nn

    def block(cin, cout, stride):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    class Net(nn.Module):
        """~0.3 M parameters, ~40 M multiply-adds at 96 px."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, 2, 1, bias=False),
                nn.BatchNorm2d(16),
                nn.ReLU(),  # 48
                block(16, 32, 2),  # 24
                block(32, 64, 2),  # 12
                block(64, 128, 2),  # 6
            )
            self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, len(CLASSES)))

        def forward(self, x):
            x = (x - self.mean) / self.std
            x = self.features(x).mean((2, 3))
            return torch.softmax(self.head(x), 1)

        def logits(self, x):
            x = (x - self.mean) / self.std
            return self.head(self.features(x).mean((2, 3)))

    return Net()


def train(big, masks, fallback, y, idx, seed, epochs, tag="", recipe=None):
    import torch

    torch.manual_seed(seed)
    net = build_net()
    aug = Augment(big, masks, fallback, idx, seed, recipe or RECIPE)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=5e-4)
    steps = epochs * int(np.ceil(len(idx) / BATCH))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.15)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    for ep in range(epochs):
        net.train()
        order = rng.permutation(idx)
        total = 0.0
        for b in range(0, len(order), BATCH):
            bi = order[b : b + BATCH]
            xb = torch.from_numpy(to_input(aug(bi)))
            yb = torch.from_numpy(y[bi])
            opt.zero_grad()
            loss = loss_fn(net.logits(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(bi)
        if ep % 5 == 4 or ep == epochs - 1:
            C.log(
                f"{tag}epoch {ep + 1}/{epochs} loss {total / len(idx):.3f} "
                f"({time.monotonic() - t0:.0f}s)"
            )
    net.eval()
    return net


def export(net, path: Path) -> None:
    import onnx
    import torch

    dummy = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(
        net,
        dummy,
        str(path),
        input_names=["image"],
        output_names=["probs"],
        dynamic_axes={"image": {0: "N"}, "probs": {0: "N"}},
        opset_version=C.OPSET,
        dynamo=False,
        do_constant_folding=True,
    )
    m = onnx.load(str(path))
    m.producer_name, m.producer_version = "millrace-models", VERSION
    m.doc_string = f"{NAME} {VERSION}: apple defect class from a {SIZE}px RGB image"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def quantize(fp32: Path, out: Path, calib: np.ndarray) -> None:
    """Static int8 (QDQ, per-channel weights), calibrated on training images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"image": x}

    import onnx

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    # keep the classifier head (Gemm) and Softmax in float: probabilities stay smooth
    keep = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in ("Softmax", "Gemm")]
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=keep,
    )
    pre.unlink()


def run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = C.session(path)
    return np.concatenate(
        [sess.run(None, {"image": x[i : i + 64]})[0] for i in range(0, len(x), 64)]
    )


def score(probs: np.ndarray, y: np.ndarray) -> dict:
    pred = probs.argmax(1)
    h = CLASSES.index(HEALTHY)
    healthy_true, healthy_pred = y == h, probs[:, h] >= 0.5
    out = {
        "accuracy_4class": np.mean(pred == y),
        "accuracy_healthy_vs_defective": np.mean(healthy_true == healthy_pred),
        "defective_recall": np.mean(~healthy_pred[~healthy_true]),
        "healthy_recall": np.mean(healthy_pred[healthy_true]),
    }
    for k, c in enumerate(CLASSES):
        out[f"recall_{c}"] = np.mean(pred[y == k] == k)
    return out


def variants(ev, small_masks):
    grey = np.full_like(ev, MASK_GREY)
    m = small_masks[..., None]
    return {
        "original": to_input(ev),
        "masked": to_input(np.where(m, ev, grey)),
        "background_only": to_input(np.where(m, grey, ev)),
    }


def cross_validate(rows, ev, big, masks, small_masks, fallback, y, seed, epochs, work: Path):
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.array([r["group"] for r in rows])
    vs = variants(ev, small_masks)
    preds = {
        f"{p}_{v}": np.zeros((len(y), len(CLASSES)), np.float32)
        for p in ("fp32", "int8")
        for v in vs
    }
    folds = []
    splitter = StratifiedGroupKFold(5, shuffle=True, random_state=seed)
    for k, (tr, te) in enumerate(splitter.split(ev, y, groups)):
        assert not set(groups[tr]) & set(groups[te])
        C.log(
            f"fold {k + 1}/5: {len(tr)} train / {len(te)} held-out images, "
            f"{len(set(groups[te]))} held-out groups"
        )
        net = train(big, masks, fallback, y, tr, seed + k, epochs, tag=f"fold {k + 1} ")
        f32, i8 = work / f"fold{k}.onnx", work / f"fold{k}.int8.onnx"
        export(net, f32)
        calib = vs["original"][np.random.default_rng(seed).choice(tr, CALIB_IMAGES, False)]
        quantize(f32, i8, calib)
        fold = {"held_out_groups": sorted(set(groups[te])), "n": len(te)}
        for prec, path in (("fp32", f32), ("int8", i8)):
            for v, x in vs.items():
                p = run(path, x[te])
                preds[f"{prec}_{v}"][te] = p
                fold[f"{prec}_{v}"] = {m: C.r(s) for m, s in score(p, y[te]).items()}
        folds.append(fold)
        C.log(
            f"fold {k + 1}: fp32 4-class {fold['fp32_original']['accuracy_4class']:.3f}, "
            f"healthy/defective {fold['fp32_original']['accuracy_healthy_vs_defective']:.3f}, "
            f"masked {fold['fp32_masked']['accuracy_4class']:.3f}, "
            f"background-only {fold['fp32_background_only']['accuracy_4class']:.3f}; "
            f"int8 4-class {fold['int8_original']['accuracy_4class']:.3f}"
        )
    pooled = {k: {m: C.r(s) for m, s in score(p, y).items()} for k, p in preds.items()}
    cm = np.zeros((len(CLASSES), len(CLASSES)), int)
    for t, p in zip(y, preds["fp32_original"].argmax(1), strict=True):
        cm[t, p] += 1
    return pooled, folds, cm


def main() -> None:
    import argparse

    import torch

    torch.set_num_threads(2)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=C.DEFAULT_DATA)
    ap.add_argument("--seed", type=int, default=20240401)
    ap.add_argument("--skip-cv", action="store_true")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args()
    C.seed_everything(args.seed)
    t0 = time.monotonic()
    root = args.data / "fruit-images"
    if not (root / "manifest.csv").exists():
        sys.exit(f"dataset not found: {root} (use --data DIR)")
    C.verify_sha256(root / "manifest.csv", MANIFEST_SHA256)
    rows = load_manifest(root)
    bad = [r["path"] for r in rows if C.sha256_file(root / r["path"]) != r["sha256"]]
    if bad:
        sys.exit(f"{len(bad)} images do not match manifest.csv sha256, e.g. {bad[:3]}")
    C.log(f"verified sha256 of all {len(rows)} images against manifest.csv")
    y = np.array([CLASSES.index(r["class"]) for r in rows], np.int64)
    ev, big, masks, small_masks, fallback = load_images(root, rows, HERE / ".cache")
    C.log(
        f"masks: GrabCut kept {np.mean(~fallback):.0%} of images; per class fallback "
        + str({c: int(fallback[y == k].sum()) for k, c in enumerate(CLASSES)})
    )
    work = HERE / ".work"
    work.mkdir(exist_ok=True)

    metrics: dict = {}
    if not args.skip_cv:
        pooled, folds, cm = cross_validate(
            rows, ev, big, masks, small_masks, fallback, y, args.seed, args.epochs, work
        )
        for k, v in pooled.items():
            C.log(f"CV pooled {k}: {v}")
        metrics = cv_metrics(args, pooled, folds, cm, fallback, y)

    C.log(f"training the shipped model on all {len(y)} images")
    net = train(big, masks, fallback, y, np.arange(len(y)), args.seed, args.epochs, tag="final ")
    out, out8 = HERE / "model.onnx", HERE / "model.int8.onnx"
    export(net, out)
    calib = to_input(ev)[np.random.default_rng(args.seed).choice(len(y), CALIB_IMAGES, False)]
    quantize(out, out8, calib)
    C.log(f"exported {out.name} ({out.stat().st_size} B) and {out8.name} ({out8.stat().st_size} B)")
    with torch.no_grad():
        ref = net(torch.from_numpy(to_input(ev[:64]))).numpy()
    diff = float(np.abs(run(out, to_input(ev[:64])) - ref).max())
    C.log(f"onnx vs torch max |diff| on 64 images: {diff:.2e}")
    assert diff < 1e-4, diff

    slice_idx = [
        i
        for c in CLASSES
        for i in [j for j, r in enumerate(rows) if r["class"] == c][:SLICE_PER_CLASS]
    ]
    xs = to_input(ev[slice_idx])
    slice_acc = {p.name: float(np.mean(run(p, xs).argmax(1) == y[slice_idx])) for p in (out, out8)}
    lat = {
        p.name: C.measure_latency(p, to_input(ev[::8]), calls=1000, warmup=50) for p in (out, out8)
    }
    for k, v in lat.items():
        C.log(f"latency {k}: p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms")
    for p in work.glob("*.onnx"):
        p.unlink()
    work.rmdir()
    manifest = build_manifest(
        args, metrics, lat, out, out8, slice_idx, rows, slice_acc, diff, time.monotonic() - t0
    )
    C.write_manifest(
        HERE / "manifest.yaml",
        manifest,
        f"{NAME} {VERSION}: generated by "
        "models/grading-vision/train.py; edit the script, not this file.",
    )


def cv_metrics(args, pooled, folds, cm, fallback, y) -> dict:
    fo = pooled["fp32_original"]
    i8 = pooled["int8_original"]
    return {
        "protocol": (
            "5-fold StratifiedGroupKFold (shuffle, seed) by the manifest's `group` over the 800 "
            "developer images (another 50 per class from other groups are held back elsewhere). "
            "Fixed recipe (see `recipe_selection`), no per-fold tuning. Pooled over the "
            "held-out folds. Variants: "
            "`original` = runtime preprocessing of the file; `masked` = background replaced by "
            f"grey {MASK_GREY} using the GrabCut fruit mask; `background_only` = the fruit "
            "replaced by grey (a model that looks at the fruit should fall towards chance, "
            "0.25). int8 = each fold's model quantized with calibration on that fold's "
            "training images. healthy = p(fresh) >= 0.5."
        ),
        "cv_pooled": pooled,
        "recipe_selection": SELECTION,
        "confusion_fp32_original": {"rows_true_cols_pred": CLASSES, "matrix": cm.tolist()},
        "folds": folds,
        "mask_quality": {
            "method": "OpenCV GrabCut from a centre rectangle (6 % margin) at 128 px; if < 15 % "
            "of the frame is kept (close-ups, cluttered orchards) a centred ellipse is used",
            "ellipse_fallback_per_class": {
                c: int(fallback[y == k].sum()) for k, c in enumerate(CLASSES)
            },
        },
        "targets": {
            "healthy_vs_defective_accuracy": {
                "target": ">= 0.98",
                "value": fo["accuracy_healthy_vs_defective"],
                "met": bool(fo["accuracy_healthy_vs_defective"] >= 0.98),
            },
            "accuracy_4class": {
                "target": ">= 0.95",
                "value": fo["accuracy_4class"],
                "met": bool(fo["accuracy_4class"] >= 0.95),
            },
            "int8": {
                "healthy_vs_defective": i8["accuracy_healthy_vs_defective"],
                "accuracy_4class": i8["accuracy_4class"],
            },
        },
    }


def build_manifest(args, metrics, lat, out, out8, slice_idx, rows, slice_acc, diff, secs):
    return {
        "name": NAME,
        "version": VERSION,
        "task": "image classification (4 classes; healthy vs defective derived)",
        "description": "Apple surface defect class (fresh, bruise, rot, scab) from one RGB photo "
        "of a single fruit on the sorting line. An int8 variant is shipped beside the float32 "
        "model.",
        "framework": {
            "format": "onnx",
            "opset": C.OPSET,
            "trained_with": "PyTorch (CPU) -> "
            "torch.onnx (TorchScript exporter); int8 with onnxruntime.quantization "
            "quantize_static (QDQ, per-channel int8 weights, uint8 activations, MinMax "
            f"calibration on {CALIB_IMAGES} training images)",
        },
        "files": {
            "model": {
                "path": "model.onnx",
                "sha256": C.sha256_file(out),
                "bytes": out.stat().st_size,
                "precision": "float32",
            },
            "model_int8": {
                "path": "model.int8.onnx",
                "sha256": C.sha256_file(out8),
                "bytes": out8.stat().st_size,
                "precision": "int8 (QDQ)",
                "same_inputs_outputs_as": "model",
            },
        },
        "training": {
            "script": "models/grading-vision/train.py",
            "command": "python models/grading-vision/train.py --data ../shared/datasets",
            "seed": args.seed,
            "epochs": args.epochs,
            "data": [
                {
                    "dataset": "fruit-images",
                    "file": "fruit-images/manifest.csv",
                    "sha256": MANIFEST_SHA256,
                    "images": len(rows),
                    "note": "every image's sha256 is listed in manifest.csv and verified",
                }
            ],
            "augmentation": f"background replacement behind the fruit mask (p "
            f"{RECIPE['background_p']} with a GrabCut mask, {RECIPE['background_p_fallback']} "
            "with the ellipse fallback: solid/white/black colour, noise, gradient, blurred "
            f"training photo), random square crop {RECIPE['crop_min']:.0%}-100 %, horizontal "
            f"flip, 90-degree rotations, brightness/contrast/saturation x(1 +- "
            f"{RECIPE['jitter']})",
            "optimizer": f"AdamW, one-cycle lr max 3e-3, weight decay 5e-4, batch {BATCH}, "
            "label smoothing 0.1",
            "duration_s": round(secs, 1),
            "protocol": metrics.get("protocol", "CV skipped (--skip-cv)"),
        },
        "inputs": [
            {
                "name": "image",
                "dtype": "float32",
                "shape": ["N", 3, SIZE, SIZE],
                "layout": "NCHW, RGB",
                "source": "payload",
                "payload": "one image file (JPEG or PNG) per fruit item",
                "preprocessing": {
                    "decode": "Pillow: Image.open(f).convert('RGB') (alpha dropped, palette and "
                    "greyscale expanded)",
                    "resize": {
                        "width": SIZE,
                        "height": SIZE,
                        "method": "bilinear",
                        "library": "Pillow Image.resize(..., Image.Resampling.BILINEAR)",
                        "keep_aspect": False,
                        "note": "the training images are square 256 px; crop a non-square "
                        "camera frame to the fruit first",
                    },
                    "scale": "float32 pixel / 255.0 -> [0, 1]",
                    "layout": "HWC -> CHW, add batch axis",
                    "normalization": {
                        "where": "baked_into_graph",
                        "mean": [0.5, 0.5, 0.5],
                        "std": [0.25, 0.25, 0.25],
                    },
                },
            }
        ],
        "outputs": [
            {
                "name": "probs",
                "dtype": "float32",
                "shape": ["N", len(CLASSES)],
                "meaning": "softmax class probabilities",
                "labels": CLASSES,
                "healthy_labels": [HEALTHY],
                "defective_labels": [c for c in CLASSES if c != HEALTHY],
                "reading": {
                    "point": "grade",
                    "value": "'good' or 'reject' (thresholds below); "
                    "defect = argmax label; grade_confidence = max probability",
                    "stamp": ["model_name", "model_version", "item_id"],
                },
            }
        ],
        "run": {"on": "item", "note": "once per image payload from the grading line camera"},
        "thresholds": [
            {
                "output": "probs",
                "label": HEALTHY,
                "op": ">=",
                "value": 0.5,
                "grade": "good",
                "else": "reject",
                "event": "grade",
            },
            {
                "output": "probs",
                "label": "max",
                "op": "<",
                "value": 0.6,
                "event": "grade_uncertain",
                "action": "route to manual inspection",
            },
        ],
        "fallback_rules": C.check_fallback_rules(
            [
                C.fallback_rule(
                    "grade_unknown",
                    names=[],
                    alarm="grading_degraded",
                    severity="warning",
                    grade="unknown",
                    note="conservative: publish grade 'unknown' and route the item to manual "
                    "inspection; active when neither model.onnx nor model.int8.onnx loads, or "
                    "the image cannot be decoded",
                )
            ]
        ),
        "latency_budget_ms": 10.0,
        "metrics": metrics,
        "slice_check": {
            "what": f"4-class accuracy on the first {SLICE_PER_CLASS} images of each class in "
            "fruit-images/manifest.csv order, runtime preprocessing (in-sample: a regression "
            "check, not an accuracy claim)",
            "images": [rows[i]["path"] for i in slice_idx],
            "accuracy": {
                "model.onnx": C.r(slice_acc[out.name], 6),
                "model.int8.onnx": C.r(slice_acc[out8.name], 6),
            },
            "tolerance": 0.03,
            "onnx_vs_torch_max_abs_diff": float(f"{diff:.3g}"),
        },
        "latency": lat,
    }


if __name__ == "__main__":
    main()
