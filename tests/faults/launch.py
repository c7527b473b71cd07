"""``python -m faults.launch MODULE ARGS...``: install the fault hooks, then run MODULE as ``python -m`` would."""
import runpy
import sys

from faults import hook

if __name__ == "__main__":
    hook.install()
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
