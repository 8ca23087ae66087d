#!/usr/bin/env bash
# Stop exactly the daemons start-local-slurm.sh started (listed with their pids in $LOCAL_SLURM_DIR/run/started),
# newest first, after cancelling the jobs left in the cluster. A pid is signalled only while it is still the
# daemon it was (/proc/PID/comm), so a recycled pid is never hit. Config, state and database stay for the next
# start; running this twice is harmless.
set -uo pipefail

DIR=${LOCAL_SLURM_DIR:-/tmp/scalpel-slurm}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-30}
export SLURM_CONF=$DIR/etc/slurm.conf
STARTED=$DIR/run/started
[ -s "$STARTED" ] || { echo "[stop-local-slurm] nothing to stop"; exit 0; }

alive() {  # alive NAME PID
    [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ] && ! grep -q '^State:.*Z' "/proc/$2/status" 2>/dev/null
}

jobs=()
grep -q '^slurmctld ' "$STARTED" && mapfile -t jobs < <(squeue -h -o %i 2>/dev/null)
if [ ${#jobs[@]} -gt 0 ]; then
    echo "[stop-local-slurm] cancelling jobs ${jobs[*]}"
    scancel "${jobs[@]}"
    for _ in $(seq $((TIMEOUT * 5))); do [ -z "$(squeue -h -t running,completing -o %i)" ] && break; sleep 0.2; done
fi

tac "$STARTED" | while read -r name pid; do
    if alive "$name" "$pid"; then
        echo "[stop-local-slurm] stopping $name (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq $((TIMEOUT * 5))); do alive "$name" "$pid" || break; sleep 0.2; done
        alive "$name" "$pid" && { echo "[stop-local-slurm] $name ignored TERM for ${TIMEOUT}s: KILL"; kill -KILL "$pid"; }
    fi
    sed -i "/^$name $pid\$/d" "$STARTED"
done
echo "[stop-local-slurm] done"
