"""Installs the fault hooks at the start of every Python process whose PYTHONPATH holds this folder (set by
faults.child_env(all_processes=True)): the ranks torchrun and Lightning start too, not only the first process."""
import os

if any(key.startswith("MDF_FAULT_") for key in os.environ):
    from faults import hook

    hook.install()
