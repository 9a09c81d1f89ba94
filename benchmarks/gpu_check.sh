#!/usr/bin/env bash
# The GPU check, one command on one CUDA GPU with no network (≤ 14 minutes on an H100/H200):
#   bash benchmarks/gpu_wheels.sh      # here, once: the wheels the GPU image lacks, into .whl/
#   bash benchmarks/gpu_check.sh       # there (the device tool: carry .whl), prints every figure
# 1. WSDTrainer vs Trainer(warmup_stable_decay) on the ~124M config in bf16: update time ratio, tokens/s, MFU.
# 2. A WSD branch switch at that size: in memory vs the checkpoint path.
# 3. A checkpoint every 10 updates at that size: background vs synchronous vs none.
# 4. The GPU tests: bf16 budget folders, in-memory branches = checkpoint branches, FSDP2 / ZeRO-2 / ZeRO-3 on
#    one GPU (budget folders, branches, SIGKILL + resume, extension), bf16 + compile through an in-memory
#    branch (no recompilation), background checkpoints = synchronous ones, a kill mid-write.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/hf_wsd_site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/hf_wsd_site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:$PWD/benchmarks:$PWD/tests:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name())" || exit 1
status=0
timeout 420 python3 benchmarks/gpu_check.py || status=1
timeout 420 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py || status=1
exit $status
