"""Data specs: every scheme on small files built here, fitting to the model input, clear errors."""
import sys

import numpy as np
import pytest
import torch

from geta_onnx.config import DataConfig
from geta_onnx.errors import DataError
from geta_onnx.train.data import load_data, set_epoch, split_batch
from geta_onnx.train.transforms import InputSpec, plan
from tests.train.models import blobs, bridged, write_idx


def _all(loader):
    xs, ys = zip(*((b[0][0], b[1]) for b in loader))
    return torch.cat(xs), (torch.cat(ys) if ys[0] is not None else None)


@pytest.fixture
def npz(tmp_path):
    x, y = blobs(50)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


def assert_one_line_error(spec, match, **kw):
    with pytest.raises(DataError, match=match) as e:
        load_data(spec, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- npz -------------------------------------------------------------------------------------
def test_npz_split_shapes_and_every_sample_once(npz, cnn):
    path, x, y = npz
    data = load_data(f"npz:{path}", DataConfig(batch_size=8, val_split=0.2), model=cnn[0], seed=3)
    assert (data.n_train, data.n_eval, data.num_classes, data.has_labels) == (40, 10, 3, True)
    assert data.sample_shape == (1, 8, 8) and len(data.train) == 5
    (xb,), yb = next(iter(data.train))
    assert xb.shape == (8, 1, 8, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    tx, ty = _all(data.train)
    ex, ey = _all(data.eval)
    seen = torch.cat([tx, ex]).reshape(50, -1)
    # train + eval hold each sample exactly once, labels still attached to their images
    order = [int(np.flatnonzero((x.reshape(50, -1) == row.numpy()).all(1))[0]) for row in seen]
    assert sorted(order) == list(range(50))
    assert torch.equal(torch.cat([ty, ey]), torch.from_numpy(y[order]))


def _rows(loader, x):
    """Indices into x of the samples a loader yields (every row of x is distinct)."""
    flat = x.reshape(len(x), -1)
    return [int(np.flatnonzero((flat == row.numpy()).all(1))[0]) for row in _all(loader)[0].reshape(-1, flat.shape[1])]


def test_guard_samples_held_out_of_training_never_trained_on(tmp_path):
    """[prune] guard_data = "train": load_data's guard_samples are training samples held out
    (seeded, at most GUARD_SHARE of them); training never sees them, the eval split is the
    same as without them, and the teacher memo's capacity counts them."""
    from geta_onnx.train.data import GUARD_SHARE

    x, y = blobs(60)
    path = tmp_path / "g.npz"
    np.savez(path, x=x, y=y, eval_x=x[:9] + 1.0, eval_y=y[:9])
    plain = load_data(f"npz:{path}", DataConfig(batch_size=8), seed=4)
    held = load_data(f"npz:{path}", DataConfig(batch_size=8), seed=4, guard_samples=10)
    assert (held.n_train, held.n_guard, held.n_eval, held.samples) == (50, 10, 9, 69)
    train, guard = _rows(held.train, x), _rows(held.guard, x)
    assert sorted(train + guard) == list(range(60)) and not set(train) & set(guard)  # disjoint, every sample once
    assert guard == sorted(guard)  # in file order, the same batches on every check
    assert torch.equal(_all(held.guard)[1], torch.from_numpy(y[guard]))  # labels stay with their samples
    assert torch.equal(_all(held.eval)[0], _all(plain.eval)[0])  # the eval split untouched
    again = load_data(f"npz:{path}", DataConfig(batch_size=8), seed=4, guard_samples=10)
    assert _rows(again.guard, x) == guard  # seeded: a resumed run holds out the same samples
    assert _rows(load_data(f"npz:{path}", DataConfig(batch_size=8), seed=5, guard_samples=10).guard, x) != guard
    capped = load_data(f"npz:{path}", DataConfig(batch_size=8), seed=4, guard_samples=1000)
    assert capped.n_guard == int(60 * GUARD_SHARE) and capped.n_train == 60 - capped.n_guard  # the rest trains
    # without an eval split of its own: the val_split share first, then the guard's from what is left
    no_eval = tmp_path / "n.npz"
    np.savez(no_eval, x=x, y=y)
    carved = load_data(f"npz:{no_eval}", DataConfig(batch_size=8, val_split=0.2), seed=4, guard_samples=6)
    assert (carved.n_train, carved.n_guard, carved.n_eval) == (42, 6, 12)
    parts = [_rows(carved.train, x), _rows(carved.guard, x), _rows(carved.eval, x)]
    assert sorted(sum(parts, [])) == list(range(60))
    assert _rows(carved.eval, x) == _rows(load_data(f"npz:{no_eval}", DataConfig(batch_size=8, val_split=0.2),
                                                    seed=4).eval, x)  # the same eval samples as without a guard


def test_a_validation_split_stored_beside_the_eval_split(tmp_path):
    """npz val_ arrays: a split of their own (Data.val, never trained on, whole on every rank),
    the eval split unchanged; val_ arrays without eval_ ones are the eval split; --limit draws
    a seeded subset of each without changing the eval split's draw."""
    x, y = blobs(60)
    path = tmp_path / "v.npz"
    np.savez(path, x=x[:40], y=y[:40], eval_x=x[40:50], eval_y=y[40:50], val_x=x[50:], val_y=y[50:])
    data = load_data(f"npz:{path}", DataConfig(batch_size=4), seed=3)
    assert (data.n_train, data.n_eval, data.n_val, data.samples) == (40, 10, 10, 60)
    assert torch.equal(_all(data.val)[0].reshape(10, -1), torch.from_numpy(x[50:]).reshape(10, -1))
    assert torch.equal(_all(data.val)[1], torch.from_numpy(y[50:]))
    assert torch.equal(_all(data.eval)[0].reshape(10, -1), torch.from_numpy(x[40:50]).reshape(10, -1))
    assert data.shard(1, 2).val is data.val  # the guard's checks score all of it on every rank
    alone = tmp_path / "a.npz"
    np.savez(alone, x=x[:40], y=y[:40], val_x=x[50:], val_y=y[50:])
    only = load_data(f"npz:{alone}", DataConfig(batch_size=4), seed=3)
    assert only.val is None and only.n_eval == 10  # the validation split is the eval split
    plain = tmp_path / "p.npz"
    np.savez(plain, x=x[:40], y=y[:40], eval_x=x[40:50], eval_y=y[40:50])
    limited = load_data(f"npz:{path}", DataConfig(batch_size=4, limit=5), seed=3)
    assert limited.n_val == 5 and set(_rows(limited.val, x)) <= set(range(50, 60))
    assert torch.equal(_all(limited.eval)[0], _all(load_data(f"npz:{plain}", DataConfig(batch_size=4, limit=5),
                                                             seed=3).eval)[0])
    bad = tmp_path / "b.npz"
    np.savez(bad, x=x[:40], y=y[:40], eval_x=x[40:50], eval_y=y[40:50], val_x=x[50:, :, :4], val_y=y[50:])
    assert_one_line_error(f"npz:{bad}", r"val samples of 'x' have shape")


def test_a_folder_with_val_and_test_scores_test_and_guards_on_val(tmp_path):
    pytest.importorskip("PIL")
    _pngs(tmp_path, {"train": 3, "val": 2, "test": 1})
    data = load_data(f"folder:{tmp_path}", DataConfig(batch_size=4))
    assert (data.n_train, data.n_eval, data.n_val) == (6, 2, 4)  # test/ is the eval split, val/ the validation one


def test_guard_samples_errors(tmp_path, cnn):
    x, y = blobs(3)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x, y=y, eval_x=x, eval_y=y)
    assert_one_line_error(f"npz:{path}", r"3 training samples are too few.*guard_data = \"eval\"",
                          guard_samples=8)
    (tmp_path / "loaders.py").write_text(
        "import torch\n"
        "def f():\n"
        "    return [(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))]\n")
    assert_one_line_error(f"py:{tmp_path / 'loaders.py'}:f", r"py: loader.*guard_data = \"eval\"", model=cnn[0],
                          guard_samples=8)


def test_shuffle_depends_on_seed_and_epoch_only(npz):
    path = npz[0]
    a = load_data(f"npz:{path}", DataConfig(batch_size=50, val_split=0), seed=1)
    b = load_data(f"npz:{path}", DataConfig(batch_size=50, val_split=0), seed=1)
    set_epoch(a.train, 2), set_epoch(b.train, 2)
    assert torch.equal(_all(a.train)[0], _all(b.train)[0])
    set_epoch(a.train, 2)
    e2 = _all(a.train)[0]
    set_epoch(a.train, 3)
    assert not torch.equal(e2, _all(a.train)[0])


def test_npz_keys_eval_arrays_and_limit(tmp_path):
    x, y = blobs(40)
    path = tmp_path / "k.npz"
    np.savez(path, img=x, lab=y, eval_img=x[:7], eval_lab=y[:7])
    data = load_data(f"npz:{path}:img,lab", DataConfig(batch_size=4, limit=12))
    assert (data.n_train, data.n_eval) == (12, 7)  # eval_ arrays beat the held-out split
    assert torch.equal(_all(data.eval)[1], torch.from_numpy(y[:7]))


def test_npz_arrays_named_after_the_model_input(tmp_path, cnn):
    """A single-input model's array may be named after its input instead of x (as several
    inputs are); a file with neither names both choices in its error."""
    x, y = blobs(30)
    name = cnn[0].inputs[0].name
    np.savez(tmp_path / "n.npz", **{name: x, "y": y})
    data = load_data(f"npz:{tmp_path / 'n.npz'}", DataConfig(batch_size=10, val_split=0, shuffle=False), model=cnn[0])
    assert data.n_train == 30 and data.has_labels and torch.equal(_all(data.train)[0], torch.from_numpy(x))
    np.savez(tmp_path / "m.npz", img=x)
    assert_one_line_error(f"npz:{tmp_path / 'm.npz'}", rf"no array 'x' .*or after the model's inputs \({name}\)",
                          model=cnn[0])


def test_a_scalar_npz_array_is_a_one_line_error(tmp_path):
    """Every array holds one entry per sample; a scalar (e.g. a sample rate) used to crash in len()."""
    x, y = blobs(20)
    np.savez(tmp_path / "s.npz", x=np.float32(3.0), y=y)
    assert_one_line_error(f"npz:{tmp_path / 's.npz'}", r"array 'x' is a scalar; every array holds one entry per sample")


def test_uint8_images_get_a_channel_and_unit_scale(tmp_path, cnn):
    r = np.random.default_rng(0)
    x = r.integers(0, 256, (20, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "u.npz", x=x)
    data = load_data(f"npz:{tmp_path / 'u.npz'}", DataConfig(batch_size=20, val_split=0, shuffle=False), model=cnn[0])
    xb, yb = _all(data.train)
    assert xb.shape == (20, 1, 8, 8) and yb is None and not data.has_labels
    assert torch.allclose(xb[:, 0], torch.from_numpy(x / 255.0).float())


def test_mean_std_per_channel_and_token_ids_unchanged(tmp_path, token_path):
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    t = plan("t", (3, 2, 2), x.dtype, None, DataConfig(mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0)))
    out = t(torch.from_numpy(x))
    assert torch.allclose(out[:, 1], (torch.from_numpy(x[:, 1]) - 2.0) / 2.0)
    ids = np.random.default_rng(0).integers(0, 11, (30, 5)).astype(np.int32)
    np.savez(tmp_path / "ids.npz", x=ids)
    model, _ = bridged(token_path)
    data = load_data(f"npz:{tmp_path / 'ids.npz'}", DataConfig(batch_size=30, val_split=0, shuffle=False, mean=(9.0,)),
                     model=model)
    got = _all(data.train)[0]
    assert got.dtype == torch.int64 and torch.equal(got, torch.from_numpy(ids).long())


def test_plan_adapts_gray_to_rgb_resize_and_flatten():
    img = torch.arange(2 * 6 * 6, dtype=torch.uint8).reshape(2, 6, 6)
    rgb = InputSpec("x", (3, 12, 12), np.dtype(np.float32))
    t = plan("p", (6, 6), np.dtype(np.uint8), rgb, DataConfig(resize=True))
    out = t(img)
    assert out.shape == (2, 3, 12, 12) and t.out_shape == (3, 12, 12) and torch.equal(out[:, 0], out[:, 2])
    flat = plan("p", (6, 6), np.dtype(np.float32), InputSpec("x", (36,), np.dtype(np.float32)), DataConfig())
    assert flat(img.float()).shape == (2, 36)
    with pytest.raises(DataError, match=r"\(N, 1, 6, 6\).*\(N, 1, 5, 5\).*resize"):
        plan("p", (1, 6, 6), np.dtype(np.float32), InputSpec("x", (1, 5, 5), np.dtype(np.float32)), DataConfig())


# ---- idx --------------------------------------------------------------------------------------
def test_idx_gz_and_plain_with_t10k_eval(tmp_path, cnn):
    r = np.random.default_rng(1)
    x, y = r.integers(0, 256, (30, 8, 8)).astype(np.uint8), r.integers(0, 4, 30).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x[:9], gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y[:9], gz=False)
    data = load_data(f"idx:{tmp_path}", DataConfig(batch_size=30, shuffle=False), model=cnn[0])
    assert (data.n_train, data.n_eval, data.num_classes) == (30, 9, 4)
    xb, yb = _all(data.train)
    assert torch.allclose(xb[:, 0] * 255, torch.from_numpy(x).float()) and torch.equal(yb, torch.from_numpy(y).long())
    assert load_data(str(tmp_path)).num_classes == 4  # a bare folder of IDX files is recognised as idx:


