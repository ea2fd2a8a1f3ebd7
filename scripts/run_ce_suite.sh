#!/usr/bin/env bash
# Run canvas-engineering's own test suite against canvas-core (not part of CI).
#
# Downloads the canvas-engineering sdist (its tests ship in it), copies the tests to a temporary
# directory (scripts/ce_suite_prepare.py: `canvas_engineering` -> `canvas_core`, private helpers
# stubbed), and runs pytest on it with this checkout's interpreter; the summary ends with a tally.
# Nothing is written into the repository; the tally is the one recorded in docs/migrating.md
# ("canvas-engineering's test suite").
#
#   scripts/run_ce_suite.sh [VERSION] [extra pytest args...]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
version="${1:-0.5.0}"
shift || true
work="$(mktemp -d /tmp/ce_suite.XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$py" -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps "canvas-engineering==$version" -d "$work" >/dev/null
tar xzf "$work"/canvas_engineering-"$version".tar.gz -C "$work"
src="$work/canvas_engineering-$version/tests"
dst="$work/tests"
# renamed imports; private helpers stubbed so the rest of each file runs; a conftest.py that
# sorts the failures (private helper / file absent from the sdist / difference)
"$py" "$here/scripts/ce_suite_prepare.py" "$src" "$dst"
cd "$work"
# -p no:cacheprovider: leave nothing behind; the copy is removed on exit
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$py" -m pytest -q -p no:cacheprovider -rfE --tb=line --continue-on-collection-errors "$dst" "$@" || true
