#!/usr/bin/env bash
# shellcheck disable=SC2329  # functions run through `spawn` and traps, which shellcheck does not follow
# The compose deployment (docker/compose.yaml) for real on this machine: the Docker engine, the images,
# the stack up, and everything torn down again. hnr_assets_tests/ops/test_stack.py drives it (CI runs
# it through `make test`); docs/stack.md explains it.
#
#   scripts/stack.sh up       Debian packages when missing, a Docker engine (dockerd started here when
#                             none answers), the base images (stand-ins built with debootstrap when the
#                             registry images are absent), the wheelhouse, the hnr image, the stack up
#                             and healthy. Prints the settings of the stack (KEY=VALUE lines) last;
#                             ENGINE_PIDFILE is empty when the engine was running before.
#   scripts/stack.sh down     Stack, run containers, volumes and network removed; a dockerd started by
#                             `up` stopped by its PID, and the host's iptables rules, bridge and
#                             ip_forward put back as they were; fails if anything of the engine is left.
#                             Safe to repeat, after a failed `up`, and after a killed run: both `up` and
#                             `down` remove what a killed engine left (mounts, network namespaces, links,
#                             iptables rules, its stack), from the records in HNR_STACK_MARK_DIR.
#   scripts/stack.sh compose ARGS...   docker-compose with the stack's files and settings.
#   scripts/stack.sh wheelhouse        fill docker/wheelhouse only (see its README).
#   scripts/stack.sh clean    `down`, then the images and the wheelhouse removed (a cold start next time).
#
# Settings (environment):
#   HNR_STACK_DIR           state: dockerd's pidfile and log, the generated env file (default /tmp/hnr-stack)
#   HNR_STACK_MARK_DIR      what the script owns on the host, kept across killed runs: the host before its
#                           engine, and whether a stack of its own is up (default /var/lib/hnr-stack)
#   HNR_IMAGE               tag of the hnr image (default hnr:stack, so that hnr:latest is left alone)
#   HNR_DATASETS_HOST_DIR   dataset mirror mounted read-only as the hnr_datasets volume
#                           (default: HNR_DATASETS_DIR, else ../shared/datasets beside the checkout)
#   HNR_STACK_DAGSTER_PORT, HNR_STACK_MLFLOW_PORT   loopback ports of the UIs (default 3000, 5000)
#   HNR_DEBIAN_MIRROR       Debian mirror for debootstrap (default: the one apt uses)
#   HNR_STACK_PULL=1        pull missing base images from their registry instead of building stand-ins
#   HNR_WHEELHOUSE=0        build from the package indexes instead of docker/wheelhouse (needs internet
#                           inside the build)
#   PYTHON                  Python with pip for the wheelhouse (default .venv/bin/python, else python3)
#
# Caches kept between runs, each keyed by the content of its inputs: the stand-in base images (label
# org.hnr.standin), the wheelhouse (docker/wheelhouse/.inputs.sha256), and Docker's own layer cache of
# the hnr image. Nothing secret goes into an image: the generated Postgres password lives in
# $HNR_STACK_DIR/stack.env (mode 600) while the stack runs and is deleted by `down`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATH=$PATH:/usr/sbin:/sbin
STATE=${HNR_STACK_DIR:-/tmp/hnr-stack}
IMAGE=${HNR_IMAGE:-hnr:stack}
PROJECT=hnr
SOCKET=/var/run/docker.sock
WHEELHOUSE=$REPO/docker/wheelhouse
COMPOSE_FILES=(-f "$REPO/docker/compose.yaml" -f "$REPO/docker/compose.datasets.yaml")
# Names docker/compose.yaml and docker/dagster.yaml fix (the run launcher refers to them).
VOLUMES=(hnr_data hnr_datasets hnr_postgres_data hnr_mlflow_artifacts hnr_hf_cache)
NETWORK=hnr_network
# The label that marks a dockerd started by this script; its value is the daemon's pidfile.
ENGINE_LABEL=org.hnr.stack.pidfile
STANDIN_LABEL=org.hnr.standin
# What this script owns on the host, kept where a killed run cannot lose it (see "engine" below).
MARK_DIR=${HNR_STACK_MARK_DIR:-/var/lib/hnr-stack}
ENGINE_RECORD=$MARK_DIR/engine
STACK_RECORD=$MARK_DIR/stack
if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
export DOCKER_BUILDKIT=0 # the classic builder: BuildKit would fetch the `# syntax=` frontend

log() { printf 'stack: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
now() { date +%s; }

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "needs root for: $* (run as root, or with passwordless sudo)"
    fi
}

