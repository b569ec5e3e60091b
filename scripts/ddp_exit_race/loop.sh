#!/bin/bash
# Run the 2-process training of test_two_process_ddp_matches_one_process[ema+masks+posfield] N times
# under torchrun and count the runs that did not exit 0 (issue 26).
#   scripts/ddp_exit_race/loop.sh N OUT_DIR            natural timing
#   scripts/ddp_exit_race/loop.sh N OUT_DIR --forced   gloo workers held at the race point (gloo_race.cpp)
# Environment: PYTHON (default .venv/bin/python of this checkout); anything else is passed to the ranks
# (e.g. PYTHONPATH=... to run another copy of wherevit). Logs of failed runs stay in OUT_DIR/r<i>/.
set -u
N=$1; OUT=$(realpath -m "$2"); MODE=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
mkdir -p "$OUT"
"$PY" - "$OUT/tiny.yaml" <<PYEOF
import sys, yaml
sys.path.insert(0, "$ROOT/tests")
from conftest import tiny_train_dict
cfg = tiny_train_dict(total_steps=3, log_every=1, ckpt_every=3, **{"dino.centering": "ema"},
                      ibot={"enabled": True}, plugins={"posfield": {"field_size": 8}})
open(sys.argv[1], "w").write(yaml.safe_dump(cfg))
PYEOF
ENTRY=(-m wherevit.app.cli)
LAUNCH=()
if [ "$MODE" = "--forced" ]; then
  g++ -O2 -shared -fPIC -o "$OUT/libgloo_race.so" "$HERE/gloo_race.cpp" -ldl || exit 2
  export RACE_SHIM=$OUT/libgloo_race.so GLOO_HOLD_US=${GLOO_HOLD_US:-500000}
  LAUNCH=(--no-python env LD_PRELOAD="$OUT/libgloo_race.so" "$PY")
  ENTRY=("$HERE/race_driver.py")
fi
fail=0; t0=$(date +%s)
for i in $(seq 1 "$N"); do
  d=$OUT/r$i; rm -rf "$d"; mkdir -p "$d"
  (cd "$d" && OMP_NUM_THREADS=1 nice -n 10 "$PY" -m torch.distributed.run --nnodes 1 --nproc_per_node 2 \
     --master_addr 127.0.0.1 --master_port $((20000 + RANDOM % 20000)) "${LAUNCH[@]}" "${ENTRY[@]}" \
     train --config "$OUT/tiny.yaml" --no-progress --out "$d/run" > "$d/log.txt" 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then
    fail=$((fail + 1))
    echo "run $i: torchrun exit $rc; $(grep -o 'exitcode *: *-\?[0-9]*\|terminate called without an active exception' "$d/log.txt" | sort | uniq -c | tr -s ' \n' ' ')"
  else
    rm -rf "$d"
  fi
done
echo "runs=$N failures=$fail seconds=$(( $(date +%s) - t0 )) load: $(cut -d' ' -f1-3 /proc/loadavg)"
