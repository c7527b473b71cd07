"""Progress bars for every long loop (tqdm), readable in a terminal, a notebook and a log file alike."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Optional

PROGRESS_ENV = "MDF_PROGRESS"  # "0": no bars (e.g. in tests)


def progress(iterable: Optional[Iterable] = None, *, desc: str, total: Optional[int] = None, unit: str = "it",
             leave: bool = True, initial: int = 0):
    """A tqdm bar: live in a terminal or notebook; in a log file (no terminal) one line every 30 seconds in plain
    ASCII, so a 12-hour run writes a few hundred short lines rather than megabytes of redraws."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, initial=initial, dynamic_ncols=True,
                mininterval=0.5 if interactive else 30.0, ascii=None if interactive else True,
                disable=os.environ.get(PROGRESS_ENV) == "0")
