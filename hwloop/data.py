"""Data sets: scikit-learn's digits, CIFAR-10 from its JPEG tarball, and any image folder.

* :func:`load_digits` — the 1,797 8×8 digits bundled with scikit-learn, split stratified.
* :func:`load_cifar10` — CIFAR-10 (JPEG re-encoding) from ``cifar10_jpg.tar.gz``: the
  file's sha256 is verified, every image is decoded once and the uint8 arrays are cached
  as ``.npy`` under ``$HWLOOP_HOME/cache`` (later loads take well under a second).
* :func:`load_image_folder` — ``root/<class>/<image>`` files of any size, decoded lazily.
* :func:`make_loaders` — train/validation ``DataLoader`` pairs with normalisation and, for
  training images, random-crop + horizontal-flip augmentation.

The CIFAR-10 tarball is looked for in ``root`` (a folder holding it or the file itself),
then ``$HWLOOP_CIFAR10``, then ``../shared/data/cifar10`` next to the hwloop checkout.

Example:
    >>> from hwloop.data import load_digits
    >>> x, y = load_digits("train", val_fraction=0.2, seed=0)
    >>> tuple(x.shape), x.dtype, int(y.max())
    ((1437, 1, 8, 8), torch.float32, 9)
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from hwloop.errors import ConfigError, DataError

__all__ = ["CIFAR10_SHA256", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_TARBALL", "DATASETS",
           "DIGITS_MEAN", "DIGITS_STD", "IMAGE_EXTENSIONS", "ImageFolder", "default_cifar10_root", "cache_root",
           "load_digits", "load_cifar10", "load_image_folder", "make_loaders", "sha256_file"]

CIFAR10_TARBALL = "cifar10_jpg.tar.gz"
CIFAR10_SHA256 = "fdf0b4f6a0ce0e8a5d81bb436b49a9fb87e6911e1442da8db80f1a61ec5517e3"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_COUNTS = {"train": 50_000, "test": 10_000}
#: per-channel statistics of the JPEG training images (measured, see the tarball's README).
CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)
CIFAR10_STD = (0.2452, 0.2428, 0.2606)
#: pixel statistics of all 1,797 digits after scaling 0..16 to 0..1.
DIGITS_MEAN = 0.30526
DIGITS_STD = 0.37605
#: ImageNet statistics, the usual default for arbitrary photographs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DATASETS = ("digits", "cifar10", "imagefolder")
SPLITS = ("train", "test")


def cache_root() -> Path:
    """``$HWLOOP_HOME/cache`` (``HWLOOP_HOME`` defaults to ``~/.hwloop``)."""
    from hwloop.paths import hwloop_home

    return hwloop_home() / "cache"


def default_cifar10_root() -> Path:
    """``$HWLOOP_CIFAR10`` if set, else ``../shared/data/cifar10`` relative to the checkout."""
    env = os.environ.get("HWLOOP_CIFAR10")
    if env:
        return Path(env).expanduser()
    return (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10").resolve()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:  # (hashlib.file_digest is Python 3.11+; hwloop supports 3.10)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- digits
def load_digits(split: str = "train", val_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8×8 digits as ``(x, y)``: float32 ``N×1×8×8`` normalised, int64 labels 0..9.

    Pixels are scaled to 0..1 and standardised with :data:`DIGITS_MEAN`/:data:`DIGITS_STD`.
    The split is stratified by label and fixed by ``seed``.

    Args:
        split: ``train``, ``val`` or ``all``.
        val_fraction: share of the images in ``val`` (strictly between 0 and 1).
        seed: split seed.

    Example:
        >>> x, y = load_digits("val", val_fraction=0.25, seed=1)
        >>> len(x) == len(y) == 450
        True
    """
    if split not in ("train", "val", "all"):
        raise ConfigError(f"digits split {split!r} is unknown; allowed: train, val, all")
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r} must be a number strictly between 0 and 1")
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    xs, ys = _sk_digits(return_X_y=True)
    x = ((xs.astype(np.float32) / 16.0 - DIGITS_MEAN) / DIGITS_STD).reshape(-1, 1, 8, 8)
    y = ys.astype(np.int64)
    if split != "all":
        idx_train, idx_val = train_test_split(np.arange(len(y)), test_size=float(val_fraction), stratify=y,
                                              random_state=seed)
        idx = np.sort(idx_train if split == "train" else idx_val)
        x, y = x[idx], y[idx]
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


