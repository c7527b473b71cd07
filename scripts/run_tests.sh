#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the whole test suite.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_ROOT/scripts/install.sh"
cd "$REPO_ROOT"
export HF_HUB_DISABLE_TELEMETRY=1
exec "$MDF_PYTHON" -m pytest -q -p no:cacheprovider --timeout 900 "$@"
