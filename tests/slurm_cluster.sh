#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests of launch/slurm/*.sbatch (tests/test_slurm.py).
#
#   bash tests/slurm_cluster.sh up       # install slurm-wlm + munge if missing (apt-get, root), start the daemons
#   bash tests/slurm_cluster.sh status   # exit 0 when the cluster answers and its node is usable
#   bash tests/slurm_cluster.sh down     # cancel every job, stop the daemons by pid
#
# `up` and `down` are idempotent. Everything lives in $TIMEMAE_SLURM_DIR (default /tmp/timemae-slurm): slurm.conf,
# state and spool folders, logs, pid files, munge's socket. Clients find the cluster through SLURM_CONF:
#   export SLURM_CONF=/tmp/timemae-slurm/slurm.conf
# Nothing under /etc is changed except a munge key, created only when the package left none.
# The daemons run as root (SlurmUser=root, SlurmdUser=root); munged runs as the munge user, which owns the key.
# No accounting, no cgroups: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, SelectType=select/cons_tres.
# Exit codes: 0 ok, 1 failure (logs printed), 3 this machine cannot run it (not root, or no apt-get for the install).
set -euo pipefail

STATE=${TIMEMAE_SLURM_DIR:-/tmp/timemae-slurm}
CONF=$STATE/slurm.conf
MUNGE_DIR=$STATE/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
export SLURM_CONF=$CONF

log() { echo "slurm_cluster: $*" >&2; }

pid_alive() {  # pid_alive FILE NAME: the pid in FILE is a running NAME (not a recycled pid of something else)
  [ -f "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]
}

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "needs root (apt-get install, daemons as root); run as root or skip the SLURM tests"
    exit 3
  fi
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || { log "slurm is not installed and there is no apt-get to install it"; exit 3; }
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # The packages' install scripts would start munge/slurm services of their own, which `down` (by pid) would not
  # stop; a policy-rc.d answering 101 ("action forbidden") keeps them from starting.
  local policy=/usr/sbin/policy-rc.d own_policy=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
  fi
  { apt-get update -q && apt-get install -y -q --no-install-recommends slurm-wlm munge; } >"$STATE/apt.log" 2>&1 \
    || rc=$?
  [ "$own_policy" = 1 ] && rm -f "$policy"
  [ "$rc" = 0 ] || { tail -n 40 "$STATE/apt.log" >&2; exit 1; }
}

free_port() {  # free_port START [EXCLUDE]: the first port from START on that nothing listens on
  local port=$1
  while [ "$port" -lt $(($1 + 500)) ]; do
    if [ "$port" != "${2:-}" ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
    port=$((port + 1))
  done
  log "no free port in $1-$(($1 + 499))"
  exit 1
}

munge_key() {
  local key=/etc/munge/munge.key
  if [ ! -s "$key" ]; then
    log "creating the munge key $key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$key" --force
    else
      dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
    fi
  fi
  chown munge:munge /etc/munge "$key"
  chmod 0700 /etc/munge
  chmod 0400 "$key"
}

start_munge() {
  # munged wants its socket folder owned by itself and searchable by everyone (clients connect as any user).
  mkdir -p "$MUNGE_DIR"
  chown munge:munge "$MUNGE_DIR"
  chmod 0755 "$MUNGE_DIR"
  runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_DIR/munged.pid" \
    --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
  munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET" >/dev/null \
    || { log "munge does not work"; cat "$MUNGE_DIR/munged.log" >&2; exit 1; }
}

write_conf() {
  local host node ctld_port slurmd_port
  host=$(hostname -s)
  getent hosts "$host" >/dev/null \
    || { log "the host name $host does not resolve (the job's ranks connect to it); add it to /etc/hosts"; exit 1; }
  # NodeName=<host> CPUs=... Boards=... SocketsPerBoard=... CoresPerSocket=... ThreadsPerCore=... RealMemory=...
  node=$(slurmd -C | head -n 1)
  case "$node" in NodeName="$host"\ *) ;; *) log "slurmd -C says '$node', expected NodeName=$host"; exit 1 ;; esac
  # The tests run two tasks side by side; a one-CPU machine is declared with two (config_overrides below lets
  # slurmd accept a configuration larger than the hardware).
  case "$node" in *" CPUs=1 "*)
    node="NodeName=$host CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 ${node##* }" ;;
  esac
  ctld_port=$(free_port 6817)
  slurmd_port=$(free_port $((ctld_port + 1)) "$ctld_port")
  cat >"$CONF" <<EOF
