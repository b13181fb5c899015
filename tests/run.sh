#!/usr/bin/env bash
# Set up the repository's virtual environment (if needed) and run the test suite.
#   bash tests/run.sh                 # everything, slow integration tests included
#   bash tests/run.sh -m 'not slow'   # the fast suite only
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
# CPU linear layers through oneDNN (models/linear.py; opt-in, off by default): about 1.5x faster ViT steps here.
export TIMEMAE_CPU_LINEAR=${TIMEMAE_CPU_LINEAR:-onednn}
exec .venv/bin/python -m pytest -q "$@"
