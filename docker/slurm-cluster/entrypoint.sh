#!/bin/bash
# Entrypoint of the ckpt Slurm cluster image (runs under docker-init: init: true).
#   entrypoint.sh slurmctld   the controller; also the login node users submit from
#   entrypoint.sh slurmd      a compute node (NodeName = the container's hostname)
# The munge key is created at start-up by the controller on the munge-key volume (never baked
# into the image) and copied by every container; munged runs beside the Slurm daemon, which
# runs in the foreground and logs to stderr (docker logs).
set -euo pipefail
role=${1:?usage: entrypoint.sh slurmctld|slurmd}
KEYDIR=/run/munge-key
log() { echo "entrypoint[$role]: $*" >&2; }

start_munge() {
    install -o munge -g munge -m 0400 "$KEYDIR/munge.key" /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    local i
    for i in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && return 0; sleep 0.1; done
    log "munged did not answer"; return 1
}

# the volumes shared by all nodes: home directories and checkpoint images
install -d -m 0755 /home
install -d -m 1777 /ckpt
for u in $(awk -F: '$3 >= 1000 && $3 < 60000 {print $1}' /etc/passwd); do
    [[ -d /home/$u ]] || install -d -o "$u" -g "$u" -m 0755 "/home/$u"
done

case $role in
slurmctld)
    if [[ ! -s $KEYDIR/munge.key ]]; then
        mungekey --create --keyfile "$KEYDIR/munge.key.tmp" --force
        chmod 0400 "$KEYDIR/munge.key.tmp"
        mv "$KEYDIR/munge.key.tmp" "$KEYDIR/munge.key"
        log "created a new munge key"
    fi
    start_munge
    install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld
    exec /usr/sbin/slurmctld -D -i
    ;;
slurmd)
    for i in $(seq 600); do [[ -s $KEYDIR/munge.key ]] && break; sleep 0.1; done
    [[ -s $KEYDIR/munge.key ]] || { log "no munge key from the controller after 60 s"; exit 1; }
    start_munge
    install -d -m 0755 /var/spool/slurmd
    exec /usr/sbin/slurmd -D -N "$(hostname)"
    ;;
*)
    exec "$@"
    ;;
esac
