"""What naming the user's samples costs: listing an image folder in ImageFolder's order, and laying out a
link folder of the kept files, each beside its peer measured in the same run.

    nice python3 benchmarks/listing_speed.py --files 50000 --classes 100 --repeats 5 --out benchmarks/results/listing

* listing: ``dpcli.data.layouts.list_images`` over every class folder (what ``imagefolder:`` scans) against
  torchvision's own ``make_dataset`` on the same folder (the order it reproduces); both list by name only.
* links: ``dpcli.stages.outputs.lay_out_links`` for half the files kept (symbolic links, class folders, the
  marker) against the floor: one ``os.symlink`` per kept file into folders made beforehand.

The folder holds empty files with image names (listing never opens them), half of each class in a
sub-folder, so the os.walk order matters.  Medians over ``--repeats`` runs; the file system's caches are warm
after the first run on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_folder(root: Path, files: int, classes: int) -> None:
    per = files // classes
    for c in range(classes):
        top = root / "train" / f"c{c:04d}"
        (top / "sub").mkdir(parents=True)
        for k in range(per):
            (top / ("sub" if k % 2 else "") / f"img{k:06d}.jpg").touch()
    (root / "test" / "c0000").mkdir(parents=True)
    (root / "test" / "c0000" / "t.jpg").touch()


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=50000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="folder for the JSON result")
    args = ap.parse_args()

    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from dpcli.data import layouts
    from dpcli.stages.outputs import lay_out_links

    with tempfile.TemporaryDirectory(prefix="boundary-listing-") as tmp:
        root = Path(tmp) / "data"
        make_folder(root, args.files, args.classes)
        train = root / "train"
        classes = sorted(os.listdir(train))
        index = {c: i for i, c in enumerate(classes)}

        def dpcli_listing() -> list:
            return [p for c in classes for p in layouts.list_images(str(train / c))]

        def torchvision_listing() -> list:
            return make_dataset(str(train), index, extensions=IMG_EXTENSIONS)

        assert dpcli_listing() == [p for p, _ in torchvision_listing()]
        ours = median_seconds(dpcli_listing, args.repeats)
        theirs = median_seconds(torchvision_listing, args.repeats)

        layout = layouts.scan(root.resolve())
        kept = np.arange(0, len(layout.train), 2)
        sources = [layout.train[i][0] for i in kept]

        def links() -> None:
            out = Path(tmp) / "links"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            lay_out_links(out, layout, kept, "symbolic", Path(tmp) / "mask.h5")

        def floor() -> None:
            out = Path(tmp) / "floor"
            shutil.rmtree(out, ignore_errors=True)
            for src in sources:  # folders first, then one symlink per file: nothing else
                os.makedirs(out / os.path.dirname(os.path.relpath(src, root)), exist_ok=True)
            for src in sources:
                os.symlink(src, out / os.path.relpath(src, root))

        ours_links = median_seconds(links, args.repeats)
        floor_links = median_seconds(floor, args.repeats)

    result = {
        "files": len(layout.train),
        "classes": args.classes,
        "repeats": args.repeats,
        "kept": int(len(kept)),
        "listing_dpcli_s": ours,
        "listing_torchvision_s": theirs,
        "listing_ratio": ours / theirs,
        "links_dpcli_s": ours_links,
        "links_floor_s": floor_links,
        "links_ratio": ours_links / floor_links,
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"listing-{len(layout.train)}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
