#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying
# deploy/slurm/train.sbatch: munged + slurmctld + slurmd, run as root.
#
#   deploy/slurm/local_cluster.sh start    # idempotent; prints `export SLURM_CONF=...`
#   deploy/slurm/local_cluster.sh status   # exit 0 when slurmctld and slurmd run
#   deploy/slurm/local_cluster.sh stop     # cancels jobs, stops what `start` started
#
# Needs Debian's slurm-wlm, munge (and openmpi-bin for the mpirun tests):
#   apt-get install -y slurm-wlm munge openmpi-bin
# Everything but /run/munge lives in $SLURM_LOCAL_DIR (default /tmp/jaxlm-slurm):
# slurm.conf, state, spool, logs and pid files. Clients (srun, sbatch, sinfo)
# find the cluster through SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf.
set -euo pipefail

export PATH=$PATH:/usr/sbin:/sbin  # daemons and runuser, also from a non-login shell
DIR=${SLURM_LOCAL_DIR:-/tmp/jaxlm-slurm}
export SLURM_CONF=$DIR/slurm.conf
NODE=$(hostname -s)
MUNGE_PID=/run/munge/munged.pid

die() { echo "local_cluster: $*" >&2; exit 1; }

alive() {  # alive PIDFILE: the pid in it names a running process
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pid() {  # stop_pid PIDFILE NAME: TERM, then KILL after 10 s
  local pid
  alive "$1" || { rm -f "$1"; return 0; }
  pid=$(cat "$1")
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" && echo "local_cluster: $2 killed"
  rm -f "$1"
  echo "local_cluster: $2 stopped"
}

write_conf() {
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  # proctrack/linuxproc + task/none: no cgroups (containers and CI VMs rarely
  # delegate them). cred_expire=10: a requeued job may start again after 10 s
  # instead of the default 120. sched_interval=2: a pending job (a requeued one
  # whose begin time passed) starts within seconds, not the default 60.
  # OverSubscribe=FORCE:4: a 2-task job fits a 2-core machine with other jobs.
  cat > "$SLURM_CONF" <<EOF
ClusterName=jaxlm-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

start_munge() {
  mkdir -p /run/munge
  chown munge:munge /run/munge
  chmod 0755 /run/munge
  if alive "$MUNGE_PID"; then return 0; fi  # a system munged is used, never stopped
  [[ -s /etc/munge/munge.key ]] || runuser -u munge -- /usr/sbin/mungekey --create
  runuser -u munge -- /usr/sbin/munged
  echo yes > "$DIR/munged.ours"  # `stop` stops munged only when `start` started it
  for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "munged does not answer (see /var/log/munge/munged.log)"
}

wait_idle() {
  local state=''
  for _ in $(seq 300); do  # 30 s
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    [[ $state == idle || $state == mixed || $state == allocated ]] && return 0  # no "*": responding
    sleep 0.1
  done
  tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
  die "node $NODE not idle after 30 s (state: '${state:-none}'); logs above"
}

start() {
  [[ $(id -u) == 0 ]] || die "must run as root (slurmd and munged need it)"
  for bin in munged slurmctld slurmd sinfo; do
    command -v $bin >/dev/null || [[ -x /usr/sbin/$bin ]] || \
      die "$bin not found: apt-get install -y slurm-wlm munge"
  done
  getent hosts "$NODE" >/dev/null || \
    die "host name $NODE does not resolve; JAX reaches the first task's node by name (add it to /etc/hosts)"
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
    wait_idle
    echo "local_cluster: already running"; echo "export SLURM_CONF=$SLURM_CONF"; return 0
  fi
  stop_daemons  # a half-started cluster starts again from scratch
  write_conf
  start_munge
  slurmctld -c || die "slurmctld did not start; see $DIR/log/slurmctld.log"  # -c: no old jobs
  slurmd || die "slurmd did not start; see $DIR/log/slurmd.log"
  wait_idle
  echo "local_cluster: running (node $NODE, $(nproc) CPUs, logs in $DIR/log)"
  echo "export SLURM_CONF=$SLURM_CONF"
}

stop_daemons() {
  if alive "$DIR/slurmctld.pid"; then
    # Jobs' processes outlive slurmd (slurmstepd keeps them): cancel them first.
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    [[ -z $jobs ]] || scancel $jobs 2>/dev/null || true
    for _ in $(seq 100); do [[ -z $(squeue -h -t R,CG -o %i 2>/dev/null) ]] && break; sleep 0.1; done
  fi
  stop_pid "$DIR/slurmd.pid" slurmd
  stop_pid "$DIR/slurmctld.pid" slurmctld
}

stop() {
  [[ -d $DIR ]] || { echo "local_cluster: not running"; return 0; }
  stop_daemons
  if [[ -f $DIR/munged.ours ]]; then
    stop_pid "$MUNGE_PID" munged
    rm -f "$DIR/munged.ours"
  fi
}

status() {
  local code=0
  for d in slurmctld slurmd; do
    if alive "$DIR/$d.pid"; then echo "$d: running (pid $(cat "$DIR/$d.pid"))"
    else echo "$d: stopped"; code=3; fi
  done
  alive "$MUNGE_PID" && echo "munged: running (pid $(cat $MUNGE_PID))" || echo "munged: stopped"
  [[ $code == 0 ]] && sinfo
  return $code
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status   (state in \$SLURM_LOCAL_DIR, default /tmp/jaxlm-slurm)" >&2
     exit 2 ;;
esac
