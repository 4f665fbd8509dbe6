#!/usr/bin/env bash
# The GPU checks of issue 12, in one call on the device machine (../shared/device/README.md).
# Not yet run: no GPU was lent to the task that wrote it. From the project's root:
#
#   bash ../shared/device/fetch-wheels.sh        # here, once: pydantic, duckdb, typer … into .whl/
#   device tool: carry [".whl"], timeout_s 420 (leaves time for one rerun), command:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \
#       || exit 1; bash bench/gpu-check.sh
#
# It writes under $OUT (7 files): env.txt, bench-gpu.md and .log (`python -m bench gpu`),
# train-cuda.log (a small training on cuda that asserts its parameters are there),
# table2-tiny.csv and .log (configs A and F of VP at the tiny budget, trained and sampled on
# the GPU), summary.txt (each step's exit status). Each step has its own time limit, so one
# that hangs does not cost the others. Copy the figures into bench/RESULTS.md ("## gpu (CUDA)").
set -u
OUT=${OUT:?set OUT to the folder whose files come back}
export PYTHONUNBUFFERED=1
step() {  # step NAME LIMIT_S COMMAND...: run it, note its exit status
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "$name: exit $? after $((SECONDS - start)) s" >> "$OUT/summary.txt"
}

{ nvidia-smi; python3 -c 'import torch; print(torch.__version__, torch.version.cuda,
torch.cuda.is_available(), torch.cuda.get_device_name(0))'; } > "$OUT/env.txt" 2>&1

# 1. the benchmark: training, sampling, bf16/fp32 and GPU-busy ratios on this GPU
step bench-gpu 200 python3 -m bench gpu --out "$OUT/bench-gpu.md" > "$OUT/bench-gpu.log" 2>&1

# 2. a small training on cuda: the worker's device, and every parameter of the result on it
step train-cuda 90 python3 - > "$OUT/train-cuda.log" 2>&1 <<'EOF'
from bench.training import _job
from edmgrid.engine.data import load_data
from edmgrid.engine.device import describe_device, worker_device
from edmgrid.engine.train import fit

assert worker_device().type == "cuda", worker_device()
print("device:", describe_device())
job = _job(2.56)
ema, meta = fit(job.model, load_data(job.data))
where = {str(p.device) for p in ema.parameters()} | {str(b.device) for b in ema.buffers()}
print(meta, where)
assert where == {"cuda:0"}, f"the trained network is on {where}, not cuda:0"
print("OK: trained on cuda:0")
EOF

# 3. a Table 2 tiny subset (VP configs A and F, 256 seeds, fd) through `edmgrid run` on the GPU
cat > /tmp/table2-subset.yaml <<'EOF'
name: table2-gpu
base:
  data: {name: digits}
  model: {preset: vp-A, budget: tiny}
  sampler: {preset: edm}
  metrics: [{name: fd}]
  seeds: 0-255
grid:
  model.preset: [vp-A, vp-F]
EOF
step table2-tiny 90 python3 -c 'import sys; from edmgrid.cli import main; sys.argv[0] = "edmgrid"; main()' \
  run /tmp/table2-subset.yaml --results /tmp/table2-gpu > "$OUT/table2-tiny.log" 2>&1
step table2-csv 30 python3 - >> "$OUT/table2-tiny.log" 2>&1 <<'EOF'
import os
from edmgrid.run.store import Store

store = Store("/tmp/table2-gpu")
runs = store.query("SELECT family, config, status, fd, nfe, seconds, device, error FROM runs")
trainings = store.query(
    "SELECT training_key, status, images_per_second, train_seconds, device FROM trainings"
)
runs.to_csv(os.path.join(os.environ["OUT"], "table2-tiny.csv"), index=False)
print(runs.to_string(), trainings.to_string(), sep="\n")
assert (runs["status"] == "done").all() and runs["device"].str.startswith("cuda:0").all()
EOF
cat "$OUT/summary.txt"