# Written by tests/slurm_cluster.sh: a one-node test cluster, daemons as root, no accounting.
ClusterName=timemae
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also holds back a requeued job before it may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SelectType=select/cons_tres
# Whole logical CPUs, not cores: two one-CPU tasks fit on one core with two hardware threads.
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=5
InactiveLimit=0
$node State=UNKNOWN NodeAddr=127.0.0.1
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

node_state() {
  sinfo -h -N -n "$(hostname -s)" -o %T 2>/dev/null | head -n 1
}

is_up() {
  pid_alive "$MUNGE_DIR/munged.pid" munged && pid_alive "$STATE/slurmctld.pid" slurmctld \
    && pid_alive "$STATE/slurmd.pid" slurmd \
    && scontrol ping >/dev/null 2>&1 && case "$(node_state)" in idle* | mix* | alloc*) true ;; *) false ;; esac
}

show_logs() {
  for f in "$STATE/slurmctld.log" "$STATE/slurmd.log" "$MUNGE_DIR/munged.log"; do
    [ -f "$f" ] && { echo "== $f" >&2; tail -n 30 "$f" >&2; }
  done
}

stop_pid() {  # stop_pid FILE NAME: TERM the pid in FILE, KILL it after 20 s
  local file=$1 pid
  pid_alive "$file" "$2" || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$2 ($pid) ignored SIGTERM; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

up() {
  need_root
  mkdir -p "$STATE"
  if [ -f "$CONF" ] && is_up; then
    log "already up (SLURM_CONF=$CONF)"
    return
  fi
  down_daemons
  install_packages
  rm -rf "$STATE/slurmctld" "$STATE/slurmd" "$STATE"/*.log
  mkdir -p "$STATE/slurmctld" "$STATE/slurmd"
  munge_key
  start_munge
  write_conf
  slurmctld -f "$CONF" || { show_logs; exit 1; }
  slurmd -f "$CONF" || { show_logs; exit 1; }
  for _ in $(seq 120); do
    is_up && { log "up: node $(hostname -s) $(node_state); export SLURM_CONF=$CONF"; return; }
    sleep 0.5
  done
  log "the cluster did not come up within 60 s (node state: $(node_state))"
  show_logs
  exit 1
}

cancel_jobs() {
  pid_alive "$STATE/slurmctld.pid" slurmctld || return 0
  local jobs
  jobs=$(squeue -h -o %A 2>/dev/null || true)
  [ -n "$jobs" ] || return 0
  # shellcheck disable=SC2086 # one job id per word
  scancel $jobs 2>/dev/null || true
  for _ in $(seq 300); do
    [ -z "$(squeue -h -o %A 2>/dev/null || true)" ] && return 0
    sleep 0.1
  done
  log "jobs still listed after scancel: $(squeue -h -o '%A %T' | tr '\n' ' ')"
}

stepds() {  # pids of job-step daemons (slurmd starts one per job step; they end with their step)
  { ps -C slurmstepd -o pid= 2>/dev/null || true; } | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'
}

down_daemons() {
  cancel_jobs
  for _ in $(seq 150); do
    [ -z "$(stepds)" ] && break
    sleep 0.1
  done
  stop_pid "$STATE/slurmd.pid" slurmd
  stop_pid "$STATE/slurmctld.pid" slurmctld
  stop_pid "$MUNGE_DIR/munged.pid" munged
}

down() {
  [ -d "$STATE" ] || { log "down (nothing was up)"; return; }
  need_root
  down_daemons
  log "down"
}

status() {
  if [ -f "$CONF" ] && is_up; then
    echo "up: SLURM_CONF=$CONF"
    sinfo -N -o "%N %T %c %m"
    squeue
    return 0
  fi
  echo "down"
  local name file
  for name in munged slurmctld slurmd; do
    file=$STATE/$name.pid
    [ "$name" = munged ] && file=$MUNGE_DIR/munged.pid
    pid_alive "$file" "$name" && echo "  $name still running (pid $(cat "$file"))"
  done
  [ -n "$(stepds)" ] && echo "  slurmstepd still running (pids $(stepds))"
  return 1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: bash tests/slurm_cluster.sh up|down|status" >&2; exit 2 ;;
esac
