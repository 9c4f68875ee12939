"""What prune hands over besides mask.h5: the kept indices, the kept files by name, a folder of links to them.

All of them name the user's samples (:mod:`dpcli.data.samples`), and all are published together with the
mask (:class:`dpcli.artifacts.h5.Publication`): a failure anywhere leaves none of them.  Every check here runs
before the selection: a suffix, a path that cannot be written, an output that is also an input, a source
without file names, a folder that changed since S was computed.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dpcli.artifacts.h5 import Publication, atomic_path, check_writable, fsync_dir, write_bytes
from dpcli.data.samples import SampleSpace
from dpcli.errors import ArtifactWriteError, DpcliError

if TYPE_CHECKING:
    from dpcli.data.layouts import Layout

INDEX_SUFFIXES = (".txt", ".npy")
LINK_KINDS = ("symbolic", "hard")
LINK_MARKER = ".dpcli-link-dir"  # in a folder dpcli laid out, which a later run may therefore replace


@dataclass
class MaskOutputs:
    """The files a prune writes beside mask.h5 (None: not asked for)."""

    indices: Path | None = None
    paths: Path | None = None
    link_dir: Path | None = None
    link_kind: str = "symbolic"
    _layout: "Layout | None" = field(default=None, repr=False)

    def names(self) -> bool:
        """Whether file names are asked for (an image-folder source is needed)."""
        return self.paths is not None or self.link_dir is not None

    def check_options(self) -> "MaskOutputs":
        """The checks that need no input: suffixes, the link kind, writable paths."""
        if self.indices is not None and Path(self.indices).suffix.lower() not in INDEX_SUFFIXES:
            raise DpcliError(f"--indices-out must end in .txt or .npy, got {Path(self.indices).name}")
        if self.link_kind not in LINK_KINDS:
            raise DpcliError(f"--link-kind must be one of {', '.join(LINK_KINDS)}, got {self.link_kind!r}")
        for option, path in (("--indices-out", self.indices), ("--paths-out", self.paths)):
            if path is not None:
                _writable(path, option)
        if self.link_dir is not None:
            _check_link_dir(Path(self.link_dir))
        return self

    def check_source(self, space: SampleSpace, what: str) -> None:
        """File names need samples that are files; ``what`` names the source for the message."""
        if not self.names():
            return
        option = "--paths-out" if self.paths is not None else "--link-dir"
        if not space.has_files:
            raise DpcliError(
                f"{option} names image files, but the samples of {what} are rows without file names "
                "(only imagefolder: datasets have them); use --indices-out"
            )
        self._layout = _rescan(space)
        if self.link_dir is not None:
            _check_link_place(Path(self.link_dir), self._layout)
            if self.link_kind == "hard":
                _probe_hard_link(self._layout.train[0][0], Path(self.link_dir))
        if self.paths is not None:
            odd = next((p for p, _ in self._layout.train if "\n" in p or "\r" in p), None)
            if odd is not None:
                raise DpcliError(
                    f"--paths-out writes one path per line, but {odd!r} has a line break in its name; "
                    "use --indices-out or --link-dir"
                )

    def stage(self, pub: Publication, keep: np.ndarray, space: SampleSpace, mask: Path) -> None:
        """Write every output to its temporary in ``pub`` (``keep``: over the user's samples)."""
        kept = np.flatnonzero(keep)
        if self.indices is not None:
            write_indices(self.indices, kept, pub)
        if not self.names():
            return
        layout = self._layout if self._layout is not None else _rescan(space)
        if self.paths is not None:
            text = b"".join(os.fsencode(layout.relative(layout.train[i][0])) + b"\n" for i in kept.tolist())
            write_bytes(Path(self.paths), text, pub)
        if self.link_dir is not None:
            with pub.staged_dir(Path(self.link_dir)) as tmp:
                lay_out_links(tmp, layout, kept, self.link_kind, mask)

    def summary(self) -> dict:
        out: dict = {}
        for key, path in (("indices_out", self.indices), ("paths_out", self.paths), ("link_dir", self.link_dir)):
            if path is not None:
                out[key] = str(path)
        if self.link_dir is not None:
            out["link_kind"] = self.link_kind
        return out


def write_indices(path: Path, indices: np.ndarray, publication: Publication | None = None) -> None:
    """The KEPT indices as .txt (one per line) or .npy, written atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in INDEX_SUFFIXES:
        raise DpcliError(f"--indices-out must end in .txt or .npy, got {path.name}")
    if suffix == ".txt":
        write_bytes(path, "".join(f"{int(i)}\n" for i in indices).encode(), publication)
        return
    with atomic_path(path, publication=publication) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(indices, dtype=np.int64))


# --------------------------------------------------------------------------- checks
def _writable(path: Path, option: str) -> None:
    try:
        check_writable(Path(path))
    except ArtifactWriteError as exc:
        raise ArtifactWriteError(f"{option} {exc}") from None


def same_place(a: Path, b: Path) -> bool:
    """Whether two paths name one file (resolved, and by inode where both exist)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies in it (resolved)."""
    p, f = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return p == f or f in p.parents


def check_distinct(outputs: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """Refuse, before any work, an output that is an input (``prune S.h5 --out S.h5`` would replace S by the
    mask) or that another output also names (one would overwrite the other)."""
    given = [(k, Path(v)) for k, v in outputs.items() if v is not None]
    sources = [(k, Path(v)) for k, v in inputs.items() if v is not None]
    for option, path in given:
        for what, src in sources:
            if same_place(path, src):
                raise DpcliError(f"{option} {path} is {what}; writing it would destroy the input: give another path")
    for i, (option, path) in enumerate(given):
        for other, path2 in given[i + 1 :]:
            if same_place(path, path2):
                raise DpcliError(f"{option} and {other} both name {path}; give each output its own path")


def _rescan(space: SampleSpace) -> "Layout":
    """The listing of ``space``'s folder now, refused unless it is the one S was computed on."""
    from dpcli.data import layouts

    root = Path(space.source.split(":", 1)[1])
    layout = layouts.scan(root)
    if layout.listing() != space.listing or len(layout.train) != space.total:
        raise DpcliError(
            f"the train files under {root} changed since S was computed (files added, removed, renamed "
            f"or relabelled; {len(layout.train)} listed now, {space.total} then), so the kept indices "
            "no longer name the same files; recompute S on the folder as it is"
        )
    return layout


def _check_link_dir(path: Path) -> None:
    """A link folder may be new, empty, or one dpcli laid out before (it is replaced); nothing else."""
    _writable(path / LINK_MARKER, "--link-dir")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise DpcliError(f"--link-dir {path} exists and is not a folder; give a new folder")
    if path.is_dir() and any(path.iterdir()) and not (path / LINK_MARKER).is_file():
        raise DpcliError(
            f"--link-dir {path} is a folder that dpcli did not lay out and is not empty; give a new or "
            "empty folder (dpcli replaces only its own link folders)"
        )


def _check_link_place(path: Path, layout: "Layout") -> None:
    for folder in (layout.root / "train", layout.root / layout.test_name):
        if inside(path, folder) or inside(folder, path):
            raise DpcliError(f"--link-dir {path} overlaps the dataset's {folder}; give a folder outside it")


def _probe_hard_link(source: str, link_dir: Path) -> None:
    """Hard links need one file system: find out now, not after the selection."""
    from dpcli.artifacts.h5 import temp_path

    parent = link_dir if link_dir.is_dir() else next(p for p in link_dir.parents if p.is_dir())
    probe = temp_path(parent / "probe")
    try:
        os.link(source, probe)
    except OSError as exc:
        why = "another file system than the dataset" if exc.errno == errno.EXDEV else (exc.strerror or str(exc))
        raise DpcliError(
            f"--link-kind hard: cannot hard-link {source} into {parent} ({why}); use --link-kind "
            "symbolic or a folder on the dataset's file system"
        ) from None
    os.unlink(probe)


# --------------------------------------------------------------------------- the link folder
def lay_out_links(folder: Path, layout: "Layout", kept: np.ndarray, kind: str, mask: Path) -> None:
    """``folder`` becomes a dataset ImageFolder and dpcli read directly: ``train/`` holds links to the kept files
    (relative paths preserved; every class folder made, even one left empty, so class indices do not shift), and
    the test split is linked whole, with the files that label it."""
    root = layout.root
    for c in layout.classes:
        (folder / "train" / c).mkdir(parents=True, exist_ok=True)
    sources = [layout.train[i][0] for i in kept.tolist()]
    sources += [p for p, _ in layout.test] + _label_files(layout)
    link = os.link if kind == "hard" else os.symlink
    made: set[Path] = set()
    for src in sources:
        dst = folder / os.path.relpath(src, root)
        if dst.parent not in made:
            dst.parent.mkdir(parents=True, exist_ok=True)
            made.add(dst.parent)
        link(os.path.abspath(src), dst)
    (folder / LINK_MARKER).write_text(
        json.dumps({"mask": str(Path(mask).resolve()), "source": str(root), "kind": kind, "kept": int(len(kept))})
        + "\n"
    )
    _fsync_tree(folder, made | {folder / "train" / c for c in layout.classes})


def _fsync_tree(folder: Path, dirs: set[Path]) -> None:
    """Make the links durable before the folder is renamed into place: every subfolder, deepest first (the
    rename's own fsync covers only the parent of ``folder``)."""
    every = {folder}
    for d in dirs:
        every.update(p for p in (d, *d.parents) if folder in p.parents)
    for d in sorted(every, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(d)


def _label_files(layout: "Layout") -> list[str]:
    """Files besides the images that the test split needs to be read as labelled (TinyImageNet, ImageNet)."""
    from dpcli.data import layouts

    root = layout.root
    if layout.kind == "tinyimagenet":
        return [str(root / "val" / "val_annotations.txt")]
    if layout.kind != "imagenet":
        return []
    found = [str(p) for p in (root / layouts.META_FILE, root / f"{layouts.DEVKIT}.tar.gz") if p.is_file()]
    devkit = root / layouts.DEVKIT
    if devkit.is_dir():
        found += [os.path.join(top, name) for top, _, names in os.walk(devkit) for name in names]
    return found
