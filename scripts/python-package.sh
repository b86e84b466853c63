#!/usr/bin/env bash
# Builds the `rfa` Python package (crates/rfa-py, PyO3 + maturin) into a virtual environment and
# runs its tests:
#
#   scripts/python-package.sh [VENV]
#
# VENV defaults to the real-client environment (scripts/hf-clients-venv.sh: torch, transformers,
# peft), so that the test that loads an rfa adapter in peft runs too. `maturin develop` builds the
# dev profile, whose dependencies are optimised (they are shared with `cargo xtask test` when
# CARGO_TARGET_DIR is the same); a user's `pip install ./crates/rfa-py` builds a release wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$(bash scripts/hf-clients-venv.sh)}
"$venv/bin/pip" install --quiet --disable-pip-version-check "maturin==1.16.0" >&2
(cd crates/rfa-py && VIRTUAL_ENV=$venv PATH="$venv/bin:$PATH" maturin develop --quiet)
"$venv/bin/python" -m pytest -q -p no:cacheprovider crates/rfa-py/tests
