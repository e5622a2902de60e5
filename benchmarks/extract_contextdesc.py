"""ContextDesc extraction speed on CPU (1024×768, 8k keypoints), against the official code.

    python benchmarks/extract_contextdesc.py [--official /tmp/official_contextdesc]
        [--official-python /tmp/venv_contextdesc/bin/python] [--weights DIR] [--parity]

Ours: seconds per image, best of ``--repeats``, split into SIFT, patches, local model,
regional model and augmentation (``ContextDesc.timings``). Weights: a converted weights
dir (``--weights``, holding ``contextdesc/contextdesc++.pth`` and
``contextdesc/retrieval_model.pth``), else seeded random weights in the converted format
(speed does not depend on the values).

Reference, in the same run: the official code imported from ``--official`` (a checkout of
lzx551402/contextdesc outside this repository), run in ``--official-python`` (a venv with
tensorflow-cpu 2.15, NumPy 1.26 and OpenCV 4.10, as the fixtures were made): its SiftWrapper
(SIFT, patches), the fixture's frozen ``loc.pb`` (SIFT + patches + local model, through
``LocModel``) and ``aug.pb``, and a random-initialised regional ResNet50 (``RegModel`` graph).
Missing pieces are reported and skipped; our figures are printed in any case.

``--parity`` also prints the parity figures on the shared fixtures (all 2000 keypoints of
both images): patches, local features, matchability, augmented descriptors and uint8 codes.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFMFEAT_SHARED_DIR", REPO.parent / "shared"))
IMAGE = SHARED / "data/sacre_coeur/mapping/02928139_3448003521.jpg"
FIXTURES = SHARED / "fixtures/contextdesc"
STAGES = ("sift", "patches", "local", "regional", "augmentation")
if str(REPO) not in sys.path:  # a script run from a checkout without an installed sfmfeat
    sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", default="/tmp/official_contextdesc")
    parser.add_argument("--official-python", default="/tmp/venv_contextdesc/bin/python")
    parser.add_argument("--weights", default=None, help="converted weights dir")
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--keypoints", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--parity", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("IMAGE", "N", "THRESHOLD"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def random_weights(root: Path) -> None:
    from sfmfeat.commands.weights_convert import state_dict_from_tf
    from sfmfeat.extractors.contextdesc_nets import (ContextDescNet, RegionalResNet50,
                                                     tf_variable_names)

    (root / "contextdesc").mkdir(parents=True, exist_ok=True)
    for name, module, seed in (("contextdesc++", ContextDescNet(), 0),
                               ("retrieval_model", RegionalResNet50(), 1)):
        rng = np.random.default_rng(seed)
        own = module.state_dict()
        tensors = {}
        for key, (tf_name, layout) in tf_variable_names(module).items():
            shape = tuple(own[key].shape)
            if layout == "conv":
                o, i, h, w = shape
                tensors[tf_name] = rng.normal(0, np.sqrt(2 / (i * h * w)), (h, w, i, o))
            elif tf_name.endswith("variance"):
                tensors[tf_name] = rng.uniform(0.5, 1.5, shape[::-1])
            else:
                tensors[tf_name] = rng.uniform(-0.2, 0.2, shape[::-1])
        torch.save(state_dict_from_tf(module, tensors, name), root / "contextdesc" / f"{name}.pth")


def test_image(size: str) -> np.ndarray:
    width, height = map(int, size.split("x"))
    bgr = cv2.resize(cv2.imread(str(IMAGE)), (width, height), interpolation=cv2.INTER_AREA)
    return bgr


def threshold_for(gray: np.ndarray, n: int) -> float:
    """The official 0.0067 contrast threshold, lowered until SIFT finds >= n keypoints."""
    threshold = 0.0067
    while threshold > 1e-4:
        count = len(cv2.SIFT_create(0, 3, threshold, 10, 1.6).detect(gray, None))
        if count >= n:
            return threshold
        threshold /= 1.5
    return threshold


def _timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, (time.perf_counter() - wall, time.process_time() - cpu)


def run_ours(bgr: np.ndarray, n: int, threshold: float, repeats: int) -> dict:
    """(wall, CPU) seconds per stage, best of ``repeats`` by total wall time."""
    from sfmfeat.extractors import create_extractor
    from sfmfeat.extractors.contextdesc import normalized_xy
    from sfmfeat.images import to_grayscale

    extractor = create_extractor("contextdesc++", {"max_keypoints": n,
                                                   "contrast_threshold": threshold})
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    extractor.extract(rgb[256:512, 384:640])               # warm-up
    best = None
    for _ in range(repeats):
        gray = to_grayscale(rgb)
        t = {}
        keypoints, t["sift"] = _timed(extractor.detect, gray)
        patches, t["patches"] = _timed(extractor.patches, gray, keypoints)
        (local, kpt_m), t["local"] = _timed(extractor.describe_local, patches)
        regional, t["regional"] = _timed(extractor.regional_map, rgb)
        xy = normalized_xy(np.array([k.pt for k in keypoints]), gray.shape)
        _, t["augmentation"] = _timed(extractor.augment, local, kpt_m, xy, regional)
        t["total"] = tuple(sum(v[i] for v in t.values()) for i in range(2))
        t["keypoints"] = len(keypoints)
        if best is None or t["total"][0] < best["total"][0]:
            best = t
    return best


# the official code is TF1: run it on TF2's compat.v1 with the few shims it needs
TF1_SHIM = r'''
import collections, collections.abc, json, os, sys, time, types
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import cv2, numpy as np
import tensorflow as tf2
tf = tf2.compat.v1
tf.disable_v2_behavior()
tf.contrib = types.SimpleNamespace(layers=types.SimpleNamespace(
    l2_regularizer=lambda s: (lambda w: s * tf.nn.l2_loss(w))))
sys.modules["tensorflow"] = tf
collections.Mapping = collections.abc.Mapping
'''


# the official regional ResNet50 graph, randomly initialised (no released TF1 weights here)
REGIONAL_GRAPH = r'''
reg = get_model("reg_model")(None, max_dim=1024)
graph = tf.Graph()
with graph.as_default():
    reg._construct_network()
    sess = tf.Session(graph=graph)
    sess.run(tf.global_variables_initializer())
'''


CHILD = TF1_SHIM + r'''
cv2.xfeatures2d = types.SimpleNamespace(SIFT_create=cv2.SIFT_create)
checkout, image, n, thr, loc_pb, aug_pb = sys.argv[1:7]
sys.path.insert(0, checkout)
from models import get_model
bgr = cv2.imread(image)
gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[..., None]
rgb = bgr[..., ::-1]
out = {}
from utils.opencvhelper import SiftWrapper
wrapper = SiftWrapper(n_feature=int(n), n_sample=0, peak_thld=float(thr), edge_thld=10)
wrapper.pyr_off = True
wrapper.create()
def clock():
    return time.perf_counter(), time.process_time()
def since(t0):
    return [time.perf_counter() - t0[0], time.process_time() - t0[1]]
t0 = clock(); _, cv_kpts = wrapper.detect(gray[..., 0]); out["sift"] = since(t0)
t0 = clock(); wrapper.build_pyramid(gray[..., 0]); wrapper.get_patches(cv_kpts)
out["patches"] = since(t0)
loc = get_model("loc_model")(loc_pb, n_feature=int(n), n_sample=0, peak_thld=float(thr))
loc.run_test_data(gray[256:512, 384:640])  # warm-up (the official code fails on 0 keypoints)
t0 = clock(); loc_feat, kpt_mb, xy, kpts, _ = loc.run_test_data(gray)
out["sift+patches+local"] = since(t0)
''' + REGIONAL_GRAPH + r'''
data = rgb
if max(data.shape[:2]) > 1024:
    r = 1024 / max(data.shape[:2]); data = cv2.resize(data, (0, 0), fx=r, fy=r)
sess.run("res5c:0", feed_dict={"input:0": data[None, :256, :256]})
t0 = clock(); reg_feat = sess.run("res5c:0", feed_dict={"input:0": data[None]})[0]
out["regional"] = since(t0)
aug = get_model("aug_model")(aug_pb, quantz=False)
raw = np.stack([np.array((k.pt[0], k.pt[1], k.size, k.angle, k.response)) for k in kpts])
info = np.concatenate((raw, xy, loc_feat, kpt_mb), axis=-1)
aug.run_test_data([reg_feat, info[:64]])
t0 = clock(); aug.run_test_data([reg_feat, info])
out["augmentation"] = since(t0)
out["keypoints"] = len(kpts)
print("RESULT " + json.dumps(out))
'''


REGIONAL_CHILD = TF1_SHIM + r'''
checkout, image, out_path = sys.argv[1:4]
sys.path.insert(0, checkout)
from models import get_model
''' + REGIONAL_GRAPH + r'''
with graph.as_default():
    rng = np.random.default_rng(0)   # BN statistics are 0/1 after init: randomise them
    for v in tf.global_variables():
        shape = v.shape.as_list()
        if "moving_variance" in v.name:
            sess.run(v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32)))
        elif "moving_mean" in v.name or "beta" in v.name:
            sess.run(v.assign(rng.uniform(-0.2, 0.2, shape).astype(np.float32)))
        elif "gamma" in v.name:
            sess.run(v.assign(rng.uniform(0.25, 0.75, shape).astype(np.float32)))
    values = {v.name[:-2]: sess.run(v) for v in tf.global_variables()}
    reg.sess = sess
res5c = reg.run_test_data(cv2.imread(image)[..., ::-1])
np.savez(out_path, res5c=res5c, **{"var/" + k: v for k, v in values.items()})
'''


def regional_parity(args) -> None:
    """Our ResNet50 vs the official RegModel graph (random init) on a sacre_coeur image."""
    from sfmfeat.commands.weights_convert import state_dict_from_tf
    from sfmfeat.extractors.contextdesc import REGIONAL_MEAN_RGB, resize_for_regional
    from sfmfeat.extractors.contextdesc_nets import RegionalResNet50

    python = Path(args.official_python)
    if not python.is_file() or not Path(args.official).is_dir():
        print(f"regional parity: not measured (needs {python} and {args.official})")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "reg.npz"
        proc = subprocess.run([str(python), "-c", REGIONAL_CHILD, args.official, str(IMAGE),
                               str(out)], capture_output=True, text=True, cwd=args.official)
        if not out.is_file():
            print("regional parity: official run failed: "
                  + (proc.stderr.strip().splitlines() or ["?"])[-1])
            return
        d = np.load(out)
        tensors = {k[4:]: d[k] for k in d.files if k.startswith("var/")}
        ref = d["res5c"]
    model = RegionalResNet50().eval()
    model.load_state_dict(state_dict_from_tf(model, tensors, "official random init"))
    model.fold_bn()
    rgb = cv2.imread(str(IMAGE))[..., ::-1]
    x = resize_for_regional(rgb, 1024).astype(np.float32) - np.float32(REGIONAL_MEAN_RGB)
    ours = model(torch.from_numpy(x).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    print(f"regional parity (official RegModel graph, random init, {IMAGE.name}): shape "
          f"{ours.shape} vs {ref.shape}, max|err| {np.abs(ours - ref).max():.2e} "
          f"(max|ref| {np.abs(ref).max():.3g})")


def run_official_networks(args, image_path: Path, n: int, threshold: float) -> dict | str:
    python = Path(args.official_python)
    if not python.is_file():
        return f"no TensorFlow interpreter at {python}"
    with tempfile.TemporaryDirectory() as tmp:
        pbs = []
        for name in ("loc.pb", "aug.pb"):
            path = Path(tmp) / name
            path.write_bytes(lzma.decompress((FIXTURES / f"{name}.xz").read_bytes()))
            pbs.append(str(path))
        proc = subprocess.run([str(python), "-c", CHILD, args.official, str(image_path),
                               str(n), repr(threshold), *pbs],
                              capture_output=True, text=True, cwd=args.official)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return "official TensorFlow run failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]


def parity() -> None:
    from sfmfeat.commands.weights_convert import state_dict_from_tf
    from sfmfeat.extractors.contextdesc import (sample_patches_cv2, sample_patches_torch,
                                                standardize_patches)
    from sfmfeat.extractors.contextdesc_nets import ContextDescNet
    from sfmfeat.extractors.tf_reader import read_graphdef_constants

    with tempfile.TemporaryDirectory() as tmp:
        tensors = {}
        for name in ("loc.pb", "aug.pb"):
            path = Path(tmp) / name
            path.write_bytes(lzma.decompress((FIXTURES / f"{name}.xz").read_bytes()))
            tensors |= read_graphdef_constants(path)
    net = ContextDescNet()
    net.load_state_dict(state_dict_from_tf(net, tensors, "fixture"))
    net.eval().local.fold_bn()
    for npz in sorted(FIXTURES.glob("*.npz")):
        d = np.load(npz)
        gray = cv2.cvtColor(cv2.imread(str(SHARED / "data/sacre_coeur/mapping" /
                                           f"{npz.stem}.jpg")), cv2.COLOR_BGR2GRAY)
        xy = np.stack([d["kpt_x"], d["kpt_y"]], 1).astype(np.float64)
        p_cv = sample_patches_cv2(gray, xy, d["kpt_size"], d["kpt_angle"])
        p_t = sample_patches_torch(gray, xy, d["kpt_size"], d["kpt_angle"])
        fed = torch.from_numpy(standardize_patches(d["patches_raw"])[:, None])
        with torch.no_grad():
            f, m = zip(*(net.local(fed[i:i + 512]) for i in range(0, len(fed), 512)))
            aug = net.aug(torch.from_numpy(d["loc_feat"])[None],
                          torch.from_numpy(d["regional_feat"].astype(np.float32))
                          .permute(2, 0, 1)[None], torch.from_numpy(d["kpt_mb"])[None],
                          torch.from_numpy(d["kpt_xy"].astype(np.float32))[None])[0].numpy()
        codes = (aug * 128 + 128).astype(np.uint8)
        ref = d["aug_feat"]
        print(f"parity {npz.stem} (N={len(xy)}): patches opencv max|err| "
              f"{np.abs(p_cv - d['patches_raw']).max():.3g}, shared grid_sample max|err| "
              f"{np.abs(p_t - d['patches_raw']).max():.3g} (mean "
              f"{np.abs(p_t - d['patches_raw']).mean():.3g}); local max|err| "
              f"{np.abs(torch.cat(f).numpy() - d['loc_feat']).max():.2e}; matchability "
              f"{np.abs(torch.cat(m).numpy() - d['kpt_mb']).max():.2e}; aug min cos "
              f"{(aug * ref).sum(1).min():.8f}, max|err| {np.abs(aug - ref).max():.2e}; "
              f"uint8 differing {(codes != d['aug_feat_uint8']).sum()} of {codes.size}")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    bgr = test_image(args.size)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    threshold = threshold_for(gray, args.keypoints)
    print(f"image {IMAGE.name} resized to {args.size}; SIFT contrast threshold "
          f"{threshold:.5f} for >= {args.keypoints} keypoints; torch threads "
          f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.weights:
            os.environ["SFMFEAT_WEIGHTS_DIR"] = args.weights
        else:
            random_weights(Path(tmp))
            os.environ["SFMFEAT_WEIGHTS_DIR"] = tmp
            print("weights: seeded random, converted format")
        ours = run_ours(bgr, args.keypoints, threshold, args.repeats)
        print(f"ours: {ours['total'][0]:.2f} s/image wall, {ours['total'][1]:.2f} s CPU, "
              f"{ours['keypoints']} keypoints (wall / CPU seconds per stage)", flush=True)
        for stage in STAGES:
            print(f"  {stage:<13}{ours[stage][0]:8.3f} / {ours[stage][1]:7.3f}", flush=True)
        image_path = Path(tmp) / "image.png"
        cv2.imwrite(str(image_path), bgr)
        if not (Path(args.official) / "models").is_dir():
            official = f"no official checkout at {args.official}"
        else:
            official = run_official_networks(args, image_path, args.keypoints, threshold)
    if not isinstance(official, dict):
        print(f"official: not measured ({official}); our figures only")
    else:
        official["local"] = [official["sift+patches+local"][i] - official["sift"][i]
                             - official["patches"][i] for i in range(2)]
        official["total"] = [sum(official[k][i] for k in ("sift+patches+local", "regional",
                                                          "augmentation")) for i in range(2)]
        print(f"official ({official['keypoints']} keypoints; local = LocModel run minus its "
              "SIFT and patch stages; ratio = ours / official, wall and CPU):")
        for stage in STAGES + ("total",):
            w, c = official[stage]
            print(f"  {stage:<13}{w:8.3f} / {c:7.3f}   ratio {ours[stage][0] / w:5.2f} / "
                  f"{ours[stage][1] / c:5.2f}")
    if args.parity:
        parity()
        regional_parity(args)


if __name__ == "__main__":
    main()
