#!/usr/bin/env bash
# The GPU check in one command, for a lent device (one H100/H200; about 15 minutes of device time in all):
#
#   bash benchmarks/gpu_check.sh ARCHIVES [cuda] [cifar] [text]     # default: all three, in this order
#
# ARCHIVES: a folder holding cifar10-jpeg.tar.xz and wikitext2-valid-test.tar.xz (carried to the device; never
# committed). cuda: tests/test_cuda.py (CPU/CUDA equivalence, bf16 products); cifar: benchmarks/gpu_cifar10.py (the
# cifar10 preset: training, EK-FAC influence and SOURCE, a reduced LDS, exact unrolling of 5 queries); text:
# benchmarks/gpu_text.py. Each part has its own time limit so that one stuck part leaves the others their time,
# and every report is saved after each phase; reports go to $OUT when it is set (the device's folder that comes
# back), else benchmarks/results. Planned: about 1 + 5 + 3 minutes. TINY=1 runs the scripts' --tiny sizes (a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
archives="$(cd "${1:?give the folder holding the archives}" && pwd)"
shift
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(cuda cifar text)
results="${OUT:-$PWD/benchmarks/results}"
mkdir -p "$results"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-python}"
[[ "$python" == */* ]] && python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"  # parts cd away
tiny=()
[ "${TINY:-0}" = 1 ] && tiny=(--tiny)
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
status=0
for part in "${parts[@]}"; do
    echo "=== $part ($(date +%T))"
    case "$part" in
        cuda) timeout 150 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py || status=1 ;;
        cifar) (cd benchmarks && timeout 330 "$python" gpu_cifar10.py --archive "$archives/cifar10-jpeg.tar.xz" \
                    --out "$results/gpu_cifar10.json" "${tiny[@]}") || status=1 ;;
        text) (cd benchmarks && timeout 200 "$python" gpu_text.py --archive "$archives/wikitext2-valid-test.tar.xz" \
                   --out "$results/gpu_text.json" "${tiny[@]}") || status=1 ;;
        *) echo "unknown part $part: cuda, cifar or text"; status=2 ;;
    esac
done
exit $status