def test_idx_truncated_and_bad_magic(tmp_path):
    raw = (write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 3, 3), np.uint8), gz=False)).read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-5])
    assert_one_line_error(f"idx:{tmp_path}", "train-images-idx3-ubyte.*truncated")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x12\x34" + raw[2:])
    assert_one_line_error(f"idx:{tmp_path}", "not an IDX file")


# ---- folder ----------------------------------------------------------------------------------------
def _pngs(root, sizes):
    from PIL import Image

    r = np.random.default_rng(0)
    for split, per_class in sizes.items():
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(r.integers(0, 256, (10, 10, 3)).astype(np.uint8)).save(root / split / c / f"{i}.png")


def test_folder_train_val_resized_to_model(tmp_path, cnn):
    pytest.importorskip("PIL")
    _pngs(tmp_path, {"train": 3, "val": 2})
    data = load_data(f"folder:{tmp_path}", DataConfig(batch_size=4, resize=True), model=cnn[0])
    assert (data.n_train, data.n_eval, data.num_classes, data.classes) == (6, 4, 2, ["cat", "dog"])
    xb, yb = _all(data.eval)
    assert xb.shape == (4, 1, 8, 8) and 0 <= xb.min() and xb.max() <= 1 and sorted(yb.tolist()) == [0, 0, 1, 1]
    msg = assert_one_line_error(f"folder:{tmp_path}", r"\(N, 1, 10, 10\).*\(N, 1, 8, 8\).*resize", model=cnn[0])
    assert "folder:" in msg
    plain = load_data(f"folder:{tmp_path / 'train'}")  # no model: RGB, channels first
    assert plain.sample_shape == (3, 10, 10)


