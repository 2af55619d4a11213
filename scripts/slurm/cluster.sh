#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests and for trying the
# Snakemake Slurm profile (profiles/slurm) without a site cluster.
#
#   scripts/slurm/cluster.sh install   apt-get the Debian packages (quick when present)
#   scripts/slurm/cluster.sh start     write the config for THIS machine, start the daemons
#   scripts/slurm/cluster.sh stop      stop exactly the daemons that `start` started
#   scripts/slurm/cluster.sh status    daemons and node state; exit 0 only when all run
#   scripts/slurm/cluster.sh env       print `export SLURM_CONF=...` for the client tools
#
# Everything lives in one state directory, ${REPROSEG_SLURM_DIR:-/tmp/reproseg-slurm}:
# slurm.conf, gres.conf, the munge key and socket, spool, logs, pid files and the
# two fake GPU device nodes. The one thing outside it is a symlink
# /etc/slurm/slurm.conf -> <state>/slurm.conf (see "Trap" at link_conf), made only
# when no other slurm.conf is there, and removed again by `stop`.
#
# Needs root (the daemons run as root, mknod needs CAP_MKNOD). Built for Debian's
# slurm 22.05 and munge 0.5; no systemd is used or needed.
#
# Environment:
#   REPROSEG_SLURM_DIR        state directory               [/tmp/reproseg-slurm]
#   REPROSEG_SLURMCTLD_PORT   slurmctld port                [6817]
#   REPROSEG_SLURMD_PORT      slurmd port                   [6818]
#   REPROSEG_SLURM_TIMEOUT    seconds to wait for the node  [60]
#   REPROSEG_SLURM_GPUS       number of fake GPUs           [2]
set -euo pipefail

STATE="${REPROSEG_SLURM_DIR:-/tmp/reproseg-slurm}"
CTLD_PORT="${REPROSEG_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${REPROSEG_SLURMD_PORT:-6818}"
TIMEOUT="${REPROSEG_SLURM_TIMEOUT:-60}"
NGPUS="${REPROSEG_SLURM_GPUS:-2}"
PARTITION="main"

CONF="$STATE/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf   # compiled into Debian's Slurm tools
RUN="$STATE/run"      # pid files and the munge socket
PIDS="$STATE/pids"    # the pids `start` recorded; `stop` reads only these
LOG="$STATE/log"
DEV="$STATE/dev"
MUNGE_SOCKET="$RUN/munge.socket"
DAEMONS="munged slurmctld slurmd"   # start order; stop goes in reverse

export SLURM_CONF="$CONF"