engine_up() { timeout 20 "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# --------------------------------------------------------------------------------------------- engine
#
# What this script owns on the host is recorded in $MARK_DIR, which outlives its processes (a test or a
# machine's processes killed): `engine` (the pidfile of the dockerd it started, and the host as it was
# before the first such engine) and `stack` (the stack's containers, volumes and network are this
# script's). A later `up` or `down` reads them, whatever HNR_STACK_DIR it runs with, to remove what a
# killed run left: a leftover stack, and the kernel state of a killed engine (mounts, network
# namespaces, bridges and veths, iptables rules).

# dockerd's default data and exec roots (an engine started here uses them); /var/run is /run.
DATA_ROOT=/var/lib/docker
EXEC_ROOT=$(readlink -f /var/run)/docker

# The pidfile of the dockerd that serves the socket, when this script started it (its label says so).
engine_pidfile() {
    local labels
    labels=$(timeout 60 "$DOCKER" info --format '{{range .Labels}}{{println .}}{{end}}' 2>/dev/null) || true
    local pidfile
    pidfile=$(sed -n "s|^$ENGINE_LABEL=||p" <<<"$labels" | head -n 1)
    # `docker info` can time out on a busy engine (a prune an interrupted `up` left running): then the
    # recorded pidfile, or this state's, if it names a live dockerd.
    if [[ -z $pidfile ]]; then
        local candidate
        for candidate in "$(record_get "$ENGINE_RECORD" pidfile)" "$STATE/dockerd.pid"; do
            if [[ -n $candidate && $(cat "/proc/$(cat "$candidate" 2>/dev/null)/comm" 2>/dev/null) == dockerd ]]; then
                pidfile=$candidate
                break
            fi
        done
    fi
    echo "$pidfile"
}

record_get() { sed -n "s|^$2=||p" "$1" 2>/dev/null | head -n 1; }

# The processes of a Docker engine, "PID NAME" a line: dockerd, docker-proxy, and the containerd and
# shims that dockerd runs (their command lines name its exec root or its `moby` namespace).
engine_processes() {
    local dir comm args
    for dir in /proc/[0-9]*; do
        comm=$(cat "$dir/comm" 2>/dev/null) || continue
        case $comm in
            dockerd | docker-proxy) ;;
            containerd | containerd-shim*)
                args=$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null) || continue
                [[ $args == *docker/containerd* || $args == *"-namespace moby"* ]] || continue
                ;;
            *) continue ;;
        esac
        echo "${dir#/proc/} $comm"
    done
}

# Mount points an engine made (containers' roots, volume binds, shm, network namespaces), deepest first.
engine_mounts() {
    awk -v data="$DATA_ROOT/" -v exec="$EXEC_ROOT/" \
        'index($5, data) == 1 || index($5, exec) == 1 { print $5 }' /proc/self/mountinfo | sort -ru
}

# Network links of an engine: veths on its bridges first, then the bridges (docker0, br-<network id>).
engine_links() {
    ip -o link show 2>/dev/null | sed -n 's/^[0-9]*: \(veth[^@:]*\)[@:].* master \(docker0\|br-[0-9a-f]\{12\}\) .*/\1/p'
    ip -o link show 2>/dev/null | sed -n 's/^[0-9]*: \(docker0\|br-[0-9a-f]\{12\}\)[:@].*/\1/p'
}

# iptables rules of an engine, as `TABLE RULE` lines (RULE as `iptables -S` prints it): its chains'
# definitions, the rules that jump to them or name its bridges, and the hairpin MASQUERADE of each
# published port (`-s IP/32 -d IP/32 ... --dport N -j MASQUERADE`, which names neither).
engine_iptables() {
    local table
    local tables
    tables=$(iptables_tables)
    for table in $tables; do
        as_root iptables -t "$table" -S 2>/dev/null |
            grep -E -- '^-N DOCKER|^-A DOCKER|-j DOCKER|docker0|br-[0-9a-f]{12}|^-A POSTROUTING -s ([0-9.]+)/32 -d \1/32 -p (tcp|udp) -m (tcp|udp) --dport [0-9]+ -j MASQUERADE$' |
            sed "s/^/$table /" || true
    done
}

# The iptables tables in use (with the nf_tables backend /proc/net/ip_tables_names stays empty).
iptables_tables() { as_root iptables-save 2>/dev/null | sed -n 's/^\*//p' || true; }

# Lines of `iptables-save` that name Docker (the figure docs/stack.md and the test compare).
iptables_docker_count() { as_root iptables-save 2>/dev/null | grep -ci docker || true; }

