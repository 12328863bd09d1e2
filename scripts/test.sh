#!/usr/bin/env bash
# Run the test suite (offline: no hub is ever called). Any non-zero pytest exit fails, including
# exit 5 ("no tests collected"), so an empty run never passes silently.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${TUNELAB_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider "$@"
