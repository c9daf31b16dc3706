#!/usr/bin/env bash
# Install and start a real single-node SLURM cluster on this machine (Debian 12, as root).
#
#   .ci/slurm-up.sh [STATE_DIR]      default STATE_DIR: /tmp/msimaging-slurm
#
# What CI's SLURM test (tests/workflow/test_slurm.py) runs against: Debian's slurm-wlm (22.05) and
# munge on localhost, one node with this machine's CPUs and memory, one default partition
# "msimaging", no accounting database (snakemake-executor-plugin-slurm then polls with squeue;
# MinJobAge keeps finished jobs visible to squeue long enough). Daemons' state, spool, logs and
# pid files go to STATE_DIR; .ci/slurm-down.sh STATE_DIR stops them by those pid files.
# slurm.conf must sit at /etc/slurm/slurm.conf (with a config elsewhere and only SLURM_CONF set,
# srun inside a batch job fails with "DNS SRV lookup failed"); an existing slurm.conf that this
# script did not write is never replaced.
#
# Prints "partition=<name>" on success. Exit status 0 when the node is idle and a test job ran.
set -euo pipefail

STATE_DIR=${1:-/tmp/msimaging-slurm}
PARTITION=msimaging
CONF=/etc/slurm/slurm.conf
MARK="# written by msimaging .ci/slurm-up.sh"

say() { echo "slurm-up: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

# 1. Packages (about 10 s with fresh package lists).
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || die "slurm-wlm/munge missing and no apt-get to install them"
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

mkdir -p "$STATE_DIR"/{state,spool,log}
chmod 755 "$STATE_DIR"

# 2. munge: a key, its run folder, the daemon as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE_DIR/munged.pid" 2>/dev/null || true
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null || die "munge does not work"

# 3. slurm.conf for one node: this machine's CPUs, its memory less 512 MB for the system, but at
# least 16 GB. SLURM only books memory here (no cgroup enforcement, task/none), so a small CI
# machine can still schedule a subject job that asks for what a cluster node would give it;
# SlurmdParameters=config_overrides keeps slurmd from draining a node whose RAM is below that.
HOST=$(hostname -s)
# nproc --all: plain nproc honours OMP_NUM_THREADS, which a caller may have set to 1. At least 2 CPUs
# (config_overrides accepts it), so the profile's 2-thread jobs can always be placed.
CPUS=$(nproc --all)
[ "$CPUS" -ge 2 ] || CPUS=2
MEM_MB=$(awk '/MemTotal/ {m = int($2 / 1024 - 512); if (m < 16384) m = 16384; print m}' /proc/meminfo)
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script: not replacing a site's configuration"
fi
mkdir -p /etc/slurm
cat > "$CONF" <<EOF
$MARK ($(date -u +%Y-%m-%dT%H:%M:%SZ))
ClusterName=msimaging-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdParameters=config_overrides
# No accounting database: the executor plugin polls squeue; keep finished jobs visible 10 min.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
SchedulerType=sched/backfill
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# 4. Daemons: controller, then node daemon (each writes its pid file in STATE_DIR).
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! running "$STATE_DIR/slurmctld.pid"; then
    say "starting slurmctld"
    /usr/sbin/slurmctld -i
fi
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld did not come up (see $STATE_DIR/log/slurmctld.log)"
if ! running "$STATE_DIR/slurmd.pid"; then
    say "starting slurmd"
    /usr/sbin/slurmd
fi

# 5. Wait for the node to be idle, then run one job through sbatch/srun.
state=""
for i in $(seq 150); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)
    case "$state" in
        idle|mixed|allocated) break ;;
        down*|drain*) [ "$i" = 25 ] && scontrol update NodeName="$HOST" State=RESUME || true ;;
    esac
    sleep 0.2
done
case "$state" in idle|mixed|allocated) ;; *) die "node $HOST is '$state' (see $STATE_DIR/log/slurmd.log)";; esac
out=$(srun -p "$PARTITION" -N1 -n1 --mem=100 -t 1 hostname 2>&1) || die "srun test job failed: $out"
say "cluster up: node $HOST ($CPUS CPUs, $MEM_MB MB), partition $PARTITION; state in $STATE_DIR"
echo "partition=$PARTITION"
