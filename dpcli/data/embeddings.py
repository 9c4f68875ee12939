"""Embeddings as input: features and labels from files or arrays, checked once, with their lineage.

``influence --features`` reads them here (``.npy`` memory-mapped, ``.npz``, ``.h5``); a run's influence
artifact records the files' paths and hashes, so ``retrain`` and ``verify-bound`` reload the very same
rows (:func:`reload_embeddings`).  An S computed by another tool is read here too (:func:`load_external_S`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpcli.artifacts.h5 import check_npy, check_stored
from dpcli.errors import DpcliError
from dpcli.select.linalg import float32_rows, nonfinite_rows

SOURCE = "embeddings"  # the influence artifact's ``source`` for S fitted on features


def file_sha256(path: Path) -> str:
    """Lineage of an input file: the hash of its bytes (streamed, any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def load_array(path: Path | str, what: str, keys: tuple[str, ...]) -> np.ndarray:
    """An array from ``.npy`` (memory-mapped), ``.npz`` or ``.h5`` (dataset named by ``keys`` or the only one)."""
    path = Path(path)
    if not path.is_file():
        raise DpcliError(f"{path}: no such file ({what})")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            check_npy(path, what, numeric="labels" not in what)
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return np.asarray(z[_pick(list(z.files), keys, path, what)])
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                names = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
                return np.asarray(f[_pick(names, keys, path, what)][()])
    except (ValueError, OSError) as exc:
        if "Python objects" in str(exc) or "allow_pickle" in str(exc):
            raise DpcliError(
                f"{path}: {what} are stored as Python objects, which dpcli does not unpickle; save "
                f"them as numbers or strings, e.g. np.save(path, np.asarray(labels, dtype=str))"
            ) from None
        raise DpcliError(f"{path}: cannot read {what} ({exc})") from None
    raise DpcliError(f"{path}: {what} must be a .npy, .npz or .h5 file")


def _pick(names: list[str], keys: tuple[str, ...], path: Path, what: str) -> str:
    for key in keys:
        if key in names:
            return key
    if len(names) == 1:
        return names[0]
    raise DpcliError(f"{path}: holds {names or 'no arrays'}; name the {what} array one of {', '.join(keys)}")


def check_features(x: np.ndarray, path: str) -> np.ndarray:
    """2-D, real, finite: returned as float32 (checked by row chunks, no n x D boolean array)."""
    if x.ndim != 2:
        raise DpcliError(f"{path}: features must be 2-D (n samples x D dimensions), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DpcliError(f"{path}: features must be real numbers, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DpcliError(f"{path}: features are empty (shape {x.shape})")
    out, bad = float32_rows(x)
    if bad:
        raise DpcliError(f"{path}: {bad} feature rows contain NaN or inf")
    return out


def check_labels(y: np.ndarray, n: int, num_classes: int | None, path: str) -> np.ndarray:
    """One integer class per sample in 0..C-1 (integral floats are accepted; names via :func:`encode_labels`)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DpcliError(f"{path}: labels must be 1-D (one class index per sample), got shape {y.shape}")
    if len(y) != n:
        raise DpcliError(f"{path}: {len(y)} labels for {n} feature rows; they must have the same length")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DpcliError(f"{path}: labels must be integer class indices or class names, got dtype {y.dtype}")
    y = y.astype(np.int64)
    hi = int(y.max()) + 1 if num_classes is None else num_classes
    if y.min() < 0 or y.max() >= hi:
        raise DpcliError(f"{path}: labels must lie in 0..{hi - 1}, found range [{int(y.min())}, {int(y.max())}]")
    return y


def encode_labels(
    y: np.ndarray, classes: tuple[str, ...] | None, path: str
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Class names (a string array) as indices into ``classes``, by default their sorted distinct values, as
    a text or audio pipeline usually stores them; integer labels are returned as they are."""
    y = np.asarray(y)
    if y.dtype.kind == "O" and y.size and all(isinstance(v, (str, bytes)) for v in y.ravel()):
        y = np.array([v.decode() if isinstance(v, bytes) else v for v in y.ravel()]).reshape(y.shape)  # h5py strings
    if y.dtype.kind not in "US":
        return y, classes
    names = y.astype(str)
    if classes is None:
        classes = tuple(np.unique(names).tolist())
    known = np.asarray(classes)
    idx = np.clip(np.searchsorted(known, names), 0, len(known) - 1)
    unknown = names != known[idx]
    if np.any(unknown):
        raise DpcliError(f"{path}: class {str(names[unknown][0])!r} does not occur in the training labels")
    return idx.astype(np.int64), classes


@dataclass
class Embeddings:
    """Training (and optional test) features with labels, and where they came from."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None  # the class names, where the labels were given as names

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def fingerprint(self) -> str:
        from dpcli.artifacts.h5 import array_fingerprint

        return array_fingerprint(self.x, self.y)


def from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    num_classes: int | None = None,
    lineage: dict[str, Any] | None = None,
) -> Embeddings:
    """Validate in-memory features and labels (the API's entry point)."""
    feats = check_features(np.asarray(x) if not isinstance(x, np.memmap) else x, "features")
    y, classes = encode_labels(y, None, "labels")
    labels = check_labels(y, feats.shape[0], num_classes, "labels")
    c = num_classes or (len(classes) if classes else int(labels.max()) + 1)
    _check_classes(labels, c, declared=num_classes is not None)
    if (x_test is None) != (y_test is None):
        raise DpcliError("give both test features and test labels, or neither")
    if x_test is not None and y_test is not None:  # both or neither, checked above
        x_test = check_features(np.asarray(x_test), "test features")
        if x_test.shape[1] != feats.shape[1]:
            raise DpcliError(f"test features have {x_test.shape[1]} dimensions, training features {feats.shape[1]}")
        y_test = check_labels(encode_labels(y_test, classes, "test labels")[0], x_test.shape[0], c, "test labels")
    return Embeddings(feats, labels, c, x_test, y_test, dict(lineage or {}), classes)


def _check_classes(labels: np.ndarray, num_classes: int, *, declared: bool) -> None:
    """Every index 0..C-1 is a class of the fitted last layer, with its own S columns: indices without a sample
    (one stray label 99 among 0..9 makes a 100-class S) are an error unless ``num_classes`` was declared; one
    class is always one (a one-class softmax has zero loss, so S is zero)."""
    used = np.unique(labels)
    if len(used) < 2:
        raise DpcliError(f"labels: every sample has class {int(used[0])}; pruning needs at least two classes")
    if len(used) < num_classes:
        gap = int(np.setdiff1d(np.arange(num_classes), used)[0])
        text = (
            f"the labels use {len(used)} of the {num_classes} class indices 0..{num_classes - 1} (none is {gap}"
            f"; the largest is {int(used[-1])}); every index is a class of the last layer (S gets {num_classes} x "
            "(D + 1) columns and the unused ones get no sample)"
        )
        if not declared:
            raise DpcliError(
                f"labels: {text}; give indices 0..C-1 or class names (strings), or declare the classes "
                "(num_classes=C in the API)"
            )
        import warnings

        warnings.warn(f"dpcli: {text}", stacklevel=3)


def load_embeddings(
    features: Path,
    labels: Path,
    test_features: Path | None = None,
    test_labels: Path | None = None,
    num_classes: int | None = None,
) -> Embeddings:
    """Read and validate the files of ``influence --features``; lineage is their paths and hashes."""
    lineage: dict[str, Any] = {}
    arrays: dict[str, np.ndarray | None] = {}
    for key, path, keys in (
        ("features", features, ("features", "x", "X", "embeddings")),
        ("labels", labels, ("labels", "y")),
        ("test_features", test_features, ("features", "x", "X", "embeddings")),
        ("test_labels", test_labels, ("labels", "y")),
    ):
        if path is None:
            arrays[key] = None
            continue
        arrays[key] = load_array(path, key.replace("_", " "), keys)
        lineage[key] = str(Path(path).resolve())
        lineage[f"{key}_sha256"] = file_sha256(Path(path))
    x, y = arrays["features"], arrays["labels"]
    assert x is not None and y is not None  # their paths are required
    if x.ndim != 2:
        raise DpcliError(f"{features}: features must be 2-D (n samples x D dimensions), got shape {x.shape}")
    if np.asarray(y).shape[0] != x.shape[0]:
        raise DpcliError(
            f"{labels}: {np.asarray(y).shape[0]} labels for {x.shape[0]} feature rows "
            f"in {features}; they must have the same length"
        )
    return from_arrays(x, y, arrays["test_features"], arrays["test_labels"], num_classes, lineage)


def is_embeddings_run(influence: Path | str) -> bool:
    """Whether ``influence`` is an influence.h5 written from features (False for anything else)."""
    import h5py

    from dpcli.artifacts.h5 import get_attr

    path = Path(influence)
    if not path.is_file() or not h5py.is_hdf5(str(path)):
        return False
    with h5py.File(path, "r") as f:
        return get_attr(f, "dpcli_kind") == "influence" and get_attr(f, "source") == SOURCE


def reload_embeddings(influence: Path | str) -> tuple[Embeddings, float]:
    """The features an embeddings run was computed from, checked against the recorded hashes."""
    from dpcli.artifacts.h5 import get_attr, open_artifact

    with open_artifact(influence, "influence") as f:
        lineage = get_attr(f, "lineage") or {}
        damping = float(get_attr(f, "damping"))
        c = int(get_attr(f, "num_classes"))
    for key in ("features", "labels", "test_features", "test_labels"):
        if key in lineage:
            path = Path(lineage[key])
            if not path.is_file():
                raise DpcliError(f"{influence}: its {key.replace('_', ' ')} file {path} is gone; refit needs it")
            if file_sha256(path) != lineage[f"{key}_sha256"]:
                raise DpcliError(f"{path}: changed since {influence} was computed (hash differs); rerun influence")
    if "features" not in lineage:
        raise DpcliError(f"{influence}: computed from in-memory features; refit them with dpcli.api")
    emb = load_embeddings(
        Path(lineage["features"]),
        Path(lineage["labels"]),
        Path(lineage["test_features"]) if "test_features" in lineage else None,
        Path(lineage["test_labels"]) if "test_labels" in lineage else None,
        num_classes=c,
    )
    return emb, damping


def load_external_S(path: Path | str) -> tuple[np.ndarray, np.ndarray | None]:
    """S (n x d float32) from a ``.npy`` or an HDF5 file with a dataset ``S`` (read in row chunks),
    plus ``labels`` when the HDF5 file has them; finiteness is checked chunk by chunk."""
    path = Path(path)
    if not path.is_file():
        raise DpcliError(f"{path}: no such file")
    suffix = path.suffix.lower()
    labels = None
    if suffix == ".npy":
        check_npy(path, "S", numeric=True)
        try:
            src = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise DpcliError(f"{path}: cannot read S ({exc})") from None
        S = _mapped_rows(src, path) if src.dtype == np.float32 and src.flags.c_contiguous else _copy_rows(src, path)
    elif suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "S" not in f or not isinstance(f.get("S"), h5py.Dataset):
                    raise DpcliError(f"{path}: has no dataset 'S' (an n x d influence matrix)")
                check_stored(f["S"], path, "S")
                S = _copy_rows(f["S"], path)
                if "labels" in f:
                    labels = np.asarray(f["labels"][()])
        except OSError as exc:
            raise DpcliError(f"{path}: cannot read HDF5 ({exc})") from None
    else:
        raise DpcliError(f"{path}: an external S must be .npy or .h5 with a dataset 'S'")
    return S, labels


def _mapped_rows(src: np.ndarray, path: Path) -> np.ndarray:
    """A float32 .npy stays a read-only memory map (page cache, not heap): checked chunk by chunk."""
    if src.ndim != 2 or src.shape[0] == 0:
        raise DpcliError(f"{path}: S must be 2-D (n samples x d parameters), got shape {tuple(src.shape)}")
    bad = nonfinite_rows(src)
    if bad:
        raise DpcliError(f"{path}: S has {bad} rows with NaN or inf")
    return src


def _copy_rows(src, path: Path) -> np.ndarray:
    if len(src.shape) != 2 or src.shape[0] == 0:
        raise DpcliError(f"{path}: S must be 2-D (n samples x d parameters), got shape {tuple(src.shape)}")
    S, bad = float32_rows(src)
    if bad:
        raise DpcliError(f"{path}: S has {bad} rows with NaN or inf")
    return S
