#!/usr/bin/env bash
# On the lent GPU machine (no network): install the wheels carried in .gpu_carry/ and this
# checkout, then run bench/gpu_check.py; its md + json and the log land in $OUT (the device
# tool brings them back) and in bench/results/gpu/. Extra arguments go to gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
carry=.gpu_carry
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "$carry"/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site
# editable, as here: the strategies' entry points and search spaces resolve from the checkout
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
export AUTOML_HIAP_DATA=$PWD/$carry/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv || true
python3 bench/gpu_check.py --out bench/results/gpu "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
