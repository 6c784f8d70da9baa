"""Built-in toy sets, tabular files and the MAF-paper layout."""

import math
import os

import numpy as np
import pytest
import torch

from pyro_flows.data.maf import MAF_DIMENSIONS, load_maf
from pyro_flows.data.registry import load_splits
from pyro_flows.data.splits import split_fractions
from pyro_flows.data.tabular import load_array, load_tabular_splits
from pyro_flows.data.toy import (
    TOY_DATASETS,
    make_2spirals,
    make_8gaussians,
    make_checkerboard,
    make_circles,
    make_pinwheel,
    make_rings,
)
from pyro_flows.train.config import RunConfig


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_sets_are_seeded(name):
    make = TOY_DATASETS[name]
    a, b, c = make(500, seed=1), make(500, seed=1), make(500, seed=2)
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert make(10, seed=1, dtype=torch.float64).dtype == torch.float64


def test_toy_set_geometry():
    radius = make_circles(4000, noise=0.0, seed=0).norm(dim=-1)
    assert torch.allclose(torch.sort(radius).values[[0, -1]], torch.tensor([1.0, 2.0]), atol=1e-5)
    assert (radius < 1.5).float().mean() == pytest.approx(0.5, abs=0.01)

    x = make_8gaussians(4000, noise=0.0, seed=0)
    angles = torch.atan2(x[:, 1], x[:, 0]) / (2 * math.pi / 8)
    assert torch.allclose(angles, angles.round(), atol=1e-5) and torch.allclose(
        x.norm(dim=-1), torch.tensor(2.0)
    )
    assert len(torch.unique(angles.round() % 8)) == 8

    x = make_checkerboard(4000, seed=0)
    cell = x.floor() + 2
    assert ((cell.sum(-1) % 2) == 0).all() and (x.abs() <= 2).all()
    assert len(torch.unique(cell, dim=0)) == 8  # every dark square is used

    radius = make_rings(4000, noise=0.0, seed=0).norm(dim=-1)
    assert torch.allclose(torch.unique(radius.round(decimals=4)), torch.tensor([0.5, 1.0, 1.5, 2.0]))

    x = make_2spirals(2000, noise=0.0, seed=0)
    assert torch.allclose(x[:1000].norm(dim=-1).max(), torch.tensor(3.0), atol=0.05)

    x = make_pinwheel(5000, num_arms=5, seed=0)
    arm_angle = torch.atan2(x[:, 1], x[:, 0])
    hist = torch.histc(arm_angle, bins=40, min=-math.pi, max=math.pi)
    assert hist.max() > 5 * hist.min()  # concentrated on arms, not spread around the circle


def test_splits_are_disjoint_and_reported():
    x = torch.arange(100.0).unsqueeze(-1)
    train, val, test = split_fractions(x, 0.1, 0.2, seed=0, name="demo")
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    joined = torch.cat([train, val, test]).squeeze(-1)
    assert torch.equal(torch.sort(joined).values, x.squeeze(-1))
    splits = load_splits(RunConfig(data="rings", num_samples=1000, val_fraction=0.2, test_fraction=0.1))
    assert splits.sizes() == {"train": 700, "val": 200, "test": 100}
    assert "train 700, validation 200, test 100" in splits.describe() and "seed 0" in splits.describe()


