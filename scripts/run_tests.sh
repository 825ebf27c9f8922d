#!/usr/bin/env bash
# Runs the test suite; pytest's exit code 5 ("no tests collected") is an error here too,
# because a suite that ran nothing has proven nothing.
set -u
PYTHON="${1:-python}"
shift || true
"$PYTHON" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
