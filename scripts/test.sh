#!/usr/bin/env bash
# Install the project with its test extra (first run only), lint and type-check, and run the test suite offline.
# Extra arguments go to pytest. Slow BANKING77 tests are opt-in: scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
# Lint and type checks first (configured in pyproject.toml); both run, and either failing fails the script.
checks=0
.venv/bin/ruff check classifier service tests scripts || checks=1
.venv/bin/mypy classifier service || checks=1
if [ "$checks" -ne 0 ]; then echo "ruff or mypy found problems: failing before the tests" >&2; exit 1; fi
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi
exit "$status"