def test_tabular_files_and_standardization(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * np.array([1.0, 10.0, 0.1]) + 5
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "parts.npz", train=x[:150], validation=x[150:170], test=x[170:])
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="a,b,c", comments="")
    assert np.allclose(load_array(str(tmp_path / "x.csv"))["data"], x)

    config = RunConfig(val_fraction=0.1, test_fraction=0.1)
    splits = load_tabular_splits(str(tmp_path / "x.npy"), config)
    assert splits.sizes() == {"train": 160, "val": 20, "test": 20}
    prepared = splits.prepare(splits.train)
    assert torch.allclose(prepared.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(prepared.std(0, unbiased=False), torch.ones(3, dtype=torch.float64))
    # NLL in data units = NLL of the standardized data + sum log std.
    assert splits.nll_offset() == pytest.approx(float(torch.log(splits.scale).sum()))
    assert torch.allclose(splits.to_data_units(prepared), splits.train)

    fixed = load_tabular_splits(str(tmp_path / "parts.npz"), config)
    assert fixed.sizes() == {"train": 150, "val": 20, "test": 30} and fixed.split_rule == "fixed by the file"
    raw = load_tabular_splits(str(tmp_path / "x.csv"), config.replace(standardize=False))
    assert raw.shift is None and raw.nll_offset() == 0.0


def test_tabular_errors(tmp_path):
    config = RunConfig()
    np.save(tmp_path / "nan.npy", np.array([[1.0, 2.0], [np.inf, 1.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"2 of 3 rows contain NaN or infinite values \(first: row 1\)"):
        load_tabular_splits(str(tmp_path / "nan.npy"), config)
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"is empty \(shape \(0, 3\)\)"):
        load_array(str(tmp_path / "empty.npy"))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        load_array(str(tmp_path / "objects.npy"))
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="expected one array, or train, val and test"):
        load_array(str(tmp_path / "two.npz"))
    np.savez(tmp_path / "ragged.npz", train=np.zeros((5, 2)), val=np.zeros((2, 3)), test=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"val rows have \(3,\) columns, train rows \(2,\)"):
        load_tabular_splits(str(tmp_path / "ragged.npz"), config)
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"expected a .npy, .npz, .csv file"):
        load_array(str(tmp_path / "x.txt"))
    with pytest.raises(ValueError, match="too few to split"):
        split_fractions(torch.zeros(5, 2), 0.1, 0.1, 0, "tiny.csv")


def _write_maf(root, name, dim, sizes=(30, 5, 7), layout="folder"):
    rng = np.random.default_rng(dim)
    parts = {s: rng.normal(size=(n, dim)) for s, n in zip(("train", "val", "test"), sizes, strict=True)}
    if layout == "folder":
        folder = root / (name if name != "bsds300" else "BSDS300")
        folder.mkdir()
        for split, x in parts.items():
            np.save(folder / f"{'validation' if split == 'val' and dim == 8 else split}.npy", x)
    else:
        np.savez(root / f"{name}.npz", **parts)
    return parts


@pytest.mark.parametrize("name", sorted(MAF_DIMENSIONS))
def test_maf_layout(tmp_path, name):
    dim = MAF_DIMENSIONS[name]
    parts = _write_maf(tmp_path, name, dim)
    splits = load_splits(RunConfig(data=name.upper(), data_dir=str(tmp_path)))
    assert splits.sizes() == {"train": 30, "val": 5, "test": 7} and splits.event_shape == (dim,)
    assert np.allclose(splits.test.numpy(), parts["test"]) and splits.split_rule == "fixed (MAF paper)"


def test_maf_npz_layout_and_errors(tmp_path):
    _write_maf(tmp_path, "gas", 8, layout="npz")
    assert load_maf("gas", str(tmp_path)).sizes() == {"train": 30, "val": 5, "test": 7}
    _write_maf(tmp_path, "power", 5)  # POWER has 6 columns after the MAF preprocessing
    with pytest.raises(
        ValueError, match=r"power train: expected rows of 6 columns, got an array of shape \(30, 5\)"
    ):
        load_maf("power", str(tmp_path))
    with pytest.raises(ValueError, match="found neither"):
        load_maf("hepmass", str(tmp_path))
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "train.npy", np.zeros((4, 43)))
    with pytest.raises(ValueError, match="has no val.npy"):
        load_maf("miniboone", str(tmp_path))


