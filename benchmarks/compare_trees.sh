#!/bin/bash
# Same-run A/B of two trees (e.g. the previous main and this one), interleaved, two rounds.
# Usage: OLD_SRC=/path/to/old/src bash benchmarks/compare_trees.sh > out.txt (prints one JSON line per run)
PY=${PY:-$PWD/.venv/bin/python}
run() { # tree scenario ops extra...
  local tree=$1; shift; local sc=$1; shift; local ops=$1; shift
  if [ "$tree" = old ]; then pp=${OLD_SRC:?set OLD_SRC to the old tree src dir, with _native built in place}; else pp=${NEW_SRC:-$PWD/src}; fi
  out=$(cd /tmp && PYTHONPATH=$pp $PY -m ecac bench --scenario $sc --ops $ops --seed 42 "$@" --json 2>/dev/null | tail -1)
  echo "$tree $sc $ops $* $out"
}
for round in 1 2; do
  for t in old new; do run $t hb-chain 100000; done
  for t in new old; do run $t ingest 100000; done
  for t in old new; do run $t store-replay 100000; done
  for t in new old; do run $t policy-heavy 100000; done
  for t in old new; do run $t sync 10000 --nodes 2; done
done
run new digest-update 100000
run new digest-update-hb 100000
run new status-latency 100000
