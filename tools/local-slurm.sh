#!/usr/bin/env bash
# A real single-node Slurm on this machine, to test profiles/slurm (tests/test_slurm.py).
#
#   tools/local-slurm.sh start    install Debian's slurm-wlm and munge where missing (root, apt),
#                                   write /etc/slurm/slurm.conf for this host (CPUs and memory from
#                                   `slurmd -C`), start munged, slurmctld and slurmd, wait until the
#                                   node is idle. Safe to repeat: what already runs is kept.
#   tools/local-slurm.sh stop     stop the daemons (by their pid files).
#   tools/local-slurm.sh status   sinfo, and where the job-completion log is.
#
# No accounting database (slurmdbd): finished jobs are recorded in the job-completion log
# (jobcomp/filetxt), and the Snakemake profile reads job states with squeue, not sacct.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# Written by tools/local-slurm.sh: a single-node test cluster."
LOGDIR=/var/log/slurm
JOBCOMP=$LOGDIR/jobcomp.log
NODE=$(hostname -s)

log() { echo "local-slurm: $*" >&2; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return
    [ "$(id -u)" = 0 ] || { log "Slurm is not installed and this is not root: cannot apt-get install"; exit 2; }
    log "installing slurmctld, slurmd, slurm-client and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d or a missing init system may refuse to start the services: they are started below.
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
    if [ -f "$CONF" ] && ! grep -qF "local-slurm.sh: a single-node test cluster." "$CONF"; then  # this script's MARK
        log "$CONF exists and was not written by this script: leaving it (and that cluster) alone"
        return
    fi
    # This machine's CPUs, sockets, cores, threads and memory, as slurmd itself sees them.
    local hardware
    hardware=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //')
    mkdir -p /etc/slurm "$LOGDIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
    cat >"$CONF" <<EOF
$MARK
ClusterName=localtest
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# Containers rarely allow cgroups: track processes through /proc, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Finished jobs stay visible to squeue for 10 minutes (Snakemake reads their state there).
MinJobAge=600
# The record of every finished job (no slurmdbd here).
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP
AccountingStorageType=accounting_storage/none
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    log "wrote $CONF for node $NODE: $hardware"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_daemons() {
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
    running /run/munge/munged.pid || runuser -u munge -- munged
    running /run/slurmctld.pid || slurmctld
    running /run/slurmd.pid || slurmd
    local state=""
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        case "$state" in
            idle|mixed|allocated) log "node $NODE is $state"; return ;;
            down*|drain*) scontrol update NodeName="$NODE" State=RESUME || true ;;
        esac
        sleep 1
    done
    log "node $NODE did not become idle (state: '${state}'); see $LOGDIR/slurmctld.log and slurmd.log"
    exit 1
}

stop_daemons() {
    for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
        if running "$pidfile"; then
            kill "$(cat "$pidfile")"
        fi
    done
}

case "${1:-}" in
    start) install_packages; write_config; start_daemons ;;
    stop) stop_daemons ;;
    status) sinfo; echo "job-completion log: $JOBCOMP" ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
