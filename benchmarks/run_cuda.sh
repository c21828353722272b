#!/usr/bin/env bash
# Every GPU figure in one go, on a machine with one CUDA device (about 8 minutes on an H100).
#
#   bash benchmarks/run_cuda.sh OUTDIR
#
# 1. Student fidelity with longer training than the CPU table can afford: four runs of
#    bench_fidelity.py at once on the one GPU (each is launch-bound at 128 px), on the
#    target stores under benchmarks/work/fidelity (made by the CPU run; the teacher
#    regenerates any that are missing). Each run's held-out agreement curve is in its
#    metrics.jsonl.
# 2. Speed: the batched teacher at 256 and 512 px, the students (bf16 + channels_last),
#    one training step in fp32 and in bf16 + channels_last.
# 3. The tests that need a GPU.
# Results go to benchmarks/results/*_cuda.md; OUTDIR receives a tarball of them, the run
# metrics and the logs.
set -u
out=${1:?usage: run_cuda.sh OUTDIR}
mkdir -p "$out/logs"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/logs/gpu.txt" 2>&1

budget=${FIDELITY_SECONDS:-330}
# The painting the CPU table used (the fidelity benchmark's default style); give its path
# when the shared data folder is not beside the checkout.
style=${FIDELITY_STYLE:-../shared/data/style/rain-princess-cropped.jpg}
fidelity() {  # label, then bench_fidelity arguments
    local label=$1; shift
    timeout "$budget" python benchmarks/bench_fidelity.py --device cuda --style "$style" --label "_$label" \
        --set eval_interval=250 --set checkpoint_interval=250 "$@" > "$out/logs/fidelity_$label.log" 2>&1 &
}
fidelity fast6k --pairs fast:default --steps 6000
fidelity johnson4k --pairs johnson:default --steps 4000
fidelity johnson4k_d100 --pairs johnson:default --steps 4000 --set distill_weight=100.0
fidelity timm2k --pairs timm_encoder:default --steps 2000
wait

python benchmarks/bench_teacher.py --device cuda --sizes 256 512 --batches 1 4 > "$out/logs/teacher.log" 2>&1
python benchmarks/bench_students.py --device cuda > "$out/logs/students.log" 2>&1
python benchmarks/bench_train.py --device cuda --out benchmarks/results/train_cuda_fp32.md > "$out/logs/train_fp32.log" 2>&1
python benchmarks/bench_train.py --device cuda --precision bf16 --channels-last \
    --out benchmarks/results/train_cuda.md > "$out/logs/train_bf16.log" 2>&1
python -m pytest -q -p no:cacheprovider -m gpu tests > "$out/logs/pytest_gpu.log" 2>&1

tar czf "$out/cuda_results.tgz" benchmarks/results/*cuda* \
    $(ls benchmarks/work/fidelity/runs/*/metrics.jsonl 2>/dev/null) "$out/logs" 2>/dev/null
ls -la "$out"
