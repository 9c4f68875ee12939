"""Which files make up an image-folder dataset, with which labels, in which (stable) order.

Three layouts, detected in this order (``ROOT`` is the ``imagefolder:`` path):

``tinyimagenet``
    ``ROOT/train/<class>/...`` and ``ROOT/val/images/*`` labelled by ``ROOT/val/val_annotations.txt``
    (tab-separated ``file  class  ...``); TinyImageNet's unlabelled ``test/`` is ignored.
``imagefolder``
    ``ROOT/train/<class>/...`` and ``ROOT/test/<class>/...`` (or ``val/``).
``imagenet``
    ``ROOT/train/<wnid>/...`` and a flat ``ROOT/val/*.JPEG`` whose labels come from the ILSVRC2012
    devkit exactly as ``torchvision.datasets.ImageNet`` reads it: ``ROOT/meta.bin`` (torchvision's
    parsed copy), else ``ROOT/ILSVRC2012_devkit_t12/data/``, else ``ROOT/ILSVRC2012_devkit_t12.tar.gz``;
    the ground-truth lines belong to the val files in sorted file-name order.

Index rule (the one every index file follows): sample ``i`` of a split is the ``i``-th item of
``torchvision.datasets.ImageFolder(ROOT/<split>)``.  Classes are the split's sub-folders sorted by name (hidden
ones too: ImageFolder counts them); a class's files are those of ``sorted(os.walk(class_dir, followlinks=True))``,
each folder's names sorted, whose extension is one of :data:`IMG_EXTENSIONS` in any case (hidden files too).
Every listed file keeps its place whether or not it decodes.  Flat test layouts list their files sorted by name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dpcli.errors import DpcliError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# image formats torchvision's ImageFolder (and so dpcli) does not read: left out, but named in a warning,
# since a user who put them there meant them as data (metadata such as .txt or .xml is left out silently)
OTHER_IMAGE_EXTENSIONS = (
    ".gif",
    ".jfif",
    ".jpe",
    ".apng",
    ".avif",
    ".heic",
    ".heif",
    ".ico",
    ".jp2",
    ".j2k",
    ".tga",
    ".dib",
    ".pbm",
    ".pnm",
    ".qoi",
    ".dng",
    ".cr2",
    ".nef",
)
DEVKIT = "ILSVRC2012_devkit_t12"
META_FILE = "meta.bin"  # torchvision.datasets.imagenet.META_FILE


@dataclass(frozen=True)
class Layout:
    kind: str
    classes: tuple[str, ...]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    test_name: str
    root: Path
    passed_over: tuple[str, ...] = ()  # files in another image format (OTHER_IMAGE_EXTENSIONS), left out

    def relative(self, path: str) -> str:
        """``path`` relative to the dataset root, with '/' separators (as index files name it)."""
        return Path(os.path.relpath(path, self.root)).as_posix()

    def listing(self) -> str:
        """16 hex chars naming the train listing (relative paths and labels, in order): artifacts record it, so
        that names written later (``--paths-out``, ``--link-dir``) are refused for a folder that changed."""
        h = hashlib.sha256(b"dpcli-listing-v1\0")
        for path, label in self.train:
            h.update(f"{self.relative(path)}\0{label}\n".encode())
        return h.hexdigest()[:16]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _walk(folder: str) -> Iterator[tuple[str, list[str]]]:
    """``(dirpath, filenames)`` of ``os.walk(folder, followlinks=True)``; a folder that is its own ancestor (a
    symlink loop, on which os.walk never ends) or that cannot be read ends in one line naming it."""
    seen: dict[str, tuple[int, int]] = {}

    def fail(exc: OSError) -> None:
        raise DpcliError(f"Cannot read folder {exc.filename} ({exc.strerror or exc}).")

    for top, _, files in os.walk(folder, onerror=fail, followlinks=True):
        st = os.stat(top)
        seen[top] = (st.st_dev, st.st_ino)
        up = os.path.dirname(top)
        while len(up) >= len(folder) and up in seen:
            if seen[up] == seen[top]:
                raise DpcliError(f"Symlink loop: {top} leads back to {up}; remove or fix the link.")
            up = os.path.dirname(up)
        yield top, files


def list_images(folder: str, passed_over: list[str] | None = None) -> list[str]:
    """Image files under ``folder`` in torchvision's ``make_dataset`` order (see the module docstring); files in
    an image format dpcli does not read are appended to ``passed_over``.

    Like ImageFolder, a name is listed by its extension alone: a dangling link or a file that is no image keeps
    its place and is found unreadable when decoded.
    """
    found: list[str] = []
    for top, files in sorted(_walk(folder)):
        for name in sorted(files):
            if _is_image(name):
                found.append(os.path.join(top, name))
            elif passed_over is not None and name.lower().endswith(OTHER_IMAGE_EXTENSIONS):
                passed_over.append(os.path.join(top, name))
    return found


def _subdirs(folder: Path) -> list[Path]:
    """ImageFolder's classes: every sub-folder (links followed, hidden ones included), sorted by name."""
    try:
        with os.scandir(folder) as entries:
            return [folder / name for name in sorted(e.name for e in entries if e.is_dir())]
    except OSError as exc:
        raise DpcliError(f"Cannot read folder {folder} ({exc.strerror or exc}).") from None


