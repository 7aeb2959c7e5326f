"""Data sets: digits, CIFAR-10 from a JPEG tarball (a tiny one built here, plus the real file's hash),
image folders and loaders."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hwloop.data import (
    CIFAR10_SHA256,
    CIFAR10_TARBALL,
    ImageFolder,
    default_cifar10_root,
    load_cifar10,
    load_digits,
    load_image_folder,
    make_loaders,
    sha256_file,
)
from hwloop.errors import ConfigError, DataError

REAL_TARBALL = default_cifar10_root() / CIFAR10_TARBALL
COLORS = {"cat": (200, 30, 30), "dog": (30, 30, 200)}


# --------------------------------------------------------------------------------------------- digits
def test_digits_shapes_labels_and_normalisation() -> None:
    xt, yt = load_digits("train", val_fraction=0.2, seed=0)
    xv, yv = load_digits("val", val_fraction=0.2, seed=0)
    assert xt.shape == (1437, 1, 8, 8) and xv.shape == (360, 1, 8, 8)
    assert xt.dtype == torch.float32 and yt.dtype == torch.int64
    assert set(yt.tolist()) == set(range(10)) == set(yv.tolist())
    # stratified: every class holds about 20 % of its images in val
    counts = torch.bincount(yv, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    xa, _ = load_digits("all")
    assert abs(float(xa.mean())) < 1e-3 and abs(float(xa.std()) - 1.0) < 1e-3


def test_digits_split_is_seeded_and_disjoint() -> None:
    a, _ = load_digits("val", seed=0)
    b, _ = load_digits("val", seed=0)
    c, _ = load_digits("val", seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    xt, _ = load_digits("train", seed=0)
    xa, _ = load_digits("all")
    rows = {tuple(r.tolist()) for r in xa.reshape(len(xa), -1)}
    train_rows = {tuple(r.tolist()) for r in xt.reshape(len(xt), -1)}
    val_rows = {tuple(r.tolist()) for r in a.reshape(len(a), -1)}
    assert train_rows | val_rows == rows


@pytest.mark.parametrize("kw, match", [({"split": "test"}, "split 'test'"), ({"val_fraction": 0.0}, "val_fraction"),
                                       ({"val_fraction": 1.5}, "val_fraction")])
def test_digits_bad_arguments(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_digits(**kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- CIFAR-10
def _jpeg(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_tarball(path: Path, n: int = 3, *, size: int = 32) -> Path:
    """A tiny tarball in the cifar10-jpg layout; members written in scrambled order, stems 0..n-1."""
    with tarfile.open(path, "w:gz") as tar:
        for split in ("test", "train"):
            for cls in ("dog", "cat"):
                for i in reversed(range(n)):
                    shade = 10 * i
                    r, g, b = COLORS[cls]
                    data = _jpeg((r, g + shade, b), size)
                    info = tarfile.TarInfo(f"cifar10-jpg/{split}/{cls}/{i}.jpg")  # 10 sorts before 2 as text
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture()
def fake_cifar(tmp_path: Path) -> Path:
    return make_tarball(tmp_path / CIFAR10_TARBALL, n=12)


def test_fake_tarball_decodes_in_order(fake_cifar: Path, tmp_path: Path) -> None:
    digest = sha256_file(fake_cifar)
    x, y = load_cifar10(fake_cifar.parent, "train", tmp_path / "cache", sha256=digest, progress=False)
    assert x.shape == (24, 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist() == [0] * 12 + [1] * 12  # classes sorted: cat=0, dog=1
    # cat images are red, dog images blue; the green shade rises with the numeric stem (10 after 9)
    assert (x[:12, 0].float().mean() > 150) and (x[12:, 2].float().mean() > 150)
    greens = x[:12, 1].float().mean(dim=(1, 2))
    assert torch.all(greens[1:] > greens[:-1]), greens


def test_cache_is_read_instead_of_decoding(fake_cifar: Path, tmp_path: Path) -> None:
    digest = sha256_file(fake_cifar)
    cache = tmp_path / "cache"
    x1, _ = load_cifar10(fake_cifar, "test", cache, sha256=digest, progress=False)
    files = sorted(p.name for p in cache.glob("*.npy"))
    assert files == [f"cifar10-{digest[:16]}-{s}-{k}.npy" for s in ("test", "train") for k in ("x", "y")]
    # overwrite the cached images with a marker: the next load must return the marker
    np.save(cache / f"cifar10-{digest[:16]}-test-x.npy", np.full(tuple(x1.shape), 7, np.uint8))
    x2, _ = load_cifar10(fake_cifar, "test", cache, sha256=digest, progress=False)
    assert int(x2.max()) == 7 == int(x2.min())
    # a torn cache file is ignored and the images decoded again
    (cache / f"cifar10-{digest[:16]}-test-x.npy").write_bytes(b"\x93NUMPY garbage")
    x3, _ = load_cifar10(fake_cifar, "test", cache, sha256=digest, progress=False)
    assert torch.equal(x3, x1)


def test_default_cache_is_under_hwloop_home(fake_cifar: Path, tmp_path: Path) -> None:
    load_cifar10(fake_cifar, "train", sha256=sha256_file(fake_cifar), progress=False)
    assert len(list((tmp_path / "hwloop-home" / "cache").glob("cifar10-*.npy"))) == 4


def test_checksum_mismatch_is_a_one_line_data_error(fake_cifar: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as ei:
        load_cifar10(fake_cifar, "train", tmp_path / "c", progress=False)  # expects the real CIFAR-10 hash
    msg = str(ei.value)
    assert "\n" not in msg and str(fake_cifar) in msg and CIFAR10_SHA256 in msg and "re-copy" in msg


def test_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / CIFAR10_TARBALL
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"not really gzip" * 10)
    with pytest.raises(DataError, match="not a readable .tar.gz"):
        load_cifar10(bad, "train", tmp_path / "c", sha256=None, progress=False)


def test_wrong_image_size_is_a_data_error(tmp_path: Path) -> None:
    tb = make_tarball(tmp_path / "small.tar.gz", n=1, size=16)
    with pytest.raises(DataError, match="16x16; CIFAR-10 images are 32x32"):
        load_cifar10(tb, "train", tmp_path / "c", sha256=None, progress=False)


def test_missing_tarball_and_bad_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="not found at .*nowhere"):
        load_cifar10(tmp_path / "nowhere", progress=False)
    with pytest.raises(ConfigError, match="split 'val'"):
        load_cifar10(tmp_path, "val")


def test_env_var_names_the_root(fake_cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWLOOP_CIFAR10", str(fake_cifar.parent))
    assert default_cifar10_root() == fake_cifar.parent
    x, _ = load_cifar10(None, "test", tmp_path / "c", sha256=sha256_file(fake_cifar), progress=False)
    assert len(x) == 24


@pytest.mark.skipif(not REAL_TARBALL.is_file(), reason="needs ../shared/data/cifar10/cifar10_jpg.tar.gz")
def test_real_tarball_hash_and_layout() -> None:
    assert sha256_file(REAL_TARBALL) == CIFAR10_SHA256
    seen = []
    with tarfile.open(REAL_TARBALL, "r:gz") as tar:
        for m in tar:
            if m.isfile():
                seen.append(m.name)
                f = tar.extractfile(m)
                assert f is not None
                with Image.open(io.BytesIO(f.read())) as im:
                    assert im.size == (32, 32) and im.mode == "RGB"
            if len(seen) == 5:
                break
    assert all(n.split("/")[1] in ("train", "test") and n.endswith(".jpg") for n in seen), seen


def test_cifar_loaders_normalise_and_augment(fake_cifar: Path, tmp_path: Path) -> None:
    digest = sha256_file(fake_cifar)
    train, val = make_loaders("cifar10", 8, root=fake_cifar, cache_dir=tmp_path / "c", sha256=digest)
    xb, yb = next(iter(val))
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    # a red cat image: channel 0 well above the CIFAR mean, channel 2 below
    assert float(xb[0, 0].mean()) > 1.0 and float(xb[0, 2].mean()) < -1.0
    # augmentation: random crops with zero padding change some samples between passes, never the shape
    ds = train.dataset
    torch.manual_seed(0)
    views = [ds[0][0] for _ in range(20)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])
    assert all(torch.equal(val.dataset[0][0], val.dataset[0][0]) for _ in range(3))


# --------------------------------------------------------------------------------------------- folders
def _png_folder(root: Path, sizes: dict[str, list[int]]) -> Path:
    for cls, ss in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, s in enumerate(ss):
            Image.new("RGB", (s, s + 3), COLORS[cls]).save(root / cls / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder(tmp_path: Path) -> None:
    root = _png_folder(tmp_path / "imgs", {"dog": [40, 50], "cat": [20, 64, 33]})
    ds = load_image_folder(root, size=24)
    assert isinstance(ds, ImageFolder) and ds.classes == ("cat", "dog") and len(ds) == 5
    assert ds.targets == [0, 0, 0, 1, 1]
    x, label = ds[4]
    assert x.shape == (3, 24, 24) and x.dtype == torch.uint8 and label == 1
    assert int(x[2].float().mean()) > 150  # a blue dog


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no <class>/<image> files"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "broken" / "cls").mkdir(parents=True)
    (tmp_path / "broken" / "cls" / "a.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="a.jpg is not a readable image"):
        ImageFolder(tmp_path / "broken")[0]
    with pytest.raises(ConfigError, match="size=0"):
        ImageFolder(tmp_path / "broken", size=0)


def test_image_folder_loaders_with_and_without_split_folders(tmp_path: Path) -> None:
    flat = _png_folder(tmp_path / "flat", {"cat": [32] * 6, "dog": [32] * 4})
    train, val = make_loaders("imagefolder", 4, root=flat, val_fraction=0.3, size=16)
    assert len(train.dataset) == 7 and len(val.dataset) == 3
    assert next(iter(train))[0].shape == (4, 3, 16, 16)
    _png_folder(tmp_path / "split" / "train", {"cat": [32] * 2, "dog": [32] * 2})
    _png_folder(tmp_path / "split" / "val", {"cat": [32], "dog": [32]})
    train, val = make_loaders("imagefolder", 2, root=tmp_path / "split", size=8)
    assert len(train.dataset) == 4 and len(val.dataset) == 2


def test_digits_loaders_are_seeded() -> None:
    a, _ = make_loaders("digits", 32, seed=3)
    b, _ = make_loaders("digits", 32, seed=3)
    xa, ya = next(iter(a))
    xb, yb = next(iter(b))
    assert xa.shape == (32, 1, 8, 8) and torch.equal(ya, yb) and torch.equal(xa, xb)
    _, v = make_loaders("digits", 1000, limit=50)
    assert len(v.dataset) == 50


@pytest.mark.parametrize("kw, match", [({"name": "mnist"}, "'mnist' is unknown"),
                                       ({"batch_size": 0}, "batch_size=0"),
                                       ({"name": "imagefolder"}, "needs root=")])
def test_make_loaders_bad_arguments(kw: dict[str, object], match: str) -> None:
    args = {"name": "digits", "batch_size": 4, **kw}
    with pytest.raises(ConfigError, match=match):
        make_loaders(**args)  # type: ignore[arg-type]


def test_cifar_holdout_is_carved_from_training_images(fake_cifar: Path, tmp_path: Path) -> None:
    from hwloop.data import make_loaders

    digest = sha256_file(fake_cifar)
    kw = dict(root=fake_cifar, cache_dir=tmp_path / "c", sha256=digest, augment=False)
    train_all, test = make_loaders("cifar10", 4, **kw)
    n_train = len(train_all.dataset)
    train, val = make_loaders("cifar10", 4, holdout=3, seed=1, **kw)
    assert len(val.dataset) == 3 and len(train.dataset) == n_train - 3
    xs_all = {bytes(x.numpy().tobytes()) for x, _ in train_all.dataset}
    xs_val = [bytes(x.numpy().tobytes()) for x, _ in val.dataset]
    xs_train = {bytes(x.numpy().tobytes()) for x, _ in train.dataset}
    assert set(xs_val) <= xs_all and not set(xs_val) & xs_train  # from the training images, disjoint from train
    assert len(test.dataset) == 24  # holdout=0 keeps the test images as the validation side
    _, val_again = make_loaders("cifar10", 4, holdout=3, seed=1, **kw)
    assert [bytes(x.numpy().tobytes()) for x, _ in val_again.dataset] == xs_val  # seeded


def test_a_limit_draws_from_every_class_not_the_first_images(fake_cifar: Path, tmp_path: Path) -> None:
    """The stored CIFAR-10 arrays are sorted by class: ``limit`` keeps a seeded random draw, not the first N
    (which were all of one class, and made a benchmark score OBC on airplanes only)."""
    from hwloop.data import make_loaders

    digest = sha256_file(fake_cifar)
    kw = dict(root=fake_cifar, cache_dir=tmp_path / "c", sha256=digest, augment=False)
    train, test = make_loaders("cifar10", 4, limit=8, seed=0, **kw)
    assert len(train.dataset) == len(test.dataset) == 8
    assert {int(y) for _, y in test.dataset} == {0, 1} and {int(y) for _, y in train.dataset} == {0, 1}
    _, again = make_loaders("cifar10", 4, limit=8, seed=0, **kw)
    assert list(again.dataset.indices) == list(test.dataset.indices) == sorted(test.dataset.indices)  # seeded, in order


@pytest.mark.parametrize("kw", [{"holdout": -1}, {"holdout": 10**9}, {"holdout": 1.5}])
def test_cifar_holdout_bad_values(fake_cifar: Path, tmp_path: Path, kw: dict[str, object]) -> None:
    from hwloop.data import make_loaders

    with pytest.raises(ConfigError, match="holdout"):
        make_loaders("cifar10", 4, root=fake_cifar, cache_dir=tmp_path / "c", sha256=sha256_file(fake_cifar), **kw)


def test_holdout_is_only_for_cifar() -> None:
    from hwloop.data import make_loaders

    with pytest.raises(ConfigError, match="only for cifar10"):
        make_loaders("digits", 4, holdout=10)
