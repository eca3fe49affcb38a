#!/usr/bin/env bash
# A REAL single-node SLURM cluster on localhost (Debian slurm-wlm + munge), for `make test-cluster`,
# CI and trying the SLURM launcher by hand. Needs root (apt, /etc/slurm, daemons).
#
#   bash scripts/slurm_cluster.sh start    # install if missing, configure, start, wait until idle
#   bash scripts/slurm_cluster.sh status   # exit 0 when the node is up (idle/mixed/allocated)
#   bash scripts/slurm_cluster.sh stop     # cancel jobs, stop the daemons it started, clean up
#
# `start` is idempotent: a cluster it already started with this config is left running (one started
# with an older config is restarted). One node named after
# `hostname -s` with the CPUs/memory `slurmd -C` detects, partition `debug` (default, no time
# limit). No systemd (containers have none) and no cgroups: the daemons are started directly,
# with proctrack/linuxproc and task/none. No accounting database: `sacct` does not work, so
# submitit sees job states as UNKNOWN and relies on its result files (it only warns).
#
# An /etc/slurm/slurm.conf this script did not write (no header below) belongs to a real cluster:
# `start` refuses to touch it unless DROPENS_SLURM_FORCE=1, and then backs it up and `stop`
# restores it. Logs: /var/log/slurm/dropens-*.log (kept after `stop`).
# DROPENS_SLURM_TIMEOUT: seconds to wait for the node to become idle (default 60).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

HEADER="# dropens-managed: written by scripts/slurm_cluster.sh (removed by 'slurm_cluster.sh stop')"
CONF=/etc/slurm/slurm.conf
BACKUP=/etc/slurm/slurm.conf.dropens-backup
RUN=/run/dropens-slurm        # pid files + the record of what `start` started
SPOOL=/var/spool/slurm-dropens
LOGS=/var/log/slurm
CTLD_LOG=$LOGS/dropens-slurmctld.log
SLURMD_LOG=$LOGS/dropens-slurmd.log
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
TIMEOUT=${DROPENS_SLURM_TIMEOUT:-60}
NODE=$(hostname -s 2>/dev/null || cat /proc/sys/kernel/hostname)
NODE=${NODE%%.*}

say() { echo "[slurm_cluster] $*"; }
die() { echo "[slurm_cluster] error: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "'$1' needs root (apt-get, /etc/slurm, daemons): run it with sudo"
}

ours() { [ -f "$CONF" ] && [ "$(head -n1 "$CONF")" = "$HEADER" ]; }

# The pid in file $1 if that process is alive and is the program $2 (a stale pid file, e.g. after
# a reboot, names some other process or none).
live_pid() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  echo "$pid"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