def _top_images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if not p.name.startswith(".") and p.is_file() and _is_image(p.name))


def _class_split(
    split_dir: Path, classes: tuple[str, ...], name: str, passed_over: list[str] | None = None
) -> list[tuple[str, int]]:
    index = {c: i for i, c in enumerate(classes)}
    items: list[tuple[str, int]] = []
    stray = _top_images(split_dir)
    if stray:
        raise DpcliError(f"{stray[0]} lies directly in {split_dir}, outside any class folder; move it into one.")
    for sub in _subdirs(split_dir):
        if sub.name not in index:
            raise DpcliError(
                f"{name} class folder {sub} has no counterpart in the train split (classes: {', '.join(classes)})."
            )
        files = list_images(str(sub), passed_over)
        if name == "train" and not files:
            raise DpcliError(
                f"Train class folder {sub} contains no images ({', '.join(IMG_EXTENSIONS)}); "
                "ImageFolder counts every sub-folder of train/ as a class, hidden ones too."
            )
        items.extend((p, index[sub.name]) for p in files)
    if not items:
        raise DpcliError(f"The {name} split {split_dir} contains no images in class sub-folders.")
    return items


def scan(root: Path) -> Layout:
    """The layout of the folder ``root`` (see the module docstring)."""
    if not root.is_dir():
        raise DpcliError(f"Image folder {root} does not exist or is not a directory.")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DpcliError(f"Image folder {root} has no 'train' sub-folder (expected train/<class>/<images>).")
    classes = tuple(p.name for p in _subdirs(train_dir))
    if not classes:
        raise DpcliError(f"{train_dir} has no class sub-folders (expected train/<class>/<images>).")
    other: list[str] = []
    train = _class_split(train_dir, classes, "train", other)
    val = root / "val"
    if (val / "val_annotations.txt").is_file():
        return Layout("tinyimagenet", classes, train, _tiny_val(val, classes), "val", root, tuple(sorted(other)))
    for name in ("test", "val"):
        d = root / name
        if d.is_dir() and _subdirs(d):
            test = _class_split(d, classes, name, other)
            return Layout("imagefolder", classes, train, test, name, root, tuple(sorted(other)))
    if val.is_dir() and _top_images(val):
        return Layout("imagenet", classes, train, _imagenet_val(root, classes), "val", root, tuple(sorted(other)))
    raise DpcliError(f"Image folder {root} has no 'test' (or 'val') sub-folder next to 'train'.")