# --------------------------------------------------------------------------------------------- CIFAR-10
def _tarball(root: str | os.PathLike[str] | None) -> Path:
    base = Path(root).expanduser() if root is not None else default_cifar10_root()
    path = base / CIFAR10_TARBALL if base.is_dir() else base
    if not path.is_file():
        raise DataError(f"CIFAR-10 tarball not found at {path}; pass root= (a folder holding {CIFAR10_TARBALL} "
                        "or the file itself) or set $HWLOOP_CIFAR10")
    return path


def _decode(path: Path, *, progress: bool, expected_total: int | None
            ) -> dict[str, tuple[np.ndarray, np.ndarray, tuple[str, ...]]]:
    """Decode every ``<split>/<class>/<n>.jpg`` member: split → (uint8 N×3×32×32, int64 labels, classes)."""
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    found: dict[str, list[tuple[str, Any, np.ndarray]]] = {s: [] for s in SPLITS}
    try:
        with tarfile.open(path, "r:gz") as tar, tqdm(total=expected_total, unit="img", disable=not progress,
                                                      desc="decoding CIFAR-10 (once)") as bar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 3 or parts[-3] not in SPLITS:
                    continue
                if PurePosixPath(parts[-1]).suffix.lower() not in (".jpg", ".jpeg", ".png"):
                    continue
                f = tar.extractfile(member)
                assert f is not None
                try:
                    with Image.open(io.BytesIO(f.read())) as im:
                        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
                except (UnidentifiedImageError, OSError) as e:
                    raise DataError(f"{member.name} in {path} is not a readable image ({e})") from e
                if arr.shape != (32, 32, 3):
                    raise DataError(f"{member.name} in {path} is {arr.shape[1]}x{arr.shape[0]}; CIFAR-10 images "
                                    "are 32x32")
                stem = PurePosixPath(parts[-1]).stem
                order = (0, int(stem), "") if stem.isdigit() else (1, 0, stem)
                found[parts[-3]].append((parts[-2], order, arr.transpose(2, 0, 1)))
                bar.update(1)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable .tar.gz ({type(e).__name__}: {e}); re-copy the file") from e
    classes = tuple(sorted({c for items in found.values() for c, _, _ in items}))
    out = {}
    for split, items in found.items():
        if not items:
            raise DataError(f"{path} has no {split}/<class>/<image> files; expected the cifar10-jpg layout")
        items.sort(key=lambda t: (t[0], t[1]))
        x = np.stack([a for _, _, a in items])
        y = np.array([classes.index(c) for c, _, _ in items], dtype=np.int64)
        out[split] = (x, y, classes)
    return out


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_cached(x_path: Path, y_path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not (x_path.is_file() and y_path.is_file()):
        return None
    try:
        x = np.load(x_path, allow_pickle=False)
        y = np.load(y_path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # torn or foreign file: decode again
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32) or y.shape != (len(x),):
        return None
    return x, y


def load_cifar10(root: str | os.PathLike[str] | None = None, split: str = "train",
                 cache_dir: str | os.PathLike[str] | None = None, *, sha256: str | None = CIFAR10_SHA256,
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 (JPEG) as ``(x, y)``: uint8 ``N×3×32×32`` images and int64 labels 0..9.

    The first call verifies the tarball's sha256, decodes both splits (about 10 s for the
    60,000 images on 2 cores, with a progress bar) and caches them as ``.npy`` files named
    after the tarball's hash; later calls verify the hash and read the cache.

    Args:
        root: a folder holding ``cifar10_jpg.tar.gz``, or the tarball itself (default:
            :func:`default_cifar10_root`).
        split: ``train`` (50,000 images) or ``test`` (10,000).
        cache_dir: where the ``.npy`` files go (default ``$HWLOOP_HOME/cache``).
        sha256: the expected hash; None skips the check (for a re-packed copy you trust).
        progress: show a progress bar while decoding.

    Raises:
        DataError: the tarball is missing, its hash differs, or it is not the expected layout.

    Example:
        >>> x, y = load_cifar10(split="test")  # doctest: +SKIP
        >>> tuple(x.shape), x.dtype  # doctest: +SKIP
        ((10000, 3, 32, 32), torch.uint8)
    """
    if split not in SPLITS:
        raise ConfigError(f"CIFAR-10 split {split!r} is unknown; allowed: {', '.join(SPLITS)}")
    path = _tarball(root)
    digest = sha256_file(path)
    if sha256 is not None and digest != sha256.lower():
        raise DataError(f"{path} has sha256 {digest}, expected {sha256}; the file is corrupt or not the "
                        "CIFAR-10 JPEG tarball (re-copy it)")
    cdir = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    stem = f"cifar10-{digest[:16]}"
    paths = {s: (cdir / f"{stem}-{s}-x.npy", cdir / f"{stem}-{s}-y.npy") for s in SPLITS}
    cached = _load_cached(*paths[split])
    if cached is None:
        official = digest == CIFAR10_SHA256
        decoded = _decode(path, progress=progress, expected_total=sum(CIFAR10_COUNTS.values()) if official else None)
        for s, (x, y, classes) in decoded.items():
            if official and (classes != CIFAR10_CLASSES or len(x) != CIFAR10_COUNTS[s]):
                raise DataError(f"{path}: {s} has {len(x)} images in classes {classes}; expected "
                                f"{CIFAR10_COUNTS[s]} in {CIFAR10_CLASSES}")
        try:
            cdir.mkdir(parents=True, exist_ok=True)
            for s, (x, y, _) in decoded.items():
                _save_npy(paths[s][0], x)
                _save_npy(paths[s][1], y)
        except OSError as e:
            raise DataError(f"cannot write the CIFAR-10 cache in {cdir} ({e.strerror}); pass cache_dir=") from e
        cached = decoded[split][0], decoded[split][1]
    x, y = cached
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


# --------------------------------------------------------------------------------------------- folders
class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """``root/<class>/<image>`` files; each item is ``(uint8 3×size×size, label)`` (or ``transform`` of it).

    Classes are the sorted sub-folder names; images are decoded with PIL on access and
    resized to ``size``×``size``.

    Example:
        >>> ds = ImageFolder("photos/train", size=64)  # doctest: +SKIP
        >>> ds.classes, len(ds)  # doctest: +SKIP
        (('cat', 'dog'), 2000)
    """

    def __init__(self, root: str | os.PathLike[str], size: int = 32,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"image size={size!r} must be a positive integer")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist or is not a folder")
        self.classes = tuple(sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")))
        self.samples: list[tuple[Path, int]] = []
        for label, c in enumerate(self.classes):
            for p in sorted((self.root / c).rglob("*")):
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                    self.samples.append((p, label))
        if not self.samples:
            raise DataError(f"image folder {self.root} has no <class>/<image> files ({', '.join(IMAGE_EXTENSIONS)})")
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
                if rgb.size != (self.size, self.size):
                    rgb = rgb.resize((self.size, self.size), Image.Resampling.BILINEAR)
                arr = np.asarray(rgb, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path} is not a readable image ({e})") from e
        x = torch.from_numpy(arr.transpose(2, 0, 1).copy())
        return (self.transform(x) if self.transform else x), label


def load_image_folder(path: str | os.PathLike[str], size: int = 32) -> ImageFolder:
    """An :class:`ImageFolder` over ``path/<class>/<image>`` (uint8 ``3×size×size`` items)."""
    return ImageFolder(path, size=size)


# --------------------------------------------------------------------------------------------- loaders
class _Normalize:
    """uint8 CHW → float32, standardised per channel; optional pad-4 random crop + horizontal flip."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], augment: bool, pad: int = 4) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment
        self.pad = pad

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.augment:
            h, w = x.shape[-2:]
            padded = torch.nn.functional.pad(x, (self.pad,) * 4)
            i, j = (int(v) for v in torch.randint(0, 2 * self.pad + 1, (2,)))
            x = padded[:, i:i + h, j:j + w]
            if bool(torch.rand(()) < 0.5):
                x = x.flip(-1)
        return (x.float() / 255.0 - self.mean) / self.std


class _Images(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: _Normalize) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i]), self.y[i]


