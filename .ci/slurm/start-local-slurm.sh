#!/usr/bin/env bash
# Start a real single-node Slurm cluster on this machine, for tests and CI (Debian 12, as root, no systemd needed):
# munged, MariaDB, slurmdbd, slurmctld and slurmd, fake GPUs (gres gpu), account $LOCAL_SLURM_ACCOUNT with root
# in it, partition $LOCAL_SLURM_PARTITION. Installs the packages it lacks, then waits until the node is idle.
# Idempotent: what already runs is left alone; a daemon this script started is restarted if its config changed.
# Config, state, logs and the database live in $LOCAL_SLURM_DIR; /etc/slurm/slurm.conf links there so that
# sinfo, sbatch and sacct need no SLURM_CONF. stop-local-slurm.sh stops exactly what this started.
#
#   LOCAL_SLURM_DIR=/tmp/scalpel-slurm  LOCAL_SLURM_GPUS=2  LOCAL_SLURM_ACCOUNT=ci  LOCAL_SLURM_PARTITION=debug
#   LOCAL_SLURM_DB_PORT=3307  LOCAL_SLURM_TIMEOUT=60 (seconds to wait for each daemon)
set -euo pipefail

DIR=${LOCAL_SLURM_DIR:-/tmp/scalpel-slurm}
NGPUS=${LOCAL_SLURM_GPUS:-2}
ACCOUNT=${LOCAL_SLURM_ACCOUNT:-ci}
PARTITION=${LOCAL_SLURM_PARTITION:-debug}
DB_PORT=${LOCAL_SLURM_DB_PORT:-3307}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
CLUSTER=local
DB_PASS=local-slurm   # MariaDB listens on 127.0.0.1 only
export SLURM_CONF=$DIR/etc/slurm.conf
T0=$(date +%s%N)

log() { local ms=$((($(date +%s%N) - T0) / 1000000)); printf '[start-local-slurm %d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }
die() {
    log "ERROR: $*"
    for f in "$DIR"/log/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done
    exit 1
}
[ "$(id -u)" = 0 ] || { echo "start-local-slurm.sh: run me as root" >&2; exit 1; }

missing=()
for p in munge slurmctld slurmd slurm-client slurmdbd mariadb-server; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

install -d -m 0755 "$DIR" "$DIR"/{etc,log,run,dev,state,state/ctld,state/d}
touch "$DIR/run/started"   # "name pid" of every daemon this script started

# alive NAME: pid of the live (not zombie) process NAME this script started, else fails
alive() {
    local pid
    pid=$(awk -v n="$1" '$1 == n {p = $2} END {print p}' "$DIR/run/started")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] \
        && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && echo "$pid"
}
record() { sed -i "/^$1 /d" "$DIR/run/started"; echo "$1 $(tr -dc 0-9 <"$2")" >>"$DIR/run/started"; log "$1 started (pid $(alive "$1"))"; }
wait_for() {  # wait_for WHAT COMMAND...; gives up early if $WAIT_PID (when set) has exited
    local what=$1 end=$(($(date +%s) + TIMEOUT)); shift
    until "$@" >/dev/null 2>&1; do
        [ -z "${WAIT_PID:-}" ] || kill -0 "$WAIT_PID" 2>/dev/null || die "$what exited"
        [ "$(date +%s)" -lt "$end" ] || die "timed out waiting for $what"
        sleep 0.2
    done
}
stop_ours() {
    local pid
    pid=$(alive "$1") || return 0
    log "restarting $1 (config changed)"
    kill -TERM "$pid"
    for _ in $(seq 50); do alive "$1" >/dev/null || return 0; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
}
# write FILE MODE < content: replace FILE if its content differs; fails if it was already up to date
write() {
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
    install -m "$2" "$tmp" "$1" && rm -f "$tmp"
}

