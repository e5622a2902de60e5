"""Retrieval: bounded-memory top-k, the global-descriptor store, VLAD and NetVLAD loading."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F

from sfmfeat.errors import InputError, StoreError, WeightsError
from sfmfeat.localization import netvlad as nv
from sfmfeat.localization.retrieval import (GlobalDescriptorReader, GlobalDescriptorWriter,
                                            VladConfig, kmeans, pairs_from_store,
                                            retrieval_pairs, retrieval_topk, vlad)


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _dense_topk(q, db, k, exclude=None):
    sim = q @ db.T
    if exclude is not None:
        rows = np.nonzero(exclude >= 0)[0]
        sim[rows, exclude[rows]] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(db.shape[0]), sim.shape), -sim), axis=1)
    return order[:, :k], np.take_along_axis(sim, order[:, :k], 1)


class _CountingSource:
    """A database that records the largest slice it was asked for."""

    def __init__(self, data):
        self.data, self.shape, self.largest, self.reads = data, data.shape, 0, 0

    def __getitem__(self, index):
        chunk = self.data[index]
        self.largest = max(self.largest, len(chunk))
        self.reads += 1
        return chunk


def test_chunked_topk_equals_dense_and_never_reads_whole_database():
    rng = np.random.default_rng(0)
    q, db = _unit(rng, 300, 64), _unit(rng, 5000, 64)
    source = _CountingSource(db)
    # 1 MiB budget: chunks of ~1365 rows, so 4 database chunks and many similarity blocks
    result = retrieval_topk(q, source, 7, memory_mb=1)
    ref_i, ref_s = _dense_topk(q, db, 7)
    np.testing.assert_array_equal(result.indices, ref_i)
    np.testing.assert_allclose(result.scores, ref_s, rtol=1e-5, atol=1e-6)
    assert source.largest < len(db) and source.reads >= 2


def test_self_exclusion_min_score_padding_and_dedup():
    rng = np.random.default_rng(1)
    x = _unit(rng, 50, 16)
    names = [f"im{i:02d}.jpg" for i in range(50)]
    pairs = retrieval_pairs(x, x, names, names, 3, memory_mb=16)
    assert len(pairs) == 150 and all(a != b for a, b in pairs)
    ref_i, _ = _dense_topk(x.copy(), x, 3, exclude=np.arange(50))
    assert pairs[:3] == [(names[0], names[j]) for j in ref_i[0]]
    dedup = retrieval_pairs(x, x, names, names, 3, deduplicate=True)
    assert len({frozenset(p) for p in pairs}) == len(dedup) < len(pairs)
    # min_score: orthogonal database -> nothing retrieved
    db = np.eye(4, dtype=np.float32)
    res = retrieval_topk(np.array([[1, 0, 0, 0]], np.float32), db, 3, min_score=0.5)
    assert res.indices.tolist() == [[0, -1, -1]]
    # more neighbours than database images: padded with -1
    res = retrieval_topk(db[:1], db[:2], 5)
    assert res.indices.tolist() == [[0, 1, -1, -1, -1]]
    with pytest.raises(InputError, match="dimension"):
        retrieval_topk(x, np.zeros((3, 8), np.float32), 2)
    with pytest.raises(InputError, match="database names"):
        retrieval_pairs(x, x, names, names[:-1], 2)


def test_global_descriptor_store_roundtrip_and_config_guard(tmp_path):
    rng = np.random.default_rng(2)
    x = _unit(rng, 20, 8)
    names = [f"db/{i}.jpg" for i in range(15)] + [f"q/{i}.jpg" for i in range(5)]
    path = tmp_path / "global.h5"
    with GlobalDescriptorWriter(path, "toy", "h1", {"a": 1}, flush_items=4) as writer:
        for name, d in zip(names, x):
            writer.write(name, d)
    with GlobalDescriptorReader(path) as reader:
        assert sorted(reader.names()) == sorted(names) and reader.dim == 8
        np.testing.assert_array_equal(reader.read_many(names[3:6]), x[3:6])
        source = reader.source(names[:15])
        np.testing.assert_array_equal(source[10:15], x[10:15])
        with pytest.raises(InputError, match="no global descriptor"):
            reader.source(["missing.jpg"])
    with pytest.raises(StoreError, match="config"):
        GlobalDescriptorWriter(path, "toy", "other-hash", {"a": 2})
    pairs = pairs_from_store(path, 2, query_names=names[15:], db_names=names[:15])
    ref_i, _ = _dense_topk(x[15:], x[:15], 2)
    assert pairs == [(names[15 + q], names[j]) for q in range(5) for j in ref_i[q]]
    with pytest.raises(StoreError, match="does not exist"):
        GlobalDescriptorReader(tmp_path / "nope.h5")


def test_kmeans_and_vlad_retrieve_the_right_image():
    rng = np.random.default_rng(3)
    centers = _unit(rng, 8, 32) * 3
    data = np.concatenate([c + 0.05 * rng.normal(size=(200, 32)) for c in centers])
    learned = kmeans(data.astype(np.float32), 8, seed=0)
    # every true centre has a learned centroid next to it
    dist = np.linalg.norm(centers[:, None] - learned[None], axis=2)
    assert dist.min(1).max() < 0.05
    # ten "images" of 300 local descriptors; queries are noisy subsets of images 0..9
    vocab = _unit(rng, 2000, 32)
    images = [vocab[rng.choice(2000, 300, replace=False)] for _ in range(10)]
    codebook = kmeans(np.concatenate(images), 16, seed=0)
    config = VladConfig(num_clusters=16)
    db = np.stack([vlad(im, codebook, config) for im in images])
    assert db.shape == (10, 16 * 32)
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), 1, rtol=1e-5)
    queries = np.stack([vlad(im[rng.choice(300, 150, replace=False)]
                             + 0.02 * rng.normal(size=(150, 32)), codebook, config)
                        for im in images])
    assert retrieval_topk(queries, db, 1).indices[:, 0].tolist() == list(range(10))
    empty = vlad(np.zeros((0, 32), np.float32), codebook, config)
    assert empty.shape == (512,) and not empty.any()


# ----------------------------------------------------------------------------- NetVLAD

_TINY = nv.NetVladConfig(width_divisor=16, num_clusters=4, whiten_dim=8)


def _empty_cell():
    return np.empty((0,), object)


def _cell(*arrays):
    cell = np.empty(len(arrays), object)
    for i, a in enumerate(arrays):
        cell[i] = a
    return cell


def _write_struct(path, config=_TINY, seed=0, drop_whitening=False, bad_conv=False):
    """A MATLAB struct with the official NetVLAD layout, at the size of ``config``."""
    rng = np.random.default_rng(seed)
    layers, channels = [], 3
    for item in nv._VGG16:
        if item == "M":
            layers.append({"type": "pool", "weights": _empty_cell()})
            continue
        out = item // config.width_divisor
        w = rng.normal(0, np.sqrt(2 / (9 * channels)), (3, 3, channels, out))
        layers.append({"type": "conv", "weights": _cell(w.astype(np.float32),
                                                        rng.normal(0, .01, out))})
        layers.append({"type": "relu", "weights": _empty_cell()})
        channels = out
    layers = layers[:-1]
    if bad_conv:
        layers[2]["weights"] = _cell(np.zeros((3, 3, 5, 5), np.float32), np.zeros(5))
    k = config.num_clusters
    layers.append({"type": "normalize", "weights": _empty_cell()})
    layers.append({"type": "vlad", "weights": _cell(rng.normal(0, 1, (1, 1, channels, k)),
                                                    rng.normal(0, .1, (channels, k)))})
    layers += [{"type": "normalize", "weights": _empty_cell()} for _ in range(2)]
    if not drop_whitening:
        layers.append({"type": "conv", "weights": _cell(
            rng.normal(0, 1, (1, 1, channels * k, config.whiten_dim)),
            rng.normal(0, .1, (config.whiten_dim, 1)))})
    cells = np.empty(len(layers), object)
    cells[:] = layers
    mean = np.array([[[123.68, 116.78, 103.94]]])
    scipy.io.savemat(path, {"net": {"layers": cells,
                                    "meta": {"normalization": {"averageImage": mean}}}})
    return path


def _reference_forward(path, image):
    """NetVLAD computed straight from the .mat arrays (independent of the module)."""
    net = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)["net"]
    x = torch.from_numpy(image).double().permute(2, 0, 1)[None]
    x = x - torch.tensor(net.meta.normalization.averageImage).view(1, 3, 1, 1)
    for layer in net.layers[:29]:
        if layer.type == "conv":
            w = torch.from_numpy(layer.weights[0]).double().permute(3, 2, 0, 1)
            x = F.conv2d(x, w, torch.from_numpy(np.atleast_1d(layer.weights[1])).double(),
                         padding=1)
        elif layer.type == "relu":
            x = F.relu(x)
        else:
            x = F.max_pool2d(x, 2)
    feats = x[0].flatten(1).numpy().T                           # N×D
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    assign_w, neg_centers = net.layers[30].weights
    logits = feats @ assign_w                                   # N×K
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    d, k = neg_centers.shape
    v = np.zeros((d, k))
    for c in range(k):
        v[:, c] = (soft[:, c:c + 1] * (feats + neg_centers[:, c])).sum(0)
    v /= np.linalg.norm(v, axis=0, keepdims=True)
    v = v.reshape(-1) / np.linalg.norm(v)
    w, b = net.layers[33].weights
    out = v @ w + b.reshape(-1)
    return out / np.linalg.norm(out)


def test_netvlad_loads_the_official_struct_layout(tmp_path):
    path = _write_struct(tmp_path / "tiny_struct.mat")
    describer = nv.NetVladDescriber(_TINY, device="cpu", weights_path=path)
    image = np.random.default_rng(4).integers(0, 256, (70, 90, 3)).astype(np.uint8)
    ours = describer(image)
    assert ours.shape == (8,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _reference_forward(path, image), atol=1e-4)
    # the official preset: 4096-D from a 64×512 VLAD, registry entry with the official URL
    entry = nv.WEIGHT_FILES[nv.PRESETS["netvlad"].weights]
    assert entry.url.endswith("/netvlad/Pitts30K_struct.mat")
    full = nv.NetVlad(nv.PRESETS["netvlad"])
    assert full.whitening.weight.shape == (4096, 64 * 512)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in full.backbone) == 13


def test_netvlad_bad_weight_files_name_the_file(tmp_path):
    bad = _write_struct(tmp_path / "bad_conv.mat", bad_conv=True)
    with pytest.raises(WeightsError, match=r"bad_conv\.mat.*layers\[2\].*shape"):
        nv.NetVladDescriber(_TINY, weights_path=bad)
    short = _write_struct(tmp_path / "short.mat", drop_whitening=True)
    with pytest.raises(WeightsError, match=r"short\.mat.*33 layers"):
        nv.NetVladDescriber(_TINY, weights_path=short)
    other = tmp_path / "other.mat"
    scipy.io.savemat(other, {"weights": np.zeros(3)})
    with pytest.raises(WeightsError, match=r"other\.mat.*net\.layers"):
        nv.NetVladDescriber(_TINY, weights_path=other)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(WeightsError, match=r"junk\.mat"):
        nv.NetVladDescriber(_TINY, weights_path=junk)
    # the full network rejects the tiny file with shapes named
    with pytest.raises(WeightsError, match="shape"):
        nv.load_matlab_weights(nv.NetVlad(nv.NetVladConfig()), _write_struct(tmp_path / "t.mat"))


# --------------------------------------------------------------------------------- CLI

def test_cli_retrieval_vlad_and_covisibility(tmp_path, capsys, caplog):
    import pycolmap

    from sfmfeat.cli import main
    from sfmfeat.extractors.base import Features
    from sfmfeat.pairs import read_pairs
    from sfmfeat.store import FeatureWriter

    rng = np.random.default_rng(5)
    vocab = _unit(rng, 3000, 32)
    feats = tmp_path / "feats.h5"
    with FeatureWriter(feats, "toy", "toyhash", {}) as writer:
        for i in range(8):
            desc = vocab[rng.choice(3000, 400, replace=False)]
            for name, d in ((f"db/{i}.jpg", desc),
                            (f"q/{i}.jpg", desc[:200] + 0.02 * rng.normal(size=(200, 32)))):
                n = len(d)
                writer.write(name, Features(rng.uniform(0, 99, (n, 2)), np.ones(n), d),
                             (100, 100))
    out = tmp_path / "pairs.txt"
    caplog.set_level("INFO")
    assert main(["retrieval", "-o", str(out), "--features", str(feats), "--clusters", "8",
                 "--query-prefix", "q/", "--db-prefix", "db/", "--num-neighbors", "2"]) == 0
    pairs = read_pairs(out)
    assert len(pairs) == 16
    assert [b for a, b in pairs[::2]] == [f"db/{i}.jpg" for i in range(8)]
    assert (tmp_path / "global-vlad.h5").is_file()
    assert len(list(tmp_path.glob("vlad-codebook-*.h5"))) == 1
    # the same through `sfmfeat pairs retrieval`, reusing codebook and descriptors
    caplog.clear()
    out2 = tmp_path / "pairs2.txt"
    assert main(["pairs", "retrieval", "-o", str(out2), "--features", str(feats),
                 "--clusters", "8", "--query-prefix", "q/", "--db-prefix", "db/",
                 "--num-neighbors", "2"]) == 0
    assert read_pairs(out2) == pairs
    assert "VLAD codebook: already done" in caplog.text
    assert "vlad descriptors: already done" in caplog.text
    assert main(["retrieval", "-o", str(out), "--method", "vlad"]) == 2
    assert "needs --features" in capsys.readouterr().err
    # covisibility from a model on disk
    pycolmap.set_random_seed(0)
    rec = pycolmap.synthesize_dataset(pycolmap.SyntheticDatasetOptions(
        num_rigs=1, num_cameras_per_rig=1, num_frames_per_rig=6, num_points3D=50))
    model = tmp_path / "model"
    model.mkdir()
    rec.write_binary(model)
    covis = tmp_path / "covis.txt"
    assert main(["pairs", "covisibility", "--model", str(model), "-o", str(covis),
                 "--num-neighbors", "2"]) == 0
    assert len(read_pairs(covis)) >= 6


def test_netvlad_descriptors_into_the_store_and_pairs(tmp_path, monkeypatch):
    import functools

    import cv2

    from sfmfeat import weights
    from sfmfeat.localization.retrieval import compute_global_descriptors

    path = _write_struct(tmp_path / "tiny_struct.mat")
    describer = nv.NetVladDescriber(_TINY, device="cpu", weights_path=path)
    rng = np.random.default_rng(6)
    images = tmp_path / "images"
    images.mkdir()
    base = [rng.integers(0, 256, (48, 64, 3)).astype(np.uint8) for _ in range(3)]
    for i, im in enumerate(base):
        cv2.imwrite(str(images / f"db{i}.png"), im[:, :, ::-1])   # RGB -> BGR file
        cv2.imwrite(str(images / f"q{i}.png"), im[:, :, ::-1])    # random net: same image
    out = compute_global_descriptors(images, tmp_path / "g.h5", describer, "netvlad-tiny",
                                     _TINY)
    with GlobalDescriptorReader(out) as reader:
        assert reader.method == "netvlad-tiny" and reader.dim == 8
        np.testing.assert_allclose(reader.read("db1.png"), describer(base[1]), atol=1e-5)
    pairs = pairs_from_store(out, 1, query_names=["q0.png", "q1.png", "q2.png"],
                             db_names=["db0.png", "db1.png", "db2.png"])
    assert pairs == [("q0.png", "db0.png"), ("q1.png", "db1.png"), ("q2.png", "db2.png")]
    # a missing official file: WeightsError naming the file and where to get it
    monkeypatch.setenv("SFMFEAT_WEIGHTS_DIR", str(tmp_path / "no_weights"))
    monkeypatch.setattr(nv, "resolve", functools.partial(weights.resolve, download=False))
    with pytest.raises(WeightsError, match=r"Pitts30K_struct\.mat not found.*cvg-data"):
        nv.NetVladDescriber(nv.PRESETS["netvlad"])