def _split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(n * val_fraction)))
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _pick(ds: Dataset[Any], limit: int, seed: int) -> Dataset[Any]:
    """``limit`` items of ``ds`` drawn at random by ``seed``, kept in their stored order (all when it has fewer)."""
    n = len(ds)  # type: ignore[arg-type]
    if limit >= n:
        return ds
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values.tolist()
    return Subset(ds, idx)


def make_loaders(name: str, batch_size: int, *, root: str | os.PathLike[str] | None = None,
                 val_fraction: float = 0.2, seed: int = 0, augment: bool = True, size: int = 32,
                 num_workers: int = 0, cache_dir: str | os.PathLike[str] | None = None,
                 sha256: str | None = CIFAR10_SHA256, limit: int | None = None,
                 holdout: int = 0) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Train and validation ``DataLoader`` s for a data set.

    * ``digits``: stratified split by ``val_fraction``/``seed``; no augmentation.
    * ``cifar10``: train = the 50,000 training images (normalised, random crop with 4-pixel
      padding + horizontal flip when ``augment``), validation = the 10,000 test images; with
      ``holdout=N``, validation = ``N`` training images chosen by ``seed`` (never augmented)
      and train = the other ``50,000 - N``, so choices can be made without the test set
      (score the test set with ``holdout=0``'s validation loader, once, at the end).
    * ``imagefolder``: ``root/train`` + ``root/val`` (or ``root/test``) when present, else a
      ``val_fraction`` split of ``root``; ImageNet normalisation, same augmentation.

    The training loader shuffles with a generator seeded by ``seed``. ``limit`` keeps ``limit``
    images of each side drawn at random by ``seed`` (in their stored order; quick experiments and
    tests): the CIFAR-10 arrays are stored class by class, so the first 1,000 test images are all
    airplanes. ``cache_dir`` and
    ``sha256`` are passed to :func:`load_cifar10`.

    Example:
        >>> train, val = make_loaders("digits", 64)
        >>> xb, yb = next(iter(train))
        >>> tuple(xb.shape)
        (64, 1, 8, 8)
    """
    if name not in DATASETS:
        raise ConfigError(f"data set {name!r} is unknown; allowed: {', '.join(DATASETS)}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
    if not isinstance(holdout, int) or isinstance(holdout, bool) or holdout < 0:
        raise ConfigError(f"holdout={holdout!r} must be a non-negative integer")
    if holdout and name != "cifar10":
        raise ConfigError(f"holdout={holdout} is only for cifar10 (digits and imagefolder split by val_fraction)")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit={limit!r} must be a positive integer or None")
    train_ds: Dataset[Any]
    val_ds: Dataset[Any]
    if name == "digits":
        train_ds = TensorDataset(*load_digits("train", val_fraction, seed))
        val_ds = TensorDataset(*load_digits("val", val_fraction, seed))
    elif name == "cifar10":
        xt, yt = load_cifar10(root, "train", cache_dir, sha256=sha256)
        if holdout:
            if holdout >= len(xt):
                raise ConfigError(f"holdout={holdout} must be below the {len(xt)} training images")
            tr_idx, va_idx = _split_indices(len(xt), holdout / len(xt), seed)
            train_ds = _Images(xt[tr_idx], yt[tr_idx], _Normalize(CIFAR10_MEAN, CIFAR10_STD, augment))
            val_ds = _Images(xt[va_idx], yt[va_idx], _Normalize(CIFAR10_MEAN, CIFAR10_STD, False))
        else:
            xv, yv = load_cifar10(root, "test", cache_dir, sha256=sha256, progress=False)
            train_ds = _Images(xt, yt, _Normalize(CIFAR10_MEAN, CIFAR10_STD, augment))
            val_ds = _Images(xv, yv, _Normalize(CIFAR10_MEAN, CIFAR10_STD, False))
    else:
        if root is None:
            raise ConfigError("data set 'imagefolder' needs root= (a folder of <class>/<image> files)")
        base = Path(root).expanduser()
        val_dir = next((base / d for d in ("val", "test") if (base / d).is_dir()), None)
        if (base / "train").is_dir() and val_dir is not None:
            train_ds = ImageFolder(base / "train", size, _Normalize(IMAGENET_MEAN, IMAGENET_STD, augment))
            val_ds = ImageFolder(val_dir, size, _Normalize(IMAGENET_MEAN, IMAGENET_STD, False))
        else:
            tr_idx, va_idx = _split_indices(len(ImageFolder(base, size)), val_fraction, seed)
            train_ds = Subset(ImageFolder(base, size, _Normalize(IMAGENET_MEAN, IMAGENET_STD, augment)), tr_idx)
            val_ds = Subset(ImageFolder(base, size, _Normalize(IMAGENET_MEAN, IMAGENET_STD, False)), va_idx)
    if limit is not None:
        train_ds, val_ds = _pick(train_ds, limit, seed), _pick(val_ds, limit, seed + 1)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=gen, num_workers=num_workers,
                       drop_last=False)
    val = DataLoader(val_ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return train, val