print_logs() {
  local f
  for f in "$CTLD_LOG" "$SLURMD_LOG" /var/log/munge/munged.log; do
    [ -f "$f" ] || continue
    echo "----- tail -n 40 $f" >&2
    tail -n 40 "$f" >&2
  done
  echo "----- sinfo -N -l" >&2
  sinfo -N -l >&2 2>&1 || true
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null ||
    missing+=(slurm-wlm)
  command -v munged >/dev/null && command -v munge >/dev/null || missing+=(munge)
  [ ${#missing[@]} = 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # The packages' postinst would start munge/slurmctld/slurmd through invoke-rc.d (and fail for
  # slurmctld, which has no config yet): forbid service starts for the install, as Docker does.
  local policy=/usr/sbin/policy-rc.d own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && own_policy=1
    trap "rm -f '$policy'" EXIT
  fi
  # A fresh image has no package lists: install straight away, else update once and retry.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  if [ -n "$own_policy" ]; then rm -f "$policy"; trap - EXIT; fi
}

start_munge() {
  if munge_ok; then
    say "munged already running"
    return 0
  fi
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge /var/log/munge
  chmod 0755 /run/munge
  chmod 0711 /var/lib/munge
  if [ ! -s "$MUNGE_KEY" ]; then
    say "creating $MUNGE_KEY"
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$MUNGE_KEY"
    else
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
  fi
  chown munge:munge "$MUNGE_KEY"
  chmod 0400 "$MUNGE_KEY"
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  # munged refuses to run as root when the key belongs to munge: run it as munge, like systemd does.
  runuser -u munge -- munged || { print_logs; die "munged failed to start"; }
  touch "$RUN/started-munged"
  local i
  for i in $(seq 50); do munge_ok && { say "started munged"; return 0; }; sleep 0.1; done
  print_logs
  die "munged started but 'munge -n | unmunge' fails"
}

# The slurm.conf of this cluster, on stdout.
conf_text() {
  local hw
  # e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105":
  # the exact topology slurmd will report, so the node is never drained for a config mismatch.
  hw=$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ //')
  [[ $hw == *CPUs=* && $hw == *RealMemory=* ]] || die "could not read the hardware from 'slurmd -C': $hw"
  cat <<EOF
$HEADER
# A single-node cluster on localhost for dropens' tests. No cgroups (containers), no accounting.
ClusterName=dropens
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s);
# the requeue test of tests/cluster requeues a task twice
AuthInfo=cred_expire=20
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MailProg=/bin/true
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

write_conf() {
  local text
  text=$(conf_text)
  mkdir -p /etc/slurm
  printf '%s\n' "$text" >"$CONF"
}

# Whether $CONF is what conf_text writes now (a cluster started by an older version is restarted).
conf_current() {
  local text
  text=$(conf_text) || return 1
  [ "$(cat "$CONF" 2>/dev/null)" = "$text" ]
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1; }

wait_idle() {
  local deadline=$((SECONDS + TIMEOUT)) state=""
  while [ $SECONDS -lt $deadline ]; do
    live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null || { print_logs; die "slurmctld died"; }
    live_pid "$RUN/slurmd.pid" slurmd >/dev/null || { print_logs; die "slurmd died"; }
    state=$(node_state) || true
    case "$state" in
      idle | mixed | allocated | completing) return 0 ;;
      down* | drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  print_logs
  die "node '$NODE' is not idle after ${TIMEOUT}s (state: '${state:-no answer from slurmctld}')"
}

cmd_start() {
  need_root start
  if [ -f "$CONF" ] && ! ours; then
    [ "${DROPENS_SLURM_FORCE:-0}" = 1 ] ||
      die "$CONF exists and was not written by this script (a real cluster's?); not touching it." \
          "Set DROPENS_SLURM_FORCE=1 to back it up to $BACKUP and replace it until 'stop'."
    [ ! -e "$BACKUP" ] || die "$BACKUP exists already: restore or remove it first"
    say "DROPENS_SLURM_FORCE=1: backing up $CONF to $BACKUP"
    mv "$CONF" "$BACKUP"
  fi
  mkdir -p "$RUN"
  install_packages
  start_munge
  local ctld slurmd
  ctld=$(live_pid "$RUN/slurmctld.pid" slurmctld) || ctld=""
  slurmd=$(live_pid "$RUN/slurmd.pid" slurmd) || slurmd=""
  if [ -n "$ctld" ] && [ -n "$slurmd" ] && ours && conf_current; then
    say "already running (slurmctld $ctld, slurmd $slurmd)"
    wait_idle
    sinfo
    return 0
  fi
  # A half-started cluster of ours: start afresh.
  [ -n "$slurmd" ] && stop_pid "$RUN/slurmd.pid" slurmd
  [ -n "$ctld" ] && stop_pid "$RUN/slurmctld.pid" slurmctld
  write_conf
  rm -rf "$SPOOL"
  mkdir -p "$SPOOL/ctld" "$SPOOL/d" "$LOGS"
  : >"$CTLD_LOG"
  : >"$SLURMD_LOG"
  say "starting slurmctld and slurmd (node $NODE, partition debug)"
  slurmctld || { print_logs; die "slurmctld failed to start"; }
  slurmd -N "$NODE" || { print_logs; die "slurmd failed to start"; }
  # The daemons fork; their pid files appear a moment later.
  local i
  for i in $(seq 50); do
    [ -s "$RUN/slurmctld.pid" ] && [ -s "$RUN/slurmd.pid" ] && break
    sleep 0.1
  done
  wait_idle
  sinfo
}

# Stop the process in pid file $1 if it is the program $2: TERM, then KILL after 10 s.
stop_pid() {
  local pid i
  pid=$(live_pid "$1" "$2") || { rm -f "$1"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { say "$2 ($pid) ignores SIGTERM: SIGKILL"; kill -KILL "$pid" || true; }
  rm -f "$1"
  say "stopped $2 ($pid)"
}

cmd_stop() {
  need_root stop
  if live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null && ours; then
    # Cancel what is still queued or running so that no job step outlives the cluster.
    scancel --full --quiet --partition=debug 2>/dev/null || true
    local i
    for i in $(seq 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  stop_pid "$RUN/slurmd.pid" slurmd
  stop_pid "$RUN/slurmctld.pid" slurmctld
  if [ -f "$RUN/started-munged" ]; then
    stop_pid "$MUNGE_PID" munged
  fi
  rm -rf "$RUN" "$SPOOL"
  if ours; then rm -f "$CONF"; fi
  if [ -f "$BACKUP" ] && [ ! -f "$CONF" ]; then
    say "restoring $CONF from $BACKUP"
    mv "$BACKUP" "$CONF"
  fi
  say "stopped"
}

cmd_status() {
  local ctld slurmd
  ctld=$(live_pid "$RUN/slurmctld.pid" slurmctld) || ctld="not running"
  slurmd=$(live_pid "$RUN/slurmd.pid" slurmd) || slurmd="not running"
  if ours; then echo "config:    $CONF (written by this script)"
  elif [ -f "$CONF" ]; then echo "config:    $CONF (NOT written by this script)"
  else echo "config:    none"; fi
  echo "munge:     $(munge_ok && echo ok || echo 'not running')"
  echo "slurmctld: $ctld"
  echo "slurmd:    $slurmd"
  local state
  state=$(node_state) || true
  echo "node:      $NODE ${state:-(no answer from slurmctld)}"
  case "$state" in idle | mixed | allocated | completing) return 0 ;; *) return 3 ;; esac
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