# Remove what a killed engine left in the kernel and in its exec root. Only when none of its processes
# runs (a running engine, or shims that still hold containers, own that state).
engine_leftovers_clean() {
    local procs mounts links rules mnt link file pid
    procs=$(engine_processes)
    if [[ -n $procs ]]; then
        log "engine processes run ($(tr '\n' ' ' <<<"$procs")): their mounts, links and rules are left to them"
        return 0
    fi
    mounts=$(engine_mounts)
    links=$(engine_links)
    rules=$(engine_iptables)
    if [[ -z $mounts$links$rules ]] && ! compgen -G "$EXEC_ROOT/netns/*" >/dev/null; then
        return 0
    fi
    log "left by a stopped or killed Docker engine: $(grep -c . <<<"$mounts") mounts, $(grep -c . <<<"$links") links, $(grep -c . <<<"$rules") iptables rules and chains: removing them"
    while read -r mnt; do
        [[ -n $mnt ]] || continue
        as_root umount "$mnt" 2>/dev/null || as_root umount -l "$mnt" || true
    done <<<"$mounts"
    for file in "$EXEC_ROOT"/netns/*; do
        if [[ -e $file ]] && ! mountpoint -q "$file"; then as_root rm -f "$file"; fi
    done
    while read -r link; do
        [[ -n $link ]] || continue
        as_root ip link delete "$link" 2>/dev/null || true
    done <<<"$links"
    iptables_remove
    # Pidfiles whose process is gone: with its PID reused, dockerd would refuse to start, or take an
    # unrelated process for its containerd.
    for file in "$EXEC_ROOT/containerd/containerd.pid:containerd" "/var/run/docker.pid:dockerd"; do
        pid=$(cat "${file%:*}" 2>/dev/null || true)
        if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) != "${file#*:}" ]]; then as_root rm -f "${file%:*}"; fi
    done
}

# Docker's iptables rules removed (those leading to its chains first), then its chains flushed and deleted.
iptables_remove() {
    local table rule chain
    while read -r table rule; do
        [[ -n $rule && $rule == "-A "* && $rule != "-A DOCKER"* ]] || continue
        # iptables -S prints each rule as the arguments that made it.
        eval "as_root iptables -t $table -D ${rule#-A }" 2>/dev/null || true
    done < <(engine_iptables)
    local tables
    tables=$(iptables_tables)
    for table in $tables; do
        for chain in $(as_root iptables -t "$table" -S 2>/dev/null | sed -n 's/^-N \(DOCKER[A-Z0-9-]*\)$/\1/p'); do
            as_root iptables -t "$table" -F "$chain" || true
        done
        for chain in $(as_root iptables -t "$table" -S 2>/dev/null | sed -n 's/^-N \(DOCKER[A-Z0-9-]*\)$/\1/p'); do
            as_root iptables -t "$table" -X "$chain" || true
        done
    done
}

engine_start() {
    mkdir -p "$STATE"
    if engine_up; then
        local owned
        owned=$(engine_pidfile)
        if [[ -n $owned ]]; then
            log "reusing the dockerd of an earlier stack run (pidfile $owned)"
        else
            log "using the Docker engine that already serves $SOCKET (it stays running)"
        fi
        return 0
    fi
    command -v dockerd >/dev/null 2>&1 || die "dockerd is missing (Debian package docker.io)"
    local procs
    procs=$(engine_processes | grep -E ' (dockerd|containerd)$' || true)
    [[ -z $procs ]] || die "no Docker engine answers on $SOCKET, but these run: $(tr '\n' ' ' <<<"$procs")(starting, or hung: stop them first)"
    engine_leftovers_clean
    local pidfile=$STATE/dockerd.pid
    if [[ -f $pidfile && $(cat "/proc/$(cat "$pidfile")/comm" 2>/dev/null) != dockerd ]]; then rm -f "$pidfile"; fi
    # The host as it was before the first engine of this script: kept from an engine that was killed
    # (its leftovers are gone now, but it changed ip_forward and the FORWARD policy), recorded otherwise.
    as_root mkdir -p "$MARK_DIR"
    local before
    if [[ -f $ENGINE_RECORD ]]; then
        before=$(grep -v '^pidfile=' "$ENGINE_RECORD")
        log "an engine of an earlier run was killed ($(record_get "$ENGINE_RECORD" pidfile)): the host state from before it is kept"
    else
        before=$(
            printf 'ip_forward=%s\n' "$(cat /proc/sys/net/ipv4/ip_forward)"
            printf 'forward_policy=%s\n' "$(as_root iptables -S FORWARD 2>/dev/null | sed -n 's/^-P FORWARD //p')"
            printf 'iptables_docker=%s\n' "$(iptables_docker_count)"
        )
    fi
    printf 'pidfile=%s\n%s\n' "$pidfile" "$before" | as_root tee "$ENGINE_RECORD.tmp" >/dev/null
    as_root mv "$ENGINE_RECORD.tmp" "$ENGINE_RECORD"
    printf '%s\n' "$before" >"$STATE/host-before"
    log "starting dockerd (log $STATE/dockerd.log)"
    # In its own session: a Ctrl-C at the terminal reaches the test, which tears down in order, and not
    # the engine underneath it.
    as_root setsid --fork dockerd --pidfile "$pidfile" --label "$ENGINE_LABEL=$pidfile" \
        >"$STATE/dockerd.log" 2>&1 </dev/null
    local started
    started=$(now)
    until engine_up; do
        if (($(now) - started > 120)); then
            tail -n 40 "$STATE/dockerd.log" >&2 || true
            die "dockerd did not answer on $SOCKET within 120 s"
        fi
        sleep 1
    done
    log "dockerd $(cat "$pidfile") is up ($("$DOCKER" version --format '{{.Server.Version}}'), $(($(now) - started)) s)"
}

# Stop the dockerd whose pidfile is $1 (SIGTERM, SIGKILL after 60 s), then undo what it did to the host.
engine_stop() {
    local pidfile=$1 pid
    pid=$(cat "$pidfile" 2>/dev/null || true)
    # Only a dockerd: the PID of a daemon that died may belong to another process by now.
    if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]]; then
        log "stopping dockerd $pid"
        as_root kill -TERM "$pid"
        local waited=0
        while kill -0 "$pid" 2>/dev/null && ((waited < 60)); do
            sleep 1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "dockerd $pid still runs after 60 s: SIGKILL"
            as_root kill -KILL "$pid" || true
            sleep 2
        fi
    fi
    # Its containerd and shims end with it; what is left of them after a SIGKILL was started by it.
    local waited=0 procs
    while procs=$(engine_processes) && [[ -n $procs ]] && ((waited < 20)); do
        sleep 1
        waited=$((waited + 1))
    done
    if [[ -n $procs ]]; then
        log "engine processes left after dockerd: $(tr '\n' ' ' <<<"$procs")(SIGKILL)"
        # shellcheck disable=SC2046
        as_root kill -KILL $(cut -d' ' -f1 <<<"$procs") 2>/dev/null || true
        sleep 1
    fi
    host_restore
}

# After the engine: its leftovers removed, and ip_forward and the FORWARD policy as they were before the
# first engine of this script; then the record goes. Called only when no engine runs.
host_restore() {
    engine_leftovers_clean
    local forward policy
    forward=$(record_get "$ENGINE_RECORD" ip_forward)
    policy=$(record_get "$ENGINE_RECORD" forward_policy)
    [[ -z $forward ]] || as_root sysctl -q -w "net.ipv4.ip_forward=$forward" >/dev/null || true
    [[ -z $policy ]] || as_root iptables -P FORWARD "$policy" || true
    as_root rm -f "$ENGINE_RECORD"
}

# What an engine left on the host, one line each (empty when nothing): processes, mounts, network
# namespaces, links, iptables rules beyond those before it ($1: its `iptables_docker` count).
host_leftovers() {
    local before=${1:-0} count
    engine_processes | sed 's/^/process /'
    engine_mounts | sed 's/^/mount /'
    compgen -G "$EXEC_ROOT/netns/*" | sed 's/^/netns file /' || true
    engine_links | sed 's/^/link /'
    count=$(iptables_docker_count)
    if ((count != before)); then
        echo "iptables: $count lines of iptables-save name Docker (before the engine: $before)"
        engine_iptables | sed 's/^/iptables -t /'
    fi
}

# ---------------------------------------------------------------------------------------- base images

debian_mirror() {
    if [[ -n ${HNR_DEBIAN_MIRROR:-} ]]; then
        echo "$HNR_DEBIAN_MIRROR"
        return
    fi
    local mirror
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n 1 | tr -d ' ')
    echo "${mirror:-http://deb.debian.org/debian}"
}

image_label() { "$DOCKER" image inspect --format "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null; }

# standin TAG SUITE PACKAGES ENTRYPOINT-FILE|- [DOCKERFILE-INSTRUCTION]...
# Build TAG from `debootstrap --variant=minbase SUITE` plus PACKAGES, unless TAG exists: a registry image
# under that tag is used as it is; a stand-in is rebuilt only when its inputs' hash changed.
standin() {
    local tag=$1 suite=$2 packages=$3 entrypoint=$4
    shift 4
    local mirror hash have
    mirror=$(debian_mirror)
    hash=$( {
        printf '%s\n' "$tag" "$suite" "$packages" "$mirror" "$@"
        [[ $entrypoint == - ]] || cat "$entrypoint"
    } | sha256sum | cut -c1-16)
    if "$DOCKER" image inspect "$tag" >/dev/null 2>&1; then
        have=$(image_label "$tag" "$STANDIN_LABEL")
        if [[ -z $have ]]; then
            log "base image $tag: present (not a stand-in), used as it is"
            return
        elif [[ $have == "$hash" ]]; then
            log "base image $tag: stand-in $hash cached"
            return
        fi
    fi
    if [[ ${HNR_STACK_PULL:-0} == 1 ]]; then
        log "base image $tag: pulling (HNR_STACK_PULL=1)"
        "$DOCKER" pull --quiet "$tag" >/dev/null
        return
    fi
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing (Debian package debootstrap)"
    local started root
    started=$(now)
    root=$(mktemp -d /var/tmp/hnr-standin.XXXXXX)
    chmod 755 "$root" # mktemp makes it 0700: the image's / and apt's _apt user need it open
    STANDIN_ROOT=$root
    log "base image $tag: stand-in from debootstrap $suite ($mirror) + $packages"
    if ! as_root debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$STATE/debootstrap-$suite.log" 2>&1; then
        tail -n 30 "$STATE/debootstrap-$suite.log" >&2
        die "debootstrap $suite failed (log $STATE/debootstrap-$suite.log)"
    fi
    # Packages are installed in the new root with its daemons kept from starting (policy-rc.d) and
    # PostgreSQL's default cluster not created (the entrypoint makes one in the data volume).
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$root/usr/sbin/policy-rc.d" >/dev/null
    as_root chmod 755 "$root/usr/sbin/policy-rc.d"
    local nocluster=$root/etc/postgresql-common/createcluster.d/hnr-stand-in.conf
    as_root mkdir -p "$(dirname "$nocluster")"
    printf 'create_main_cluster = false\n' | as_root tee "$nocluster" >/dev/null
    as_root mount -t proc proc "$root/proc"
    # shellcheck disable=SC2086
    if ! as_root chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $packages && apt-get clean" \
        >"$STATE/apt-$suite.log" 2>&1; then
        as_root umount "$root/proc" || true
        tail -n 30 "$STATE/apt-$suite.log" >&2
        die "installing $packages in the $suite root failed (log $STATE/apt-$suite.log)"
    fi
    as_root umount "$root/proc"
    as_root rm -rf "$root/usr/sbin/policy-rc.d" "$nocluster" "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin \
        "$root/var/log/"*.log "$root/etc/resolv.conf" "$root/etc/hostname"
    rmdir "$(dirname "$nocluster")" "$(dirname "$(dirname "$nocluster")")" 2>/dev/null || true
    if [[ $entrypoint != - ]]; then
        as_root install -m 755 "$entrypoint" "$root/usr/local/bin/docker-entrypoint.sh"
    fi
    # The root file system as one layer, then the image settings on top of it (`docker import --change`
    # refuses some, e.g. STOPSIGNAL; a Dockerfile on stdin takes them all).
    local rootfs=hnr-standin-rootfs:$hash
    as_root tar -C "$root" --numeric-owner -c . | "$DOCKER" import - "$rootfs" >/dev/null
    standin_cleanup
    printf '%s\n' "FROM $rootfs" "$@" "LABEL $STANDIN_LABEL=$hash" |
        "$DOCKER" build --quiet --tag "$tag" - >/dev/null
    "$DOCKER" image rm "$rootfs" >/dev/null
    log "base image $tag: stand-in $hash built in $(($(now) - started)) s"
}

# The debootstrap root being built, removed on every exit (the script's EXIT trap), mounts first.
STANDIN_ROOT=""
standin_cleanup() {
    local root=$STANDIN_ROOT
    STANDIN_ROOT=""
    [[ -n $root && -d $root ]] || return 0
    if mountpoint -q "$root/proc" 2>/dev/null; then as_root umount "$root/proc" || true; fi
    as_root rm -rf --one-file-system "$root"
}
WHEELHOUSE_WORK=""
trap 'wait "${JOBS[@]}" 2>/dev/null; standin_cleanup; [[ -z $WHEELHOUSE_WORK ]] || rm -rf "$WHEELHOUSE_WORK"' EXIT

# The two upstream images docker/Dockerfile and docker/compose.yaml name, where no registry answers
# (run through `spawn`, which shellcheck does not follow: hence SC2329 off at the top).
python_image() {
    standin python:3.11-slim-bookworm bookworm "python3 python3-venv python-is-python3" - \
        "ENV LANG=C.UTF-8" 'CMD ["python3"]'
}

postgres_image() {
    # bookworm ships PostgreSQL 15; trixie has postgresql-17.
    standin postgres:17-bookworm trixie "postgresql-17" "$REPO/docker/standins/postgres-entrypoint.sh" \
        "ENV LANG=C.UTF-8" "ENV PGDATA=/var/lib/postgresql/data" \
        "ENV PATH=/usr/lib/postgresql/17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        "VOLUME /var/lib/postgresql/data" "EXPOSE 5432" "STOPSIGNAL SIGINT" \
        'ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["postgres"]'
}

# A step in the background, with its own cleanup of a half-built stand-in; `join` waits for it. The
# script's EXIT trap waits for every such step, so none outlives the script (a Ctrl-C stops them too:
# they are in its process group).
JOBS=()
spawn() {
    (
        trap standin_cleanup EXIT
        "$@"
    ) &
    JOBS+=($!)
    LAST_JOB=$!
}
join() { wait "$1" || die "$2 failed"; }

# ----------------------------------------------------------------------------------------- wheelhouse

python_bin() {
    if [[ -n ${PYTHON:-} ]]; then
        echo "$PYTHON"
    elif [[ -x $REPO/.venv/bin/python ]]; then
        echo "$REPO/.venv/bin/python"
    else
        echo python3
    fi
}

# A Dockerfile ARG's default value (the wheelhouse holds what the image installs by default).
dockerfile_arg() { sed -n "s/^ARG $1=\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" "$REPO/docker/Dockerfile" | head -n 1; }

# docker/wheelhouse: every wheel docker/Dockerfile installs, fetched and built on this host with pip's
# own configuration (its indexes and find-links, where the CPU torch wheel lies), so that the build needs
# no network. Rebuilt when what it is made from changes.
wheelhouse() {
    local py torch models hash started
    py=$(python_bin)
    torch=$(dockerfile_arg TORCH_VERSION)
    models=$(dockerfile_arg MODEL_PKGS)
    [[ -n $torch ]] || die "no ARG TORCH_VERSION in docker/Dockerfile"
    local work=$REPO/docker/.wheelhouse.tmp
    WHEELHOUSE_WORK=$work
    rm -rf "$work"
    mkdir -p "$work/wheels"
    "$py" "$REPO/docker/pyproject_deps.py" --pyproject "$REPO/pyproject.toml" >"$work/requirements.txt"
    "$py" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' \
        "$REPO/pyproject.toml" >"$work/build-requirements.txt"
    hash=$( {
        "$py" -c 'import platform; print(platform.python_version_tuple()[:2], platform.machine())'
        echo "torch==$torch" "$models"
        cat "$work/requirements.txt" "$work/build-requirements.txt" "$REPO/docker/requirements-deploy.txt"
    } | sha256sum | cut -c1-16)
    if [[ -f $WHEELHOUSE/.inputs.sha256 && $(cat "$WHEELHOUSE/.inputs.sha256") == "$hash" ]]; then
        log "wheelhouse $hash cached ($(du -sh "$WHEELHOUSE" | cut -f1))"
        rm -rf "$work"
        return
    fi
    started=$(now)
    log "wheelhouse $hash: pip wheel with $py (torch==$torch)"
    # shellcheck disable=SC2086
    if ! {
        "$py" -m pip wheel --wheel-dir "$work/wheels" "torch==$torch" -r "$work/requirements.txt" \
            -r "$work/build-requirements.txt" &&
            "$py" -m pip wheel --no-deps --wheel-dir "$work/wheels" -r "$REPO/docker/requirements-deploy.txt" $models
    } >"$STATE/wheelhouse.log" 2>&1; then
        grep -v 'is ignored: it is neither a file nor a directory' "$STATE/wheelhouse.log" | tail -n 30 >&2
        die "pip wheel failed (log $STATE/wheelhouse.log)"
    fi
    rm -f "$WHEELHOUSE"/*.whl "$WHEELHOUSE/.inputs.sha256"
    mv "$work/wheels/"*.whl "$WHEELHOUSE/"
    echo "$hash" >"$WHEELHOUSE/.inputs.sha256"
    rm -rf "$work"
    log "wheelhouse $hash: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1), $(($(now) - started)) s"
}

# ------------------------------------------------------------------------------------------- compose

compose() {
    [[ -f $STATE/stack.env ]] || die "no $STATE/stack.env: run \`scripts/stack.sh up\` first"
    # Only the env file sets the stack (no shell variable of the caller, no developer's docker/.env).
    env -i PATH="$PATH" HOME="${HOME:-/root}" docker-compose --project-name "$PROJECT" \
        --project-directory "$REPO/docker" --env-file "$STATE/stack.env" "${COMPOSE_FILES[@]}" "$@"
}

datasets_dir() {
    local dir=${HNR_DATASETS_HOST_DIR:-${HNR_DATASETS_DIR:-$REPO/../shared/datasets}}
    [[ -d $dir ]] || die "no dataset mirror at $dir (set HNR_DATASETS_HOST_DIR)"
    (cd "$dir" && pwd)
}

write_env() {
    local password gid datasets
    datasets=$(datasets_dir)
    password=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    gid=$(stat -c %g "$SOCKET")
    local dagster_port=${HNR_STACK_DAGSTER_PORT:-3000} mlflow_port=${HNR_STACK_MLFLOW_PORT:-5000}
    (
        umask 077
        cat >"$STATE/stack.env" <<EOF
POSTGRES_PASSWORD=$password
POSTGRES_USER=hnr
POSTGRES_DB=dagster
MLFLOW_DB=mlflow
HNR_PROFILE=local
HNR_IMAGE=$IMAGE
DOCKER_GID=$gid
HNR_BIND_ADDRESS=127.0.0.1
DAGSTER_PORT=$dagster_port
MLFLOW_PORT=$mlflow_port
HNR_MLFLOW_UI_URL=http://127.0.0.1:$mlflow_port
HNR_DATASETS_HOST_DIR=$datasets
EOF
    )
}

# Refuse to run over a deployment this script did not start: `down` would delete its volumes.
check_no_foreign_stack() {
    local name
    if "$DOCKER" network inspect "$NETWORK" >/dev/null 2>&1; then
        die "network $NETWORK exists already (another hnr deployment on this engine?): run \`scripts/stack.sh down\` if it is a leftover of this script"
    fi
    for name in "${VOLUMES[@]}"; do
        if "$DOCKER" volume inspect "$name" >/dev/null 2>&1; then
            die "volume $name exists already (another hnr deployment on this engine?): run \`scripts/stack.sh down\` if it is a leftover of this script"
        fi
    done
}

wait_healthy() {
    local service id status started
    started=$(now)
    for service in postgres hnr-code mlflow; do
        id=$(compose ps -q "$service")
        [[ -n $id ]] || die "service $service has no container"
        while :; do
            status=$("$DOCKER" inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
            [[ $status == "running healthy" ]] && break
            if [[ $status == exited* || $status == dead* || $status == *unhealthy ]] || (($(now) - started > 600)); then
                compose logs --no-color --tail 60 "$service" >&2 || true
                die "service $service is $status"
            fi
            sleep 2
        done
    done
    log "postgres, hnr-code and mlflow healthy after $(($(now) - started)) s"
}

# The classic builder's cache is its intermediate images. The build stage's last one has no tag, so
# `docker image prune` would take the whole stage with it: tag it ($IMAGE-build), then prune what an
# earlier build left dangling (an old chain after a dependency change), so that disk use stays at one
# build's worth.
keep_build_cache() {
    local stage
    stage=$(awk '/^Step [0-9]+\/[0-9]+ : FROM /{ if (++n == 2) { print prev; exit } } /^ ---> [0-9a-f]+$/{ prev = $2 }' \
        "$STATE/build.log")
    if [[ -n $stage ]]; then "$DOCKER" tag "$stage" "$IMAGE-build"; fi
    "$DOCKER" image prune -f >/dev/null
    log "Docker disk use: $("$DOCKER" system df --format '{{.Type}} {{.Size}}' | paste -sd ' ' | sed 's/ Build Cache.*//')"
}

