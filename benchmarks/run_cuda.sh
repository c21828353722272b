#!/usr/bin/env bash
# Every GPU figure in one go, on a machine with one CUDA device (about 9 minutes on an H100).
#
#   bash benchmarks/run_cuda.sh OUTDIR
#
# 1. Student fidelity with longer training than the CPU table can afford, and with three
#    other teachers: runs of bench_fidelity.py side by side on the one GPU (each is
#    launch-bound at 128 px), on the target stores under benchmarks/work/fidelity (made by
#    the CPU run; targets that are missing, such as the other teachers', are made first).
#    fidelity_sweep.py puts them in one table with each run's agreement curve.
# 2. Speed: the batched teacher at 256 and 512 px, the students (bf16 + channels_last),
#    one training step in fp32 and in bf16 + channels_last, exported students at 512 px.
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
labels=()  # every fidelity run, for the sweep table
fidelity() {  # label, then bench_fidelity arguments
    local label=$1; shift
    labels+=("$label")
    timeout "$budget" python benchmarks/bench_fidelity.py --device cuda --style "$style" --label "_$label" \
        --set eval_interval=250 --set checkpoint_interval=250 "$@" > "$out/logs/fidelity_$label.log" 2>&1 &
}
# Longer training than the CPU table: does agreement keep rising with steps?
fidelity fast6k --pairs fast:default --steps 6000
fidelity johnson4k --pairs johnson:default --steps 4000
fidelity johnson4k_d100 --pairs johnson:default --steps 4000 --set distill_weight=100.0
fidelity timm2k --pairs timm_encoder:default --steps 2000
wait
# Teachers that might be easier to learn: half the style weight, 60 iterations, coarser pyramid steps.
for student in fast timm_encoder; do
    fidelity ${student}_b5 --pairs $student:default --steps 1500 --teacher-set criterion.style_weight=5.0
    fidelity ${student}_i60 --pairs $student:default --steps 1500 --iters 60
    fidelity ${student}_g3 --pairs $student:default --steps 1500 --teacher-set pyramid_gain=3.0
done
wait

python benchmarks/fidelity_sweep.py --device cuda "${labels[@]}" > "$out/logs/sweep.log" 2>&1

python benchmarks/bench_teacher.py --device cuda --sizes 256 512 --batches 1 4 > "$out/logs/teacher.log" 2>&1
python benchmarks/bench_students.py --device cuda > "$out/logs/students.log" 2>&1
python benchmarks/bench_train.py --device cuda --out benchmarks/results/train_cuda_fp32.md > "$out/logs/train_fp32.log" 2>&1
python benchmarks/bench_train.py --device cuda --precision bf16 --channels-last \
    --out benchmarks/results/train_cuda.md > "$out/logs/train_bf16.log" 2>&1
python benchmarks/bench_export.py --device cuda --runs 5 > "$out/logs/export.log" 2>&1
python -m pytest -q -p no:cacheprovider -m gpu tests > "$out/logs/pytest_gpu.log" 2>&1

tar czf "$out/cuda_results.tgz" benchmarks/results/*cuda* benchmarks/results/fidelity_runs \
    $(ls benchmarks/work/fidelity/runs/*/metrics.jsonl 2>/dev/null) "$out/logs" 2>/dev/null
ls -la "$out"
