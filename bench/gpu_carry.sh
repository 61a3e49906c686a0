#!/usr/bin/env bash
# Prepare .gpu_carry/ (git-excluded) for a device run of bench/gpu_check.py: the wheels the GPU
# machine lacks, for its Python 3.12 on x86-64, and the CIFAR-10 JPEGs + dense reference from
# ../shared/data. Run here, in the checkout, with this project's environment active (the wheel
# versions are the ones installed here, i.e. what CI tests). WITH_TRACKING=1 adds optuna and
# mlflow with their dependencies minus what the GPU image has (gpu_check needs neither).
set -euo pipefail
cd "$(dirname "$0")/.."
carry=.gpu_carry
data=${AUTOML_HIAP_DATA:-../shared/data}
python=${PYTHON:-python3}

mkdir -p .git/info
grep -qxF "/$carry/" .git/info/exclude 2>/dev/null || echo "/$carry/" >> .git/info/exclude
rm -rf "$carry"
mkdir -p "$carry/wheels" "$carry/data"

download() {
  "$python" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$carry/wheels" "$@"
}
pinned() {  # NAME==VERSION as installed here (NAME alone if it is not)
  local version
  version=$("$python" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p')
  echo "$1${version:+==$version}"
}

# typing-extensions too: pydantic needs a recent one, newer than the image's may be
for name in pydantic pydantic-core annotated-types typing-inspection typing-extensions; do
  download --no-deps "$(pinned "$name")"
done
if [ "${WITH_TRACKING:-0}" = 1 ]; then
  download "$(pinned optuna)" "$(pinned mlflow)"  # with dependencies, then drop the GPU image's
  "$python" - "$carry/wheels" <<'PY'
import re, sys
from pathlib import Path
# Python packages of the GPU image (/work/.library/device/KINDS.md, 2026-11-17)
present = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cycler cython einops etils filelock flatbuffers fonttools fsspec grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig jinja2 joblib kiwisolver
lazy-loader lxml markdown markdown-it-py markupsafe matplotlib mdurl ml-dtypes mpmath msgpack
multidict networkx ninja numpy onnx onnx-ir onnxruntime onnxscript opencv-python-headless
packaging pandas pathspec patsy pillow pip pluggy portalocker prometheus-client propcache protobuf
psutil pyarrow pybind11 pygments pyparsing python-dateutil pyyaml regex requests rich
safetensors scikit-image scikit-learn scipy seaborn setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server threadpoolctl
tifffile timm tokenizers toolz torch torchvision tqdm transformers triton typer
urllib3 werkzeug wheel wrapt xxhash yarl zipp""".split())
for wheel in Path(sys.argv[1]).glob("*.whl"):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    if name in present:
        wheel.unlink()
PY
fi
cp -r "$data/cifar10-jpeg" "$data/reference" "$carry/data/"
ls "$carry/wheels"
du -sh "$carry"
echo "carry ready: run bash bench/gpu_run.sh on the device with carry=[\"$carry\"]"