# --------------------------------------------------------------------------------------------- steps

cmd_up() {
    local started step
    started=$(now)
    mkdir -p "$STATE"
    bash "$REPO/scripts/system-deps.sh"
    step=$(now)
    engine_start
    log "engine ready in $(($(now) - step)) s"
    if [[ -f $STACK_RECORD ]] || leftover_stack_is_ours; then
        log "a stack of an earlier run is left (killed before its \`down\`): removing it"
        remove_stack "$(engine_pidfile)"
    fi
    check_no_foreign_stack
    # From here on the stack's containers, network and volumes are this script's: `down` removes them,
    # and so does the next `up` or `down` if this run is killed first.
    as_root mkdir -p "$MARK_DIR"
    printf '%s\n' "$STATE" | as_root tee "$STACK_RECORD" >/dev/null
    touch "$STATE/stack.owned"
    # Side by side on a cold machine (debootstrap and pip mostly wait on the network and the disk): the
    # Python base image with the wheelhouse, the Postgres one (needed only at `compose up`) with both
    # and the hnr build.
    step=$(now)
    local postgres_job python_job
    spawn postgres_image
    postgres_job=$LAST_JOB
    spawn python_image
    python_job=$LAST_JOB
    if [[ ${HNR_WHEELHOUSE:-1} != 0 ]]; then
        wheelhouse
    else
        log "HNR_WHEELHOUSE=0: building from the package indexes"
        if compgen -G "$WHEELHOUSE/*.whl" >/dev/null; then
            die "HNR_WHEELHOUSE=0 but $WHEELHOUSE has wheels, which the build would use: remove them first"
        fi
    fi
    join "$python_job" "the Python base image"
    log "Python base image and wheelhouse ready in $(($(now) - step)) s"
    step=$(now)
    log "building $IMAGE (log $STATE/build.log)"
    if ! "$DOCKER" build -f "$REPO/docker/Dockerfile" -t "$IMAGE" "$REPO" >"$STATE/build.log" 2>&1; then
        tail -n 40 "$STATE/build.log" >&2
        die "docker build failed (log $STATE/build.log)"
    fi
    log "image $IMAGE built in $(($(now) - step)) s ($("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}'))"
    join "$postgres_job" "the Postgres base image"
    keep_build_cache
    write_env
    step=$(now)
    compose up -d --no-build >"$STATE/compose-up.log" 2>&1 || {
        cat "$STATE/compose-up.log" >&2
        die "compose up failed"
    }
    wait_healthy
    log "stack up in $(($(now) - step)) s; all of \`up\` took $(($(now) - started)) s"
    grep -v '^POSTGRES_PASSWORD=' "$STATE/stack.env"
    echo "HNR_STACK_DIR=$STATE"
    echo "ENGINE_PIDFILE=$(engine_pidfile)"
}