# --- config. Slurm drops a GPU without a device file and rejects regular files: fake each GPU with a character
# device that is /dev/null underneath (major 1, minor 3).
NODE=$(hostname -s)
HW=$(slurmd -C | head -n1)
MEM=$(($(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW") * 9 / 10))
CPU_LAYOUT=$(sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=[0-9]*//' <<<"$HW")
GRES=""
for ((i = 0; i < NGPUS; i++)); do [ -c "$DIR/dev/gpu$i" ] || mknod -m 0666 "$DIR/dev/gpu$i" c 1 3; done
[ "$NGPUS" -gt 0 ] && GRES="Gres=gpu:fake:$NGPUS"

changed=0
write "$DIR/etc/slurm.conf" 0644 <<EOF && changed=1
# Written by start-local-slurm.sh: a single-node cluster for tests.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job that asks no memory gets the whole node, and jobs run one at a time.
DefMemPerCPU=1000
MinJobAge=300
# Jobs keep the nice value of the command that submitted them: \`nice pytest\` stays nice on a shared machine.
PropagatePrioProcess=1
KillWait=5
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
NodeName=$NODE NodeAddr=127.0.0.1 $CPU_LAYOUT RealMemory=$MEM $GRES State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
write "$DIR/etc/gres.conf" 0644 <<EOF && changed=1
AutoDetect=off
$([ "$NGPUS" -gt 0 ] && echo "NodeName=$NODE Name=gpu Type=fake File=$DIR/dev/gpu[0-$((NGPUS - 1))]")
EOF
dbd_changed=0
write "$DIR/etc/slurmdbd.conf" 0600 <<EOF && dbd_changed=1
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
# Clients find the cluster without SLURM_CONF; a slurm.conf that is not ours is left alone.
if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" != "$SLURM_CONF" ]; then
    if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
        log "WARNING: /etc/slurm/slurm.conf is not ours: export SLURM_CONF=$SLURM_CONF to use this cluster"
    else
        install -d /etc/slurm && ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
    fi
fi

# --- munge: the system's key and socket; a munged that already answers is left alone
if alive munged >/dev/null; then :
elif munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then log "munged already runs (not started here)"
else
    [ -s /etc/munge/munge.key ] || { install -d -o munge -g munge -m 0700 /etc/munge; mungekey --create --force; }
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1
    wait_for munged sh -c 'munge -n | unmunge'
    record munged /run/munge/munged.pid
fi

# --- MariaDB: our own instance, data in $DIR/mysql, on 127.0.0.1:$DB_PORT
SOCK=$DIR/run/mysqld/mysqld.sock
if ! alive mariadbd >/dev/null; then
    install -d -o mysql -g mysql -m 0755 "$DIR/run/mysqld"
    if [ ! -d "$DIR/mysql/mysql" ]; then
        install -d -o mysql -g mysql -m 0750 "$DIR/mysql"
        mariadb-install-db --user=mysql --datadir="$DIR/mysql" --skip-test-db >>"$DIR/log/mariadbd.log" 2>&1
    fi
    setsid /usr/sbin/mariadbd --user=mysql --datadir="$DIR/mysql" --socket="$SOCK" --pid-file="$DIR/run/mysqld/mariadbd.pid" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --innodb-buffer-pool-size=64M \
        --innodb-lock-wait-timeout=900 </dev/null >>"$DIR/log/mariadbd.log" 2>&1 &
    WAIT_PID=$! wait_for mariadbd mariadb-admin --socket="$SOCK" ping
    record mariadbd "$DIR/run/mysqld/mariadbd.pid"
fi
mariadb --socket="$SOCK" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

# --- slurmdbd, then the cluster, account and user it knows (before slurmctld, which registers with it)
[ "$dbd_changed" = 1 ] && stop_ours slurmdbd
if ! alive slurmdbd >/dev/null; then
    rm -f "$DIR/run/slurmdbd.pid"
    slurmdbd </dev/null >/dev/null 2>&1
    wait_for "slurmdbd pid file" test -s "$DIR/run/slurmdbd.pid"
    record slurmdbd "$DIR/run/slurmdbd.pid"
fi
wait_for slurmdbd sacctmgr -n show cluster
has() { [ -n "$(sacctmgr -n -P show "$@")" ]; }
has cluster "$CLUSTER" format=cluster || sacctmgr -i add cluster "$CLUSTER" >/dev/null
has account "$ACCOUNT" format=account || sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=tests Organization=tests >/dev/null
has assoc where user=root account="$ACCOUNT" format=user || sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null

# --- slurmctld and slurmd
if [ "$changed" = 1 ]; then stop_ours slurmd; stop_ours slurmctld; fi
for daemon in slurmctld slurmd; do
    if ! alive "$daemon" >/dev/null; then
        rm -f "$DIR/run/$daemon.pid"
        "$daemon" </dev/null >/dev/null 2>&1
        wait_for "$daemon pid file" test -s "$DIR/run/$daemon.pid"
        record "$daemon" "$DIR/run/$daemon.pid"
    fi
    if [ "$daemon" = slurmctld ]; then wait_for slurmctld scontrol ping; fi
done

# Node state survives restarts: a node left drained or down by an earlier config is resumed once.
end=$(($(date +%s) + TIMEOUT)) resumed=0
while state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null); ! [[ $state =~ ^(idle|mixed|allocated|completing)$ ]]; do
    if [[ $state =~ drain|down|inval|fail ]] && [ "$resumed" = 0 ] && alive slurmd >/dev/null; then
        sleep 1; scontrol update nodename="$NODE" state=resume 2>/dev/null || true; resumed=1
    fi
    [ "$(date +%s)" -lt "$end" ] || die "node $NODE is not idle: $(sinfo -h -N -o '%N %T %E')"
    sleep 0.2
done
log "ready: node $NODE $state; $(sinfo -h -o 'partition %P, %c cpus, %m MB, gres %G'); account $ACCOUNT"