def test_folder_without_pillow_says_pip_install(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    assert_one_line_error(f"folder:{tmp_path}", "pip install pillow")


# ---- py ---------------------------------------------------------------------------------------------
def test_py_module_file_tuple_and_dict(tmp_path, cnn):
    (tmp_path / "mydata.py").write_text(
        "import torch\nfrom torch.utils.data import DataLoader, TensorDataset\n"
        "def loaders(batch_size, seed):\n"
        "    g = torch.Generator().manual_seed(seed)\n"
        "    ds = TensorDataset(torch.randn(12, 1, 8, 8, generator=g), torch.arange(12) % 3)\n"
        "    return DataLoader(ds, batch_size=batch_size), DataLoader(ds, batch_size=6)\n"
        "def as_dict():\n"
        "    return {'train': [torch.zeros(2, 1, 8, 8)], 'num_classes': 7}\n"
        "def with_val():\n"
        "    return {'train': [torch.zeros(2, 1, 8, 8)], 'eval': [torch.ones(2, 1, 8, 8)], 'val': [torch.ones(3, 1, 8, 8)]}\n"
        "def val_only():\n"
        "    return {'train': [torch.zeros(2, 1, 8, 8)], 'val': [torch.ones(3, 1, 8, 8)]}\n"
        "def bad_val():\n"
        "    return {'train': [torch.zeros(2, 1, 8, 8)], 'eval': [torch.ones(2, 1, 8, 8)], 'val': 3}\n"
        "def wrong_shape():\n"
        "    return [torch.zeros(2, 1, 9, 9)]\n")
    data = load_data(f"py:{tmp_path / 'mydata.py'}:loaders", DataConfig(batch_size=4), model=cnn[0])
    assert data.has_labels and len(data.train) == 3 and data.sample_shape == (1, 8, 8) and data.n_train == 12
    d = load_data(f"py:{tmp_path / 'mydata.py'}:as_dict", model=cnn[0])
    assert (d.has_labels, d.num_classes, d.eval, d.val) == (False, 7, None, None)
    v = load_data(f"py:{tmp_path / 'mydata.py'}:with_val", model=cnn[0])  # the quality guard's validation loader
    assert len(next(iter(v.eval))) == 2 and len(next(iter(v.val))) == 3
    alone = load_data(f"py:{tmp_path / 'mydata.py'}:val_only", model=cnn[0])
    assert alone.val is None and len(next(iter(alone.eval))) == 3  # a validation loader alone is the eval split
    assert_one_line_error(f"py:{tmp_path / 'mydata.py'}:bad_val", "the val loader is a int", model=cnn[0])
    assert_one_line_error(f"py:{tmp_path / 'mydata.py'}:wrong_shape", r"\(N, 1, 9, 9\).*\(N, 1, 8, 8\)", model=cnn[0])
    assert_one_line_error(f"py:{tmp_path / 'mydata.py'}:nope", "has no function 'nope'")
    assert_one_line_error("py:no_such_module_xyz:f", "cannot import 'no_such_module_xyz'")


# ---- errors and batches ------------------------------------------------------------------------------
def test_bad_specs_name_the_culprit(tmp_path, npz, cnn):
    path = npz[0]
    assert_one_line_error("zip:foo", "unknown scheme 'zip'.*npz:FILE")
    assert_one_line_error(f"npz:{tmp_path / 'missing.npz'}", "missing.npz")
    assert_one_line_error(f"npz:{path}:img", r"no array 'img' \(the file has: x, y\)")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert_one_line_error(f"npz:{tmp_path / 'junk.npz'}", "junk.npz: cannot read")
    assert_one_line_error(f"idx:{tmp_path}", "no train-images-idx3-ubyte")
    np.savez(tmp_path / "f.npz", x=np.zeros((4, 5), np.float32))
    model, _ = cnn
    assert_one_line_error(f"npz:{tmp_path / 'f.npz'}", r"f.npz.*\(N, 5\).*'x'.*\(N, 1, 8, 8\)", model=model)


def test_split_batch_layouts():
    x, y, m = torch.zeros(2, 3), torch.ones(2), torch.ones(2, 3)
    assert split_batch(x, ["x"]) == ((x,), None)
    assert split_batch((x, y), ["x"])[1] is y
    assert split_batch(((x,), None), ["x"]) == ((x,), None)
    ins, tgt = split_batch({"ids": x, "mask": m, "label": y}, ["ids", "mask"])
    assert ins[1] is m and tgt is y
    assert split_batch([x, m], ["ids", "mask"]) == ((x, m), None)
    with pytest.raises(DataError, match="4 items.*2 input"):
        split_batch((x, m, y, y), ["ids", "mask"])


def test_data_and_train_configs_validate_from_dicts():
    from geta_onnx.config import TrainConfig, from_dict, to_dict
    from geta_onnx.errors import ConfigError

    cfg = from_dict(DataConfig, {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "batch_size": 32})
    assert cfg.mean == (0.5, 0.4, 0.3) and from_dict(DataConfig, to_dict(cfg)) == cfg
    for bad, option in (({"scale": "zscore"}, "'scale'"), ({"mean": [0.5, 0.5], "std": [1.0]}, "'std'"),
                        ({"val_split": 1.0}, "'val_split'"), ({"batchsize": 3}, "did you mean 'batch_size'")):
        with pytest.raises(ConfigError, match=option):
            from_dict(DataConfig, bad)
    assert from_dict(TrainConfig, {"loss": "task+kd", "alpha": 0.3}).alpha == 0.3
    with pytest.raises(ConfigError, match="'device'.*got 'gpu'"):
        TrainConfig(device="gpu")
