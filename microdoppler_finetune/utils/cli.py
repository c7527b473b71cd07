"""How the command lines end on an error: one clear ``ERROR:`` line (exit status 2) for what a user can fix.

A user's mistake (a missing or wrong file, a damaged checkpoint, a typo in a config key, a full disk) raises an
exception whose message names the file and the fix; printing a traceback over it only hides that line. Other
exceptions (a bug) keep their traceback. ``MDF_TRACEBACK=1`` shows the traceback in every case.

    if __name__ == "__main__":
        sys.exit(run_main(main))
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

# Exceptions raised in these folders carry messages written for users.
_OWN_CODE = tuple(str(Path(__file__).resolve().parents[2] / name) for name in ("microdoppler_finetune", "vae_training",
                                                                                 "models"))
_OWN_PACKAGES = ("microdoppler_finetune", "vae_training", "models")
EXIT_USER_ERROR = 2
DISK_HINT = ("Free some space (or pass a --work_dir on a larger disk) and rerun the same command: files are written "
             "whole or not at all, so the last complete checkpoint is still there.")
READ_ONLY_HINT = ("The output folder cannot be written: pass a --work_dir you can write to (on Kaggle, under "
                  "/kaggle/working) and rerun.")


def _raised_by_own_code(exc: BaseException) -> bool:
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    return filename.startswith(_OWN_CODE) and "site-packages" not in filename


def is_user_error(exc: BaseException) -> bool:
    """Can the user fix this from its message alone?"""
    if isinstance(exc, (OSError, subprocess.CalledProcessError)):
        return True
    if type(exc).__module__.split(".")[0] in _OWN_PACKAGES + ("omegaconf",):
        return True
    if isinstance(exc, (ValueError, LookupError, FloatingPointError, RuntimeError)):
        return _raised_by_own_code(exc)
    return False


def user_error_message(exc: BaseException) -> str:
    """The message of ``exc`` as the ERROR line shows it (with the fix for disk and permission errors)."""
    if isinstance(exc, subprocess.CalledProcessError):
        command = " ".join(str(c) for c in exc.cmd) if isinstance(exc.cmd, (list, tuple)) else str(exc.cmd)
        return f"{command} ended with exit status {exc.returncode}; its own error is printed above."
    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" while writing {exc.filename}" if exc.filename else ""
            return f"The disk is full{where} ({exc.strerror or message}). {DISK_HINT}"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and not isinstance(exc, FileNotFoundError):
            return f"{message}. {READ_ONLY_HINT}"
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        message = exc.args[0]  # str(KeyError) quotes its message
    return message


def run_main(main: Callable[..., object], argv: Optional[list] = None) -> int:
    """Call ``main(argv)`` (or ``main()``); a user error becomes one ERROR line and exit status 2."""
    try:
        result = main(argv) if argv is not None else main()
    except SystemExit as stop:
        if isinstance(stop.code, str):  # SystemExit("message"): the same one ERROR line and status as the rest
            print(f"\nERROR: {stop.code}", file=sys.stderr, flush=True)
            return EXIT_USER_ERROR
        raise
    except KeyboardInterrupt:
        print("\nInterrupted. Rerun the same command to continue where it stopped.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into user errors (one line) and bugs (traceback) below
        if os.environ.get("MDF_TRACEBACK", "") not in ("", "0") or not is_user_error(exc):
            raise
        print(f"\nERROR: {user_error_message(exc)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return result if isinstance(result, int) else 0
