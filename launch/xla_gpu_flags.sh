# shellcheck shell=bash
# XLA flags for training large sharded models on NVIDIA GPUs, to be sourced:
#
#   source launch/xla_gpu_flags.sh      # then start gpt3-jax (slurm_gpu.sbatch, benchmarks/gpu_suite.sh do)
#
# It appends each flag below to XLA_FLAGS unless XLA_FLAGS already names it (with any value), so a
# flag set by hand wins: XLA_FLAGS=--xla_gpu_enable_command_buffer=FUSION,CUBLAS keeps CUDA graphs.
# The set is the one MaxText's and NVIDIA JAX-Toolbox's GPU scripts use for LLM training; every
# name was checked against jaxlib 0.10.2's XLA (an unknown flag aborts XLA at start-up, on any
# backend: `XLA_FLAGS=--name=value JAX_PLATFORMS=cpu python -c 'import jax; jax.numpy.ones(1)'`).
# The combine thresholds are those of one node of 8 GPUs (1 GiB all-reduce; ÷8 all-gather, ÷16
# reduce-scatter, as MaxText scales them by device count).

_gpt3_jax_xla_gpu_flags=(
  --xla_gpu_enable_latency_hiding_scheduler=true        # schedule collectives to overlap compute
  --xla_gpu_enable_highest_priority_async_stream=true   # the collectives' stream at the highest priority
  --xla_gpu_enable_triton_gemm=false                    # matmuls through cuBLAS, not Triton GEMMs
  --xla_gpu_enable_command_buffer=                      # no CUDA-graph command buffers (MaxText's setting)
  --xla_gpu_all_reduce_combine_threshold_bytes=1073741824     # merge small all-reduces up to 1 GiB
  --xla_gpu_all_gather_combine_threshold_bytes=134217728      # merge FSDP weight all-gathers up to 128 MiB
  --xla_gpu_reduce_scatter_combine_threshold_bytes=67108864   # merge gradient reduce-scatters up to 64 MiB
  --xla_gpu_enable_pipelined_all_gather=true            # a scanned layer's all-gather starts an iteration early
  --xla_gpu_enable_pipelined_reduce_scatter=true        # and its reduce-scatter finishes an iteration late
  --xla_gpu_enable_pipelined_all_reduce=true            # the same for all-reduces in the layer scan
  --xla_gpu_enable_while_loop_double_buffering=true     # unroll the layer scan by 2 so the above can overlap
)

_gpt3_jax_xla_flags_now=" ${XLA_FLAGS:-} "
_gpt3_jax_xla_flags_now=${_gpt3_jax_xla_flags_now//[$'\t\n']/ }
for _gpt3_jax_flag in "${_gpt3_jax_xla_gpu_flags[@]}"; do
  case $_gpt3_jax_xla_flags_now in
    *" ${_gpt3_jax_flag%%=*}="* | *" ${_gpt3_jax_flag%%=*} "*) ;; # set by the user: keep theirs
    *) XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$_gpt3_jax_flag" ;;
  esac
done
export XLA_FLAGS
unset _gpt3_jax_xla_gpu_flags _gpt3_jax_xla_flags_now _gpt3_jax_flag
