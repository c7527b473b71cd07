"""The command line that redoes a result (every table row records one)."""
from __future__ import annotations

import shlex
import sys
from typing import Optional, Sequence


def reproducing_command(module: Optional[str] = None, argv: Optional[Sequence[str]] = None) -> str:
    """A shell-quoted command line: ``python -m <module> <argv>`` when the module is known, else this process's
    own command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if module:
        program = f"python -m {module}"
    else:
        program = sys.argv[0] if sys.argv and sys.argv[0] else "python"
        program = f"python {program}" if program.endswith(".py") else program
    return " ".join([program] + [shlex.quote(str(a)) for a in args])