cmd_down() {
    local started pidfile="" before left
    started=$(now)
    before=$(record_get "$ENGINE_RECORD" iptables_docker)
    if engine_up; then
        pidfile=$(engine_pidfile)
        if [[ -n $pidfile || -f $STATE/stack.owned || -f $STACK_RECORD ]]; then
            remove_stack "$pidfile"
        else
            log "no stack of this script on the running engine ($STACK_RECORD is missing): nothing removed"
        fi
    elif [[ -f $STACK_RECORD || -f $STATE/stack.owned ]] && ! grep -qE ' (dockerd|containerd)$' <<<"$(engine_processes)"; then
        # Left by a run whose engine was killed: its containers would come back with the next engine
        # (restart: unless-stopped). An engine of this script's own, just to remove them.
        log "a stack of this script is left on a stopped engine: starting one to remove it"
        engine_start
        pidfile=$(engine_pidfile)
        remove_stack "$pidfile"
    elif [[ -f $STATE/dockerd.pid ]]; then
        pidfile=$STATE/dockerd.pid # an engine `up` started that no longer answers
    elif [[ -f $ENGINE_RECORD ]]; then
        pidfile=$(record_get "$ENGINE_RECORD" pidfile) # one that an earlier run started and lost
    fi
    rm -f "$STATE/stack.env" "$STATE/stack.owned"
    as_root rm -f "$STACK_RECORD"
    if [[ -n $pidfile ]]; then
        engine_stop "$pidfile"
        left=$(host_leftovers "${before:-0}")
        if [[ -n $left ]]; then
            log "left on the host after the engine:"$'\n'"$left"
            die "down left the host unclean"
        fi
        log "host clean: no engine process, mount, network namespace, bridge or veth; iptables-save names Docker $(iptables_docker_count) times (before the engine: ${before:-0}); ip_forward $(cat /proc/sys/net/ipv4/ip_forward)"
    fi
    log "down in $(($(now) - started)) s"
}