say() { printf '[slurm-cluster] %s\n' "$*"; }
die() { printf '[slurm-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# --- pid bookkeeping --------------------------------------------------------

# True while process $1 has a thread that is not a zombie. A daemon that has
# exited but was not yet reaped by whoever adopted it stays in /proc as a zombie
# for a while (about 2 s here); it holds no port or file any more.
alive() {
  local t st
  for t in /proc/"$1"/task/*; do
    st="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "$t/status" 2>/dev/null || true)"
    if [ -n "$st" ] && [ "$st" != Z ]; then return 0; fi
  done
  return 1
}

# The pid recorded for daemon $1, if that process is alive and still is that
# daemon (guards against a recycled pid after a reboot or a crash).
live_pid() {
  local name="$1" f="$PIDS/$1.pid" pid comm
  [ -f "$f" ] || return 1
  pid="$(cat "$f" 2>/dev/null || true)"
  case "$pid" in ''|*[!0-9]*) return 1 ;; esac
  alive "$pid" || return 1
  comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
  [ "$comm" = "$name" ] || return 1
  printf '%s\n' "$pid"
}

# Wait up to $2 seconds for daemon $1 to write its pid file, then record it.
record_pid() {
  local name="$1" wait_s="$2" src="$RUN/$1.pid" pid i=0
  while [ "$i" -lt $((wait_s * 10)) ]; do
    if [ -s "$src" ]; then
      pid="$(cat "$src")"
      if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
        printf '%s\n' "$pid" > "$PIDS/$name.pid"
        return 0
      fi
    fi
    sleep 0.1
    i=$((i + 1))
  done
  return 1
}

# ": <first fatal/error line of the daemon logs>", to name the cause in one line.
first_fatal() {
  local line
  line="$(grep -h -m1 -E 'fatal|Error:' "$LOG"/slurmctld.log "$LOG"/slurmd.log "$LOG"/munged.log 2>/dev/null | head -n 1 || true)"
  [ -z "$line" ] || printf ': %s' "$line"
}

show_logs() {
  local f
  for f in "$LOG"/munged.log "$LOG"/slurmctld.log "$LOG"/slurmd.log "$LOG"/*.out; do
    [ -s "$f" ] || continue
    printf '%s\n' "----- last lines of $f -----" >&2
    tail -n 15 "$f" >&2
  done
}

# Stop the daemons whose pids we recorded; never anything else. Each takes about
# 2 s to shut down, so all get SIGTERM at once and are then waited for together.
stop_daemons() {
  local name pid pids="" i
  for name in slurmd slurmctld munged; do
    if pid="$(live_pid "$name")"; then
      say "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids="$pids $pid"
    fi
  done
  for pid in $pids; do
    i=0
    while alive "$pid" && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if alive "$pid"; then
      say "pid $pid ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for name in slurmd slurmctld munged; do
    rm -f "$PIDS/$name.pid" "$RUN/$name.pid"
  done
  # Trap: a slurmctld/slurmd pid file left in /run (by a start that used the
  # Debian default paths) makes the next start or a package removal fail. Our
  # config keeps pid files in $RUN, but clear stale ones in /run too -- only
  # when the pid they name is dead.
  for name in slurmctld slurmd; do
    local f="/run/$name.pid"
    if [ -f "$f" ]; then
      pid="$(cat "$f" 2>/dev/null || true)"
      if [ -z "$pid" ] || ! alive "$pid"; then rm -f "$f"; fi
    fi
  done
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  unlink_conf
}

# Trap: the Slurm plugin's jobstep executor strips every SLURM_* variable,
# SLURM_CONF included, from the environment of the srun it runs inside each job,
# so srun falls back to the compiled-in path (/etc/slurm/slurm.conf) and, finding
# nothing, fails with "Could not establish a configuration source". The config
# must therefore be reachable at the default path: link it there.
link_conf() {
  local target
  if [ -L "$ETC_CONF" ]; then
    target="$(readlink "$ETC_CONF")"
    if [ "$target" = "$CONF" ]; then return 0; fi
    if [ -e "$target" ]; then
      die "$ETC_CONF already points to $target (another test cluster?); stop that one first"
    fi
    rm -f "$ETC_CONF"   # dangling link from a state dir that is gone
  elif [ -e "$ETC_CONF" ]; then
    die "$ETC_CONF exists and is not ours (a real Slurm installation?); not touching it"
  fi
  mkdir -p "$(dirname "$ETC_CONF")"
  ln -s "$CONF" "$ETC_CONF"
}

unlink_conf() {
  if [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$CONF" ]; then
    rm -f "$ETC_CONF"
  fi
}

node_state() {
  # timeout: sinfo waits 10 s (MessageTimeout) for a slurmctld that is not answering.
  timeout 5 sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null | head -n 1 || true
}

all_running() {
  local name
  for name in $DAEMONS; do live_pid "$name" >/dev/null || return 1; done
}

# --- subcommands ------------------------------------------------------------

cmd_install() {
  local missing="" c
  for c in slurmctld slurmd sinfo sbatch munged mknod; do
    command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
  done
  if [ -z "$missing" ]; then
    say "packages present ($(slurmctld -V 2>/dev/null || echo slurm), $(munged -V 2>&1 | head -n 1))"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "missing:$missing; installing needs root (apt-get)"
  command -v apt-get >/dev/null 2>&1 || die "missing:$missing; no apt-get on this machine"
  say "installing slurmctld slurmd slurm-client munge (missing:$missing)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  say "installed $(slurmctld -V)"
}

write_config() {
  local hw name cpus boards sockets cores threads mem real i gpu_range
  # Node line from what slurmd itself detects on this machine.
  hw="$(slurmd -C 2>/dev/null | head -n 1)" || die "slurmd -C failed"
  field() { printf '%s\n' "$hw" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  name="$(field NodeName)"; cpus="$(field CPUs)"; boards="$(field Boards)"
  sockets="$(field SocketsPerBoard)"; cores="$(field CoresPerSocket)"
  threads="$(field ThreadsPerCore)"; mem="$(field RealMemory)"
  if [ -z "$name" ] || [ -z "$cpus" ] || [ -z "$mem" ]; then
    die "cannot parse 'slurmd -C': $hw"
  fi
  # Trap: RealMemory must stay below what `slurmd -C` reports (a node that
  # registers with less memory than configured is drained); 90% works.
  real=$((mem * 90 / 100))

  # Trap: a gpu GRES without File= is dropped and the node drains, and plain
  # files are refused as devices. Character devices with /dev/null's numbers
  # (1,3) work: jobs then get CUDA_VISIBLE_DEVICES and SLURM_GPUS_ON_NODE.
  i=0
  while [ "$i" -lt "$NGPUS" ]; do
    if [ ! -c "$DEV/gpu$i" ]; then
      rm -f "$DEV/gpu$i"
      mknod -m 666 "$DEV/gpu$i" c 1 3 2>/dev/null \
        || die "mknod $DEV/gpu$i failed (no CAP_MKNOD here?): cannot make fake GPUs"
    fi
    i=$((i + 1))
  done
  gpu_range="0-$((NGPUS - 1))"
  [ "$NGPUS" -gt 1 ] || gpu_range="0"

  cat > "$STATE/gres.conf" <<EOF
# Written by scripts/slurm/cluster.sh. Fake GPUs: character devices 1,3.
NodeName=$name Name=gpu File=$DEV/gpu[$gpu_range]
EOF

  cat > "$CONF" <<EOF
# Written by scripts/slurm/cluster.sh for $name; rewritten on every start.
ClusterName=reproseg
SlurmctldHost=$name(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# Daemons run as root: no slurm user, spool or log permissions to set up.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Our own munged on our own socket, so a system munged (if any) is left alone.
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
# Pid files in the state dir, not /run (see the stale-pid-file trap in stop).
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd/cgroup delegation here: track processes through /proc.
ProctrackType=proctrack/linuxproc
# Trap: with task/none srun complains about cpu binding (the plugin uses
# srun --cpu-bind=q).
TaskPlugin=task/affinity
# Memory limits are enforced by polling step RSS every second and killing a
# step that exceeds its job's --mem (no cgroups needed). This is what makes an
# over-memory attempt really fail, so a retry with more memory is meaningful.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Trap: without a default each job takes all of the node's memory, and jobs
# run one at a time.
DefMemPerCPU=1000
GresTypes=gpu
MailProg=/bin/true
# No slurmdbd. Trap: AccountingStorageTRES=gres/gpu needs slurmdbd (slurmctld
# stops with a fatal error otherwise), so it is not set.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
# Finished jobs stay visible to squeue/scontrol for an hour. Trap: without
# sacct the Snakemake plugin must poll with squeue, and it falls back to sacct
# unless MinJobAge >= 3 x slurm-init-seconds-before-status-checks.
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
SchedulerType=sched/backfill
NodeName=$name NodeAddr=127.0.0.1 CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$real Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$name Default=YES MaxTime=INFINITE State=UP
EOF
  say "wrote $CONF (node $name: $cpus CPUs, RealMemory=$real MB of $mem, $NGPUS fake GPUs)"
}

cmd_start() {
  local c name state i f
  for c in slurmctld slurmd sinfo munged munge unmunge mknod; do
    command -v "$c" >/dev/null 2>&1 \
      || die "'$c' not found: run 'scripts/slurm/cluster.sh install' first"
  done
  [ "$(id -u)" -eq 0 ] || die "the daemons must run as root here (uid $(id -u)); cannot start"

  if all_running; then
    link_conf
    state="$(node_state)"
    say "already running (munged $(live_pid munged), slurmctld $(live_pid slurmctld), slurmd $(live_pid slurmd)); node: ${state:-unknown}"
    say "export SLURM_CONF=$CONF"
    return 0
  fi
  # Half-running from an earlier crash: clear it so we start from a known state.
  stop_daemons >/dev/null

  mkdir -p "$STATE" "$RUN" "$PIDS" "$LOG" "$DEV" "$STATE/spool/ctld" "$STATE/spool/d"
  # munged checks the permissions of the directories that hold its key and
  # socket (no group/world write), so set them explicitly.
  chmod 0755 "$STATE" "$RUN" "$LOG" "$DEV"
  chmod 0700 "$PIDS" "$STATE/spool/ctld" "$STATE/spool/d"

  # Fresh logs for this start (the last start's are kept as *.prev), so that an
  # error message names this start's failure, not an old one.
  for f in "$LOG"/munged.log "$LOG"/slurmctld.log "$LOG"/slurmd.log "$LOG"/*.out; do
    if [ -f "$f" ]; then mv -f "$f" "$f.prev"; fi
  done

  write_config
  link_conf

  # munge key: 1 KiB random, owned by the user munged runs as, mode 0400.
  if [ ! -s "$STATE/munge.key" ]; then
    (umask 077; head -c 1024 /dev/urandom > "$STATE/munge.key")
  fi
  chmod 0400 "$STATE/munge.key"

  # Daemons get no stdin and their own log: a daemon that kept the caller's
  # stdout open would hang a caller that reads it to the end (e.g. pytest).
  say "starting munged"
  munged --socket="$MUNGE_SOCKET" --key-file="$STATE/munge.key" \
    --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" \
    --seed-file="$STATE/munged.seed" </dev/null >>"$LOG/munged.out" 2>&1 \
    || { show_logs; stop_daemons; die "munged does not start here$(first_fatal)"; }
  record_pid munged 5 || { show_logs; stop_daemons; die "munged did not write its pid file"; }
  munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 \
    || { show_logs; stop_daemons; die "munge credential round trip failed"; }

  say "starting slurmctld"
  slurmctld -f "$CONF" </dev/null >>"$LOG/slurmctld.out" 2>&1 \
    || { show_logs; stop_daemons; die "slurmctld does not start here$(first_fatal)"; }
  record_pid slurmctld 10 || { show_logs; stop_daemons; die "slurmctld exited right after starting$(first_fatal)"; }

  say "starting slurmd"
  slurmd -f "$CONF" </dev/null >>"$LOG/slurmd.out" 2>&1 \
    || { show_logs; stop_daemons; die "slurmd does not start here$(first_fatal)"; }
  record_pid slurmd 10 || { show_logs; stop_daemons; die "slurmd exited right after starting$(first_fatal)"; }

  # The node registers within a few seconds; submit only once it is idle.
  i=0
  state=""
  while [ "$i" -lt "$TIMEOUT" ]; do
    for name in $DAEMONS; do
      live_pid "$name" >/dev/null \
        || { show_logs; stop_daemons; die "$name died while the node was registering$(first_fatal)"; }
    done
    state="$(node_state)"
    case "$state" in
      idle|mixed|allocated) break ;;
      *drain*|*down*)
        # A fresh start can show the saved state of an earlier run for a moment.
        if [ "$i" -ge 5 ]; then break; fi ;;
    esac
    sleep 1
    i=$((i + 1))
  done
  case "$state" in
    idle|mixed|allocated) ;;
    *)
      scontrol show node >&2 2>/dev/null || true
      show_logs
      stop_daemons
      die "node is '${state:-not listed}' after ${i}s, not idle; the daemons cannot run a job here$(first_fatal)"
      ;;
  esac
  say "cluster up in ${i}s: node $(sinfo -h -N -o '%N %T %G' | head -n 1)"
  say "export SLURM_CONF=$CONF"
}

cmd_stop() {
  if [ ! -d "$STATE" ]; then say "nothing to stop ($STATE does not exist)"; return 0; fi
  stop_daemons
  say "stopped"
}

cmd_status() {
  local name pid rc=0
  for name in $DAEMONS; do
    if pid="$(live_pid "$name")"; then
      say "$name running (pid $pid)"
    else
      say "$name not running"
      rc=3
    fi
  done
  if [ "$rc" -eq 0 ]; then
    sinfo -N -o '%N %P %T %c %m %G' || rc=3
    say "export SLURM_CONF=$CONF"
  fi
  return "$rc"
}

case "${1:-}" in
  install) cmd_install ;;
  start)   cmd_start ;;
  stop)    cmd_stop ;;
  status)  cmd_status ;;
  env)     printf 'export SLURM_CONF=%s\n' "$CONF" ;;
  *)
    echo "usage: $0 {install|start|stop|status|env}" >&2
    exit 2
    ;;
esac
