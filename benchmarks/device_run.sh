#!/usr/bin/env bash
# One full call on a lent GPU machine: build the CUDA extension, run the whole test suite
# (CUDA tests included, extension required), run every benchmark, and copy the JSON results
# and logs to $OUT. Usage there: bash benchmarks/device_run.sh [pytest args...]
# Fashion-MNIST travels in .data/fashion-mnist (git-ignored; carry it) when the machine lacks it.
# The copy's git metadata can be older than its files: before the call, run
#   git rev-parse HEAD > .data/commit   (and carry .data) so the JSON names the right commit.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -f .data/commit ] && export MTT_FAST_SOURCE_COMMIT="$(cat .data/commit)"
if [ -d .data/fashion-mnist ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
    mkdir -p /usr/share/datasets && cp -r .data/fashion-mnist /usr/share/datasets/
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
t=$(date +%s)
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS=16 \
    python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t )) s"
python3 -c "from mtt_fast.ops import extension_info; print(extension_info())"
# every compiled op family against its spec on the GPU (float32 + float64) and fused vs
# reference timings; exit 2 (a failing family) is reported, the run goes on
MTT_FAST_CACHE="$OUT/cache" mtt-fast selftest --device cuda --bench --json "$OUT/selftest_cuda.json" 2>&1 \
    | tee "$OUT/selftest.log" || echo "selftest: exit ${PIPESTATUS[0]}"
MTT_FAST_REQUIRE_EXT=1 python3 -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$OUT/pytest.log" | tail -25
for b in ${BENCHES-benchmarks/bench_*.py}; do
    echo "== $b"
    python3 $b 2>&1 | tee -a "$OUT/bench.log" | tail -30
done
cp benchmarks/results/*cuda*.json "$OUT"/ 2>/dev/null
if [ -n "${EXTRA:-}" ]; then
    bash $EXTRA 2>&1 | tee "$OUT/extra.log" | tail -40
fi
if [ "${DEMO:-0}" = 1 ]; then
    t=$(date +%s)
    mtt-fast demo --device cuda --out /tmp/mtt-demo --no-progress 2>&1 | tee "$OUT/demo.log" | tail -15
    echo "demo on cuda: $(( $(date +%s) - t )) s"
fi
ls "$OUT"