# Does the engine hold an hnr compose stack whose services run $IMAGE (the tag only this script builds)?
# Then a run of this script left it without a record (killed before writing it, or an older version).
leftover_stack_is_ours() {
    local ids images
    ids=$("$DOCKER" ps -aq --filter label=com.docker.compose.project=$PROJECT)
    [[ -n $ids ]] || return 1
    # shellcheck disable=SC2086
    images=$("$DOCKER" inspect --format '{{.Config.Image}}' $ids)
    grep -qxF "$IMAGE" <<<"$images"
}

# Services, run containers, volumes and network of the stack; on an engine of this script's own
# ($1, its pidfile, non-empty), every container on it.
remove_stack() {
    local own_engine=$1 ids name
    if [[ ! -f $STATE/stack.env ]]; then
        # compose needs the variables the files require to parse them; no secret is needed to stop.
        mkdir -p "$STATE"
        printf 'POSTGRES_PASSWORD=unused-for-down\nHNR_DATASETS_HOST_DIR=/nonexistent\nHNR_IMAGE=%s\n' "$IMAGE" \
            >"$STATE/stack.env"
    fi
    compose logs --no-color --timestamps >"$STATE/compose.log" 2>&1 || true
    compose down --remove-orphans --timeout 30 >&2 || true
    # Run containers of the Docker run launcher (labelled with their run id) hold the volumes.
    ids=$("$DOCKER" ps -aq --filter label=dagster/run_id)
    for name in "${VOLUMES[@]}"; do ids+=" $("$DOCKER" ps -aq --filter "volume=$name")"; done
    if [[ -n $own_engine ]]; then ids+=" $("$DOCKER" ps -aq)"; fi # nothing else is on it
    ids=$(tr ' ' '\n' <<<"$ids" | sort -u | grep -v '^$' || true)
    if [[ -n $ids ]]; then
        log "removing containers: $(tr '\n' ' ' <<<"$ids")"
        # shellcheck disable=SC2086
        "$DOCKER" rm -f $ids >/dev/null
    fi
    compose down --volumes --remove-orphans --timeout 30 >&2 || true
    for name in "${VOLUMES[@]}"; do "$DOCKER" volume rm "$name" >/dev/null 2>&1 || true; done
    "$DOCKER" network rm "$NETWORK" >/dev/null 2>&1 || true
    if [[ -n $own_engine ]]; then
        log "left on the engine: $("$DOCKER" ps -aq | wc -l) containers, $("$DOCKER" volume ls -q | wc -l) volumes"
    fi
}

cmd_clean() {
    cmd_down
    engine_start
    local tag
    for tag in "$IMAGE" "$IMAGE-build" python:3.11-slim-bookworm postgres:17-bookworm; do
        if [[ $tag == "$IMAGE"* || -n $(image_label "$tag" "$STANDIN_LABEL") ]]; then
            "$DOCKER" image rm -f "$tag" >/dev/null 2>&1 || true
        fi
    done
    "$DOCKER" image prune -f >/dev/null
    rm -f "$WHEELHOUSE"/*.whl "$WHEELHOUSE/.inputs.sha256"
    cmd_down
}

# The commands. The last line is read whole before it runs, so an edit of this file while it runs cannot
# change what the running script does next.
main() {
    case ${1:-} in
        up) cmd_up ;;
        down) cmd_down ;;
        clean) cmd_clean ;;
        wheelhouse)
            mkdir -p "$STATE"
            wheelhouse
            ;;
        compose)
            shift
            compose "$@"
            ;;
        *)
            sed -n '3,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
            exit 2
            ;;
    esac
}

main "$@"; exit $?