def _tiny_val(val: Path, classes: tuple[str, ...]) -> list[tuple[str, int]]:
    index = {c: i for i, c in enumerate(classes)}
    ann = val / "val_annotations.txt"
    labels: dict[str, int] = {}
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DpcliError(f"{ann}:{lineno}: expected 'file<TAB>class<TAB>...', got {line!r}")
        if parts[1] not in index:
            raise DpcliError(f"{ann}:{lineno}: class {parts[1]!r} has no folder in train/")
        labels[parts[0]] = index[parts[1]]
    images = val / "images"
    files = list_images(str(images)) if images.is_dir() else []
    items = []
    for p in files:
        rel = os.path.relpath(p, images)
        if rel not in labels:
            raise DpcliError(f"{p} is not listed in {ann}; add it or remove the file.")
        items.append((p, labels.pop(rel)))
    if labels:
        missing = next(iter(labels))
        raise DpcliError(f"{ann} lists {missing!r} but {images / missing} does not exist.")
    if not items:
        raise DpcliError(f"{images} contains no images.")
    return items


def _imagenet_val(root: Path, classes: tuple[str, ...]) -> list[tuple[str, int]]:
    wnids = _imagenet_val_wnids(root)
    val = root / "val"
    files = sorted(str(p) for p in val.iterdir() if p.is_file() and not p.name.startswith("."))
    if len(files) != len(wnids):
        raise DpcliError(f"{val} holds {len(files)} files but the devkit ground truth has {len(wnids)} labels.")
    index = {c: i for i, c in enumerate(classes)}
    for p, w in zip(files, wnids):
        if w not in index:
            raise DpcliError(f"{p} is labelled {w!r} by the devkit, which has no folder in train/.")
    return [(p, index[w]) for p, w in zip(files, wnids)]


def _imagenet_val_wnids(root: Path) -> list[str]:
    """The wnid of every val file (sorted by name), as torchvision.datasets.ImageNet derives it.

    torchvision's ``meta.bin`` is read with ``torch.load`` as torchvision's ``load_meta_file`` does, without
    importing torchvision.datasets: that import brings in torch._dynamo and sympy, 90 MB of memory in every
    process that only reads a cache."""
    if (root / META_FILE).is_file():
        import torch

        return list(torch.load(root / META_FILE, weights_only=True)[1])
    devkit = root / DEVKIT
    if (devkit / "data" / "meta.mat").is_file():
        return _wnids_from_devkit(str(devkit))
    archive = root / f"{DEVKIT}.tar.gz"
    if archive.is_file():
        import tarfile
        import tempfile

        # the two files are copied out by their base names: no path from the archive is ever written to,
        # which extractall's filter="data" would ensure only on Pythons that have it (3.11.2 has not)
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
            data = os.path.join(tmp, DEVKIT, "data")
            os.makedirs(data)
            for m in tar.getmembers():
                name = os.path.basename(m.name)
                if m.isfile() and name in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"):
                    src = tar.extractfile(m)
                    assert src is not None  # extractfile opens every regular member
                    with src, open(os.path.join(data, name), "wb") as dst:
                        dst.write(src.read())
            return _wnids_from_devkit(os.path.join(tmp, DEVKIT))
    raise DpcliError(
        f"{root / 'val'} is flat (ImageNet layout) but no labels were found: put torchvision's {META_FILE}, "
        f"the {DEVKIT}/ folder or {DEVKIT}.tar.gz in {root}."
    )


def _wnids_from_devkit(devkit: str) -> list[str]:
    """torchvision's parse_meta_mat + parse_val_groundtruth_txt (nested in parse_devkit_archive there)."""
    import scipy.io as sio

    try:
        meta = sio.loadmat(os.path.join(devkit, "data", "meta.mat"), squeeze_me=True)["synsets"]
        leaves = [row for row in meta if row[4] == 0]  # num_children == 0: the 1000 classes
        idx_to_wnid = {row[0]: row[1] for row in leaves}
        with open(os.path.join(devkit, "data", "ILSVRC2012_validation_ground_truth.txt")) as fh:
            return [idx_to_wnid[int(line)] for line in fh.readlines()]
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise DpcliError(f"{devkit}: unreadable ILSVRC2012 devkit ({type(exc).__name__}: {exc})") from None
