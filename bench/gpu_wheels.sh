#!/usr/bin/env bash
# Fetch, into .whl/ at the repo root, the wheels the GPU suite needs that the GPU machine lacks (it has no network).
# The GPU machine has Python 3.12, torch 2.11, transformers 5.17, huggingface_hub, timm, scikit-image (so scipy),
# opencv, pyarrow, ...; it lacks diffusers (inference comparison, SDXL-shaped VAE), controlnet_aux (annotators),
# open_clip_torch (curation), imagehash (dedup hashing) and the small packages those import that nothing there
# pulls in. ray and datasets are not needed by the suite. --no-deps: every dependency is listed here on purpose.
#   bash bench/gpu_wheels.sh          # then: run the suite with carry [".whl"]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(
  diffusers==0.42.1            # OmniGenPipeline / OmniGenTransformer2DModel / AutoencoderKL (pure python)
  requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1 charset-normalizer==3.5.3
                               # diffusers' pipeline_utils does `import requests`; transformers 5 no longer pulls it in
  importlib_metadata==10.2.0 zipp==4.1.2   # controlnet_aux imports the backport
  controlnet_aux==0.0.10 einops==0.8.2     # annotators (HED, MiDaS, OpenPose, ...)
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4   # curation: aesthetic and CLIP scores
  ImageHash==4.3.2 PyWavelets==1.9.0       # curation: pHash (PyWavelets is the only binary wheel here)
)
mkdir -p .whl
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl "${WHEELS[@]}"
du -ch .whl/*.whl | tail -1
