#!/usr/bin/env bash
# Set up everything this project needs, idempotently. Sourced by the README's two commands.
#
# - Kaggle (or MDF_NO_VENV=1): installs into the current Python and keeps the preinstalled CUDA torch.
# - Elsewhere: a virtual environment in $MDF_VENV (default: .venv in the repository).
# - torch/torchvision: kept when a working pair imports; otherwise a known-good pair is installed. A lone
#   CPU-only torch wheel next to a registry torchvision fails at import ('torchvision::nms does not
#   exist'), so both are always installed together.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON:-python3}"

if [ -n "${KAGGLE_KERNEL_RUN_TYPE:-}" ] || [ "${MDF_NO_VENV:-0}" = "1" ]; then
  PY="$(command -v "$PYTHON_BIN")"
else
  VENV="${MDF_VENV:-$REPO_ROOT/.venv}"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating virtual environment $VENV"
    "$PYTHON_BIN" -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
fi
export MDF_PYTHON="$PY"

stamp_dir="$("$PY" -c 'import sys; print(sys.prefix)')"
stamp="$stamp_dir/.microdoppler_install_stamp"
want="$(cat "$REPO_ROOT/pyproject.toml" "$REPO_ROOT/scripts/install.sh" | sha256sum | cut -d' ' -f1)@$REPO_ROOT"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "import torchvision.ops, microdoppler_finetune" 2>/dev/null; then
  echo "[install] environment up to date ($PY)"
  return 0 2>/dev/null || exit 0
fi

pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }

if ! "$PY" -c "import torch, torchvision.ops" >/dev/null 2>&1; then
  case "$(uname -m)" in
    aarch64|arm64) pair=("torch==2.9.1" "torchvision==0.24.1") ;;
    *)             pair=("torch==2.14.1" "torchvision==0.29.1") ;;
  esac
  echo "[install] installing ${pair[*]} (no working torch/torchvision pair found)"
  pip_install -q "${pair[@]}"
fi

# Pin the torch pair now present so resolving the other dependencies never replaces it.
constraints="$(mktemp)"
"$PY" - > "$constraints" <<'PYEOF'
import torch, torchvision
# Without the local label (+cu130): '==2.14.1' still matches the installed build, and pip's own caps
# such as 'torch<=2.14.1' do not exclude it.
print(f"torch=={torch.__version__.split('+')[0]}")
print(f"torchvision=={torchvision.__version__.split('+')[0]}")
PYEOF
echo "[install] installing the project (editable) with test extras; keeping $(tr '\n' ' ' < "$constraints")"
pip_install -q -e "$REPO_ROOT[test]" --constraint "$constraints"
rm -f "$constraints"
"$PY" -c "import torch, torchvision.ops, lightning, diffusers, timm, lpips, microdoppler_finetune, models, vae_training"
echo "$want" > "$stamp"
echo "[install] done ($PY)"