def test_torchvision_folder_layout(monkeypatch):
    # A stand-in for torchvision.datasets that serves arrays shaped like the real ones.
    import sys
    import types

    def dataset(shape):
        class Fake:
            def __init__(self, root, train, download):
                assert root == "/data" and download is False
                n = 15 if train else 7
                data = np.arange(n * int(np.prod(shape))).reshape(n, *shape) % 256
                # As torchvision: MNIST holds a uint8 tensor, CIFAR-10 a uint8 array.
                self.data = (
                    torch.as_tensor(data, dtype=torch.uint8) if len(shape) == 2 else data.astype(np.uint8)
                )

        return Fake

    fake = types.ModuleType("torchvision.datasets")
    fake.MNIST, fake.CIFAR10 = dataset((28, 28)), dataset((32, 32, 3))
    package = types.ModuleType("torchvision")
    package.datasets = fake
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    import pyro_flows.data.vision as vision

    monkeypatch.setattr(vision, "VAL_SIZE", 5)  # the last 5 training images validate
    mnist = vision.load_torchvision("mnist", "/data")
    assert mnist.sizes() == {"train": 10, "val": 5, "test": 7} and mnist.event_shape == (1, 28, 28)
    assert mnist.levels == 256 and mnist.nll_offset() == pytest.approx(784 * math.log(256))
    cifar = vision.load_torchvision("cifar10", "/data")
    assert cifar.event_shape == (3, 32, 32)
    raw = np.arange(32 * 32 * 3).reshape(32, 32, 3) % 256
    assert torch.equal(cifar.train[0, :, 2, 5], torch.tensor(raw[2, 5], dtype=torch.float64))


def test_discrete_files_with_levels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 4, size=(50, 1, 4, 4))
    np.save(tmp_path / "img.npy", images)
    splits = load_tabular_splits(str(tmp_path / "img.npy"), RunConfig(levels=4))
    assert splits.levels == 4 and splits.event_shape == (1, 4, 4)
    assert splits.nll_offset() == pytest.approx(16 * math.log(4))
    y = splits.prepare(splits.train)  # dequantized into [0, 1)
    assert (y >= 0).all() and (y < 1).all() and torch.equal((y * 4).floor(), splits.train)
    np.save(tmp_path / "bad.npy", images + 0.5)
    with pytest.raises(
        ValueError, match=r"--levels 4 expects integer values 0..3, found [0-3].5 \(640 such values\)"
    ):
        load_tabular_splits(str(tmp_path / "bad.npy"), RunConfig(levels=4))


def test_files_that_are_not_numpy_files_are_named_as_such(tmp_path):
    (tmp_path / "text.npy").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"text.npy is not a .npy file written by NumPy \(a text table"):
        load_array(str(tmp_path / "text.npy"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk.npz is not a .npz file written by NumPy"):
        load_array(str(tmp_path / "junk.npz"))


def test_constant_coordinates_are_named_for_vectors_and_images():
    from pyro_flows.data.splits import Splits

    x = torch.randn(20, 4)
    x[:, 2] = 7.0
    with pytest.raises(ValueError, match=r"demo: column 2 \(0-based\) holds the same value \(7\) in all 20"):
        Splits("demo", x, x[:2], x[:2]).check_spread()
    images = torch.randn(20, 1, 2, 2)
    images[:, 0, 1, 0] = 0.0
    images[:, 0, 0, 1] = 0.0
    with pytest.raises(
        ValueError, match=r"positions \(0, 0, 1\), \(0, 1, 0\) \(0-based\) hold the same value"
    ):
        Splits("img", images, images[:2], images[:2]).check_spread()
    # Discrete data are dequantized: a constant level is a uniform interval, not a point.
    levels = torch.zeros(20, 2)
    Splits("levels", levels, levels[:2], levels[:2], levels=4).check_spread()
    Splits("fine", torch.randn(20, 3), torch.randn(2, 3), torch.randn(2, 3)).check_spread()


def test_data_paths_are_made_absolute_and_names_stay_names(tmp_path, monkeypatch):
    from pyro_flows.data.registry import is_data_file, resolve_data_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "moons").write_text("not the toy set")  # a file named like a built-in set
    assert not is_data_file("moons") and not is_data_file("POWER")
    assert is_data_file("x.csv") and is_data_file(os.path.join("sub", "table"))
    config = resolve_data_paths(RunConfig(data="x.csv", data_dir="maf"))
    assert config.data == str(tmp_path / "x.csv") and config.data_dir == str(tmp_path / "maf")
    assert resolve_data_paths(RunConfig(data="moons")).data == "moons"
