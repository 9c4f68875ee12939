"""Options for what `prune` writes beside the mask: index files, path lists, link folders, label names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dpcli.cli.options import P_BOUNDARY, P_OUTPUT

# ------------------------------------------------------------------ what a prune writes besides the mask
IndicesOut = Annotated[
    Optional[Path],
    typer.Option(
        "--indices-out",
        metavar="FILE",
        rich_help_panel=P_OUTPUT,
        help="Also write the KEPT indices (.txt or .npy), in the dataset's order.",
    ),
]


PathsOut = Annotated[
    Optional[Path],
    typer.Option(
        "--paths-out",
        metavar="FILE",
        rich_help_panel=P_OUTPUT,
        help="imagefolder: also write the KEPT files' paths, one per line.",
    ),
]


LinkDir = Annotated[
    Optional[Path],
    typer.Option(
        "--link-dir",
        metavar="DIR",
        rich_help_panel=P_OUTPUT,
        help="imagefolder: lay out the kept subset as a folder of links.",
    ),
]


LinkKind = Annotated[
    str,
    typer.Option(
        "--link-kind",
        metavar="KIND",
        rich_help_panel=P_BOUNDARY,
        help="--link-dir: symbolic links, or hard links (the dataset's file system; they outlive a moved source).",
    ),
]


LINK_KIND_DEFAULT = "symbolic"


Labels = Annotated[
    Optional[Path],
    typer.Option(
        "--labels",
        metavar="FILE",
        rich_help_panel=P_BOUNDARY,
        help="External S (an .npy or a non-dpcli .h5): one class per row (.npy, .npz, .h5 or .txt; integers or names), "
        "for --balance and auto's class quotas.",
    ),
]
