#!/usr/bin/env bash
# GPT-3 Small, Medium and XL on one GPU: training MFU per attention implementation at sequence
# 2048 in bf16, and greedy decoding at batch 1 and 8 against the HBM bandwidth bound, as one table.
# benchmarks/gpu_suite.py does the work (its docstring says what each column is).
#
#   bash benchmarks/gpu_suite.sh                            # one H100 or H200 (docs/performance.md)
#   bash benchmarks/gpu_suite.sh --json                     # one JSON line per row
#   bash benchmarks/gpu_suite.sh --configs xl --impls cudnn # a part of it; --help for the rest
#   JAX_PLATFORMS=cpu bash benchmarks/gpu_suite.sh --smoke  # tiny shapes on a CPU, seconds (the test)
#
# Needs only `pip install -e '.[cuda]'`; runs the checkout's .venv (or $GPT3_JAX_VENV) when there
# is one, else python3. XLA_FLAGS get launch/xla_gpu_flags.sh's GPU flags, as training on GPUs
# does; a flag already in XLA_FLAGS wins.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=/dev/null  # a path found at run time
source "$here/../launch/xla_gpu_flags.sh"
# The benchmark owns its GPU: let XLA preallocate 90% of its memory (JAX's default is 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

python=${GPT3_JAX_VENV:-$here/../.venv}/bin/python
[[ -x $python ]] || python=python3
exec "$python" "$here/gpu_suite.py" "$@"
