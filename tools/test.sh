#!/usr/bin/env bash
# The test suite: fast unit tests and slow integration tests (pytest -m "not slow" for the fast ones).
# Exits non-zero on any failure and when no test was collected (pytest exit code 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --durations=15 "$@"
