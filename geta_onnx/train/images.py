"""folder:DIR, one sub-folder of images per class (ImageFolder layout), read lazily with Pillow.

    DIR/<class>/*.png                     everything is training data
    DIR/train/<class>/*, DIR/val/<class>/*   (val may also be valid, validation or test)
    DIR/train/..., DIR/val/..., DIR/test/...  (both: test is the eval split, val the validation
                                               split the quality guard scores)
Images are decoded per batch, never all at once, so a large folder costs no memory up front.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .readers import _IMAGE_EXTS, Arrays

_EVAL_DIRS = ("val", "valid", "validation", "test")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("folder: data specs need Pillow to decode images; run `pip install pillow`") from None
    return Image


class ImageFiles:
    """A lazy (N, H, W, C) uint8 array over image files: indexing with a list of rows decodes
    those images. All images must have one size unless `size` (H, W) resizes them on read."""

    def __init__(self, paths: list[Path], *, size: tuple[int, int] | None, gray: bool):
        self.paths, self.gray = paths, gray
        self.resize = size is not None  # else: every image must match the first one
        first = _check_headers(paths)
        if size is None:
            size = first
        self.size = size
        self.shape = (len(paths), size[0], size[1], 1 if gray else 3)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows) -> np.ndarray:
        Image = _pil()
        out = np.empty((len(rows),) + self.shape[1:], np.uint8)  # (B, H, W, C)
        for i, r in enumerate(np.asarray(rows).reshape(-1)):
            path = self.paths[int(r)]
            try:
                with Image.open(path) as im:
                    im = im.convert("L" if self.gray else "RGB")
                    if (im.height, im.width) != self.size:
                        if not self.resize:
                            raise DataError(f"folder: '{path}' is {im.height}x{im.width}, other images are "
                                            f"{self.size[0]}x{self.size[1]}; resize them or set resize = true")
                        im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
                    out[i] = np.asarray(im).reshape(self.shape[1:])
            except OSError as e:
                raise DataError(f"folder: cannot decode image '{path}' ({e})") from None
        return out


def _check_headers(paths: list[Path]) -> tuple[int, int]:
    """Open every file's header (cheap: no pixels decoded) so a file that is not an image is
    named before training, not in the middle of it; returns the first image's (H, W)."""
    Image = _pil()
    first = None
    for path in paths:
        try:
            with Image.open(path) as im:
                first = first or (im.height, im.width)
        except OSError as e:  # PIL's UnidentifiedImageError is an OSError
            raise DataError(f"folder: '{path}' is not an image PIL can read ({type(e).__name__}); remove or "
                            "replace it") from None
    return first


def read_folder(rest: str, *, image_size: tuple[int, int] | None, gray: bool | None) -> Arrays:
    """image_size: resize every image to (H, W); gray: force 1 (True) or 3 (False) channels,
    None = 1 channel only if the first image is grayscale."""
    root = Path(rest)
    if not root.is_dir():
        raise DataError(f"folder:{rest}: no such directory")
    train_root = root / "train" if (root / "train").is_dir() else root
    held = [root / d for d in _EVAL_DIRS if train_root != root and (root / d).is_dir()]
    # a test/ beside a validation folder is the eval split, and the validation folder its own split
    val_root = held[0] if len(held) > 1 and held[-1].name == "test" else None
    eval_root = held[-1] if val_root is not None else next(iter(held), None)
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"folder:{rest}: no class sub-folders in '{train_root}'; put the images of each class "
                        "in a folder named after the class")
    train_files, train_y = _list(train_root, classes, rest)
    if not train_files:
        raise DataError(f"folder:{rest}: no image files ({', '.join(sorted(_IMAGE_EXTS))}) under '{train_root}'")
    if gray is None:
        _check_headers(train_files[:1])
        with _pil().open(train_files[0]) as im:
            gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
    x = ImageFiles(train_files, size=image_size, gray=gray)
    eval_x, eval_y = _held_split(eval_root, train_root, classes, rest, image_size, gray)
    val_x, val_y = _held_split(val_root, train_root, classes, rest, image_size, gray)
    return Arrays({"x": x}, train_y, eval_x, eval_y, classes=classes, channels_last=True, val_x=val_x, val_y=val_y)


def _held_split(folder: Path | None, train_root: Path, classes: list[str], rest: str, image_size, gray):
    """({"x": ImageFiles}, labels) of a held-out folder, or (None, None) without one (or an empty one)."""
    if folder is None:
        return None, None
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise DataError(f"folder:{rest}: '{folder}' has classes missing from '{train_root}': {', '.join(extra)}")
    files, y = _list(folder, classes, rest)
    return ({"x": ImageFiles(files, size=image_size, gray=gray)}, y) if files else (None, None)


def _list(folder: Path, classes: list[str], rest: str) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for label, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue
        found = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in _IMAGE_EXTS and p.is_file())
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64)
