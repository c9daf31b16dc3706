#!/usr/bin/env bash
# Stop the single-node SLURM cluster that .ci/slurm-up.sh started (by the pid files it left).
#
#   .ci/slurm-down.sh [STATE_DIR]    default STATE_DIR: /tmp/msimaging-slurm
#
# Cancels jobs still queued, stops slurmd, slurmctld and (if slurm-up started it) munged, and
# removes /etc/slurm/slurm.conf when slurm-up wrote it. Logs stay in STATE_DIR/log.
set -uo pipefail

STATE_DIR=${1:-/tmp/msimaging-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by msimaging .ci/slurm-up.sh"

say() { echo "slurm-down: $*" >&2; }

stop() {  # stop NAME PIDFILE: TERM, wait up to 10 s, then KILL
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
}

if [ -s "$STATE_DIR/slurmctld.pid" ] && command -v scancel >/dev/null; then
    scancel --partition=msimaging 2>/dev/null || true
fi
stop slurmd "$STATE_DIR/slurmd.pid"
stop slurmctld "$STATE_DIR/slurmctld.pid"
stop munged "$STATE_DIR/munged.pid"
if [ -e "$CONF" ] && grep -qF "$MARK" "$CONF"; then
    rm -f "$CONF"
fi
exit 0
