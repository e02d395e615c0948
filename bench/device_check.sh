#!/usr/bin/env bash
# Everything a GPU machine is borrowed for, in one call that fits a short lease.
#
#   OUT=/some/dir PARTS=gpu,throughput,heavy bash bench/device_check.sh [BUDGET_S] [PYTEST_ARGS...]
#
# * gpu:        bench/gpu_check.py (nccl on 1 GPU, 2 ranks sharing a GPU over gloo, fp16 compression,
#               the duplicate-GPU nccl probe, a CPU baseline), one JSON line per check.
# * throughput: bench/throughput.py --runs 3 (orchestrator submit vs bare torchrun, 2 CPU workers).
# * heavy:      the `heavy` real-Ray tests (test_local_backend.py and test_fault_recovery.py unless
#               PYTEST_ARGS name others; test_observability.py's need a Prometheus binary, below).
# * recovery:   bench/recovery.py --runs $RECOVERY_RUNS (default 5): SIGKILL of one of 2 workers,
#               orchestrator vs plain Ray Train; it rewrites $OUT/recovery.json after every run.
#
# The machine has no Prometheus: where $PROM (default .prom/prometheus.bin.xz, Debian's binary,
# stripped and xz-compressed: `strip` and `xz -9` of /usr/bin/prometheus from the `prometheus`
# package) exists, it is unpacked onto the PATH first.
#
# Each part gets what is left of BUDGET_S (default 540), so the call ends inside the lease and
# whatever finished is already in $OUT. Where the machine lacks Ray, the wheelhouse in $WHEELS
# (default .whl: cp312 wheels of ray 2.60 and what the machine's image lacks) is installed into
# /tmp/site first. The machine's own torch is used.
set -u -o pipefail
BUDGET=${1:-540}
shift || true
OUT=${OUT:-/tmp/device-check}
PARTS=${PARTS:-gpu,throughput,heavy}
WHEELS=${WHEELS:-.whl}
PROM=${PROM:-.prom/prometheus.bin.xz}
mkdir -p "$OUT"
started=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - started))); }
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0

if [ -d "$WHEELS" ] && ! python3 -c "import ray" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
  # the integration fixtures run `ray` from beside sys.executable
  ln -sf /tmp/site/bin/ray "$(dirname "$(python3 -c 'import sys; print(sys.executable)')")/ray" || true
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -f "$PROM" ] && ! command -v prometheus >/dev/null 2>&1; then
  mkdir -p /tmp/prom/bin && xz -dc "$PROM" >/tmp/prom/bin/prometheus && chmod +x /tmp/prom/bin/prometheus || exit 5
  export PATH=/tmp/prom/bin:$PATH
  prometheus --version 2>&1 | head -1 | tee "$OUT/prometheus.txt"
fi
{ nvidia-smi -L; nproc; python3 -c "import ray, torch, orchestrator.cli; print('ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1 | tee "$OUT/env.txt" || exit 4
echo "setup done after $(( $(date +%s) - started )) s"

if [[ ",$PARTS," == *",gpu,"* ]]; then
  timeout $(( $(left) * 45 / 100 )) python3 bench/gpu_check.py --timeout 100 2>"$OUT/gpu_check.err" | tee "$OUT/gpu_check.jsonl"
  echo "gpu_check exit $? after $(( $(date +%s) - started )) s"
fi
if [[ ",$PARTS," == *",throughput,"* ]]; then
  share=$([[ ",$PARTS," == *",heavy,"* ]] && echo 55 || echo 95)
  timeout $(( $(left) * share / 100 )) python3 bench/throughput.py --runs 3 --out "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
  echo "throughput exit $? after $(( $(date +%s) - started )) s"
fi
if [[ ",$PARTS," == *",heavy,"* ]] && [ "$(left)" -gt 60 ]; then
  [ $# -gt 0 ] || set -- tests/integration/test_local_backend.py tests/integration/test_fault_recovery.py
  share=$([[ ",$PARTS," == *",recovery,"* ]] && echo 70 || echo 100)
  timeout $(( ($(left) - 10) * share / 100 )) python3 -m pytest -m heavy -v -p no:cacheprovider --junitxml="$OUT/heavy.xml" "$@" 2>&1 | tee "$OUT/heavy.txt"
  echo "heavy exit $? after $(( $(date +%s) - started )) s"
fi
if [[ ",$PARTS," == *",recovery,"* ]] && [ "$(left)" -gt 60 ]; then
  timeout $(( $(left) - 5 )) python3 bench/recovery.py --runs "${RECOVERY_RUNS:-5}" --out "$OUT/recovery.json" 2>&1 | tee "$OUT/recovery.txt"
  echo "recovery exit $? after $(( $(date +%s) - started )) s"
fi
