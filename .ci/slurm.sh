# Starts a one-node Slurm cluster on 127.0.0.1 for the Slurm tests, without systemd:
# munged, slurmctld and slurmd run in the foreground from a throwaway directory
# ($1/slurm.XXXXXX: config, munge key and socket, state, spool, logs, pid files), and
# their PIDs go into the caller's PIDS array, so its cleanup stops them. Checks the
# cluster with real jobs (one prints hello; four 1-CPU jobs run at once), then exports
# SLURM_CONF (so sbatch/squeue/scancel of later processes use this cluster) and
# ALCHEMISCALE_TEST_SLURM=1.
#
# Usage (from .ci/run, which defines PIDS, log, free_port, as_root): source .ci/slurm.sh "$WORK"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    log "installing Slurm and MUNGE from Debian packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
SLURM_DIR=$(mktemp -d "$1/slurm.XXXXXX")
# munged wants every directory above its socket searchable by all ("execute permissions
# for all required"); mktemp -d makes 0700 directories
chmod a+x "$1" "$SLURM_DIR"
mkdir -p "$SLURM_DIR"/{munge,state,spool}
chmod 755 "$SLURM_DIR/munge"
slurm_logs() {
    for f in "$SLURM_DIR"/*.log; do printf '\n---- %s\n' "$f" >&2; tail -n 40 "$f" >&2; done
}

# ---- MUNGE (its own key and socket; run as root, as the Slurm daemons are) ---------------
dd if=/dev/urandom of="$SLURM_DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$SLURM_DIR/munge/munge.key"
MUNGE_SOCKET="$SLURM_DIR/munge/munge.socket"
munged --foreground --socket="$MUNGE_SOCKET" --key-file="$SLURM_DIR/munge/munge.key" \
    --pid-file="$SLURM_DIR/munge/munged.pid" --seed-file="$SLURM_DIR/munge/munged.seed" \
    >"$SLURM_DIR/munged.log" 2>&1 &
PIDS+=($!); SLURM_PIDS=($!)
for _ in $(seq 1 50); do munge -S "$MUNGE_SOCKET" -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
munge -S "$MUNGE_SOCKET" -n </dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null || { slurm_logs; exit 1; }

# ---- Slurm ---------------------------------------------------------------------------
# No cgroups (proctrack/linuxproc, task/none, no accounting). CPUs is the real count, and
# OverSubscribe=FORCE:4 lets up to 4 jobs share a core, so 1-CPU jobs run 4 per core.
SLURM_HOST=$(hostname -s)
cat >"$SLURM_DIR/slurm.conf" <<EOF
ClusterName=ci
SlurmctldHost=$SLURM_HOST(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
PlugStackConfig=$SLURM_DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
NodeName=$SLURM_HOST NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
: >"$SLURM_DIR/plugstack.conf"
export SLURM_CONF="$SLURM_DIR/slurm.conf"
log "starting Slurm (slurmctld, slurmd) on 127.0.0.1 as node $SLURM_HOST"
slurmctld -D >>"$SLURM_DIR/slurmctld.log" 2>&1 &
PIDS+=($!); SLURM_PIDS+=($!)
slurmd -D -N "$SLURM_HOST" >>"$SLURM_DIR/slurmd.log" 2>&1 &
PIDS+=($!); SLURM_PIDS+=($!)
# A running job outlives slurmd: its slurmstepd (reparented to init, deaf to SIGTERM, and
# holding slurmd.log open) and the job's processes share a session of their own. This
# helper, stopped with the others (or once this shell is gone), kills by PID every process
# in those sessions.
slurm_reap() {
    local own pid sid
    own=$(ps -o sid= -p $BASHPID | tr -d ' ')  # ours, slurmd's and the CI's: never killed
    for pid in $(find /proc/[0-9]*/fd -lname "$SLURM_DIR/slurmd.log*" 2>/dev/null | cut -d/ -f3 | sort -u); do
        sid=$(ps -o sid= -p "$pid" | tr -d ' ')
        [ -n "$sid" ] && [ "$sid" != "$own" ] || continue
        ps -eo pid=,sid= | awk -v s="$sid" '$2 == s {print $1}' | xargs -r kill -9 2>/dev/null || true
    done
}
( trap 'slurm_reap; exit 0' TERM; while kill -0 $$ 2>/dev/null; do sleep 1; done; slurm_reap ) </dev/null >/dev/null 2>&1 &
PIDS+=($!)
# until the condition $1 holds (30 s, and the daemons alive), else show the state and logs
slurm_until() {
    local end=$((SECONDS + 30))
    until kill -0 "${SLURM_PIDS[@]}" 2>/dev/null && eval "$1"; do
        if [ $SECONDS -ge $end ] || ! kill -0 "${SLURM_PIDS[@]}" 2>/dev/null; then
            { timeout 5 sinfo; timeout 5 squeue; } >&2 || true
            slurm_logs
            exit 1
        fi
        sleep 0.2
    done
}
slurm_until '[ "$(sinfo -h -n "$SLURM_HOST" -o %t 2>/dev/null)" = idle ]'

# ---- check with real jobs ------------------------------------------------------------
HELLO_JOB=$(sbatch --parsable --chdir="$SLURM_DIR" --output="$SLURM_DIR/hello-%j.out" --wrap 'echo hello') \
    || { slurm_logs; exit 1; }
slurm_until '[ -z "$(squeue -h -o %i)" ]'
grep -qx hello "$SLURM_DIR/hello-$HELLO_JOB.out" || { cat "$SLURM_DIR/hello-$HELLO_JOB.out" >&2 || true; slurm_logs; exit 1; }
for _ in 1 2 3 4; do
    sbatch --job-name=ci-check --chdir="$SLURM_DIR" --output=/dev/null --wrap 'sleep 5' >/dev/null || { slurm_logs; exit 1; }
done
slurm_until '[ "$(squeue -h -n ci-check -t RUNNING -o %i | wc -l)" = 4 ]'
scancel --name=ci-check
slurm_until '[ -z "$(squeue -h -o %i)" ]'
export ALCHEMISCALE_TEST_SLURM=1
