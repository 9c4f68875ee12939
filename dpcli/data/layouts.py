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

Classes are the sorted train sub-folders.  Order: train files class by class, each class's files
(found recursively) in sorted path order; test files likewise (flat layouts: sorted paths).  Index
files (masks, S) refer to this order.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from dpcli.errors import DpcliError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# image formats torchvision's ImageFolder (and so dpcli) does not read: left out, but named in a warning,
# since a user who put them there meant them as data (metadata such as .txt or .xml is left out silently)
OTHER_IMAGE_EXTENSIONS = (".gif", ".jfif", ".jpe", ".apng", ".avif", ".heic", ".heif", ".ico", ".jp2", ".j2k",
                          ".tga", ".dib", ".pbm", ".pnm", ".qoi", ".dng", ".cr2", ".nef")
DEVKIT = "ILSVRC2012_devkit_t12"
META_FILE = "meta.bin"  # torchvision.datasets.imagenet.META_FILE


@dataclass(frozen=True)
class Layout:
    kind: str
    classes: tuple[str, ...]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    test_name: str
    passed_over: tuple[str, ...] = ()  # files in another image format (OTHER_IMAGE_EXTENSIONS), left out


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def list_images(folder: str, passed_over: list[str] | None = None) -> list[str]:
    """Image files under ``folder`` (recursive, hidden entries ignored), sorted by path; files in an image
    format dpcli does not read are appended to ``passed_over``.

    A folder reached twice (a symlink loop) and a dangling or looping link with an image
    extension each end in one line naming the path.
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:
                raise DpcliError(f"Symlink loop: {d} leads to a folder already read; remove or fix the link.")
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(d))
        except OSError as exc:
            raise DpcliError(f"Cannot read folder {d} ({exc.strerror or exc}).") from None
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    stack.append(e.path)
                elif e.is_file():
                    if _is_image(e.name):
                        found.append(e.path)
                    elif passed_over is not None and e.name.lower().endswith(OTHER_IMAGE_EXTENSIONS):
                        passed_over.append(e.path)
                elif e.is_symlink():
                    os.stat(e.path)  # raises for a dangling or looping link
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise DpcliError(f"Symlink loop: {e.path} points to itself; remove or fix the link.") from None
                if _is_image(e.name):
                    raise DpcliError(f"Cannot read {e.path} ({exc.strerror or exc}); remove or fix it.") from None
    found.sort()
    return found


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _top_images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if not p.name.startswith(".") and p.is_file() and _is_image(p.name))


def _class_split(split_dir: Path, classes: tuple[str, ...], name: str,
                 passed_over: list[str] | None = None) -> list[tuple[str, int]]:
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
            raise DpcliError(f"Train class folder {sub} contains no images ({', '.join(IMG_EXTENSIONS)}).")
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
        return Layout("tinyimagenet", classes, train, _tiny_val(val, classes), "val", tuple(sorted(other)))
    for name in ("test", "val"):
        d = root / name
        if d.is_dir() and _subdirs(d):
            test = _class_split(d, classes, name, other)
            return Layout("imagefolder", classes, train, test, name, tuple(sorted(other)))
    if val.is_dir() and _top_images(val):
        return Layout("imagenet", classes, train, _imagenet_val(root, classes), "val", tuple(sorted(other)))
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
                    with tar.extractfile(m) as src, open(os.path.join(data, name), "wb") as dst:
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
