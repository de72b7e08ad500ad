#!/usr/bin/env bash
# The NAT lab: Linux network namespaces wired into small networks, with nftables NAT
# routers and a coturn STUN server on the "public" side, so that p2p-transfer meets real
# kernel NAT behaviour. Only addresses inside 10.200.0.0/16 in the lab's own namespaces
# are used; nothing is added to the host's own network namespace.
#
#   natlab.sh up PREFIX nat MODE            one host behind one router
#   natlab.sh up PREFIX pair MODE_A MODE_B  two hosts behind two routers (hole punching)
#   natlab.sh up PREFIX lan                 two hosts on one switch
#   natlab.sh exec PREFIX NODE CMD [ARG...] run a command inside node NODE
#   natlab.sh down PREFIX                   kill everything inside, delete the namespaces
#   natlab.sh list                          prefixes of labs that are up
#
# MODE: open (routed, no NAT), cone (masquerade), random (masquerade random),
# symmetric (masquerade fully-random), blocked (masquerade, forwarded UDP dropped).
# Nodes: inet (coturn on 10.200.0.2 and 10.200.0.3, port 3478, alt port 3479),
# rt1/rt2 (routers, WAN 10.200.0.11/.12), h1/h2 (hosts 10.200.1.2 and 10.200.2.2 behind
# them); in the lan topology sw (the switch) and h1/h2 at 10.200.100.2 and .3.
# docs/natlab.md explains what each topology models.
set -Eeuo pipefail

STATE_ROOT=${NATLAB_STATE:-/tmp/natlab}

die() { echo "natlab: $*" >&2; exit 1; }

usage() {
    sed -n '5,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

check_prefix() {
    [[ $1 =~ ^[a-z][a-z0-9]{0,15}$ ]] || die "prefix must be 1-16 lower-case letters/digits, starting with a letter: '$1'"
}

ns() { echo "$PREFIX-$1"; }
in_ns() { local node=$1; shift; ip netns exec "$(ns "$node")" "$@"; }

add_node() {
    ip netns add "$(ns "$1")"
    in_ns "$1" ip link set lo up
    # IPv4 only: no router solicitations or DAD chatter in the lab.
    in_ns "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    in_ns "$1" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
}

# link NODE_A IF_A NODE_B IF_B: a veth pair created directly inside the two namespaces.
link() {
    ip -n "$(ns "$1")" link add "$2" type veth peer name "$4" netns "$(ns "$3")"
    ip -n "$(ns "$1")" link set "$2" up
    ip -n "$(ns "$3")" link set "$4" up
}

# The public side: a bridge with the STUN server's two addresses.
add_internet() {
    add_node inet
    ip -n "$(ns inet)" link add br0 type bridge
    ip -n "$(ns inet)" link set br0 up
    ip -n "$(ns inet)" addr add 10.200.0.2/24 dev br0
    ip -n "$(ns inet)" addr add 10.200.0.3/24 dev br0
}

# add_router K MODE: router rtK (WAN 10.200.0.1K on the public bridge, LAN 10.200.K.1/24)
# and host hK (10.200.K.2) behind it.
add_router() {
    local k=$1 mode=$2 rt="rt$1" host="h$1" wan_ip="10.200.0.1$1"
    add_node "$rt"
    add_node "$host"
    link "$rt" wan inet "$rt"
    ip -n "$(ns inet)" link set "$rt" master br0
    ip -n "$(ns "$rt")" addr add "$wan_ip/24" dev wan
    link "$rt" lan "$host" eth0
    ip -n "$(ns "$rt")" addr add "10.200.$k.1/24" dev lan
    ip -n "$(ns "$host")" addr add "10.200.$k.2/24" dev eth0
    ip -n "$(ns "$host")" route add default via "10.200.$k.1"
    in_ns "$rt" sysctl -qw net.ipv4.ip_forward=1

    local masquerade
    case $mode in
        open) masquerade="" ;;
        cone | blocked) masquerade="masquerade" ;;
        random) masquerade="masquerade random" ;;
        symmetric) masquerade="masquerade fully-random" ;;
        *) die "unknown NAT mode '$mode' (open, cone, random, symmetric, blocked)" ;;
    esac
    if [[ -z $masquerade ]]; then
        # Plain routing: the public side can reach the host's own address.
        ip -n "$(ns inet)" route add "10.200.$k.0/24" via "$wan_ip"
    else
        in_ns "$rt" nft -f - <<EOF
table ip natlab {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" $masquerade
    }
}
EOF
    fi
    if [[ $mode == blocked ]]; then
        in_ns "$rt" nft -f - <<EOF
table inet natlab_filter {
    chain forward {
        type filter hook forward priority filter; policy accept;
        meta l4proto udp drop
    }
}
EOF
    fi
    echo "$rt=$mode" >>"$STATE/topology"
}

start_coturn() {
    command -v turnserver >/dev/null || die "turnserver not found (apt-get install coturn)"
    in_ns inet turnserver -n --stun-only --no-cli --no-tls --no-dtls \
        --listening-ip 10.200.0.2 --listening-ip 10.200.0.3 \
        --listening-port 3478 --alt-listening-port 3479 \
        --simple-log --log-file stdout --pidfile "$STATE/turnserver.pid" \
        </dev/null >"$STATE/turnserver.log" 2>&1 &
    echo $! >"$STATE/coturn.pid"
    local tries=0
    until in_ns inet ss -Hlun | grep -q '10.200.0.3:3478' &&
        in_ns inet ss -Hlun | grep -q '10.200.0.2:3478'; do
        tries=$((tries + 1))
        ((tries < 100)) || die "coturn did not start; see $STATE/turnserver.log"
        sleep 0.05
    done
}

add_lan() {
    add_node sw
    ip -n "$(ns sw)" link add br0 type bridge
    ip -n "$(ns sw)" link set br0 up
    local i
    for i in 1 2; do
        add_node "h$i"
        link sw "h$i" "h$i" eth0
        ip -n "$(ns sw)" link set "h$i" master br0
        ip -n "$(ns "h$i")" addr add "10.200.100.$((i + 1))/24" dev eth0
    done
    echo "lan" >>"$STATE/topology"
}

down() {
    local nsname pid
    if [[ -f $STATE/coturn.pid ]]; then
        kill "$(cat "$STATE/coturn.pid")" 2>/dev/null || true
    fi
    for nsname in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-" || true); do
        # Whatever still runs inside (a test's receiver, coturn) dies with the lab.
        for pid in $(ip netns pids "$nsname" 2>/dev/null || true); do
            kill "$pid" 2>/dev/null || true
        done
    done
    sleep 0.1
    for nsname in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-" || true); do
        for pid in $(ip netns pids "$nsname" 2>/dev/null || true); do
            kill -9 "$pid" 2>/dev/null || true
        done
        ip netns del "$nsname" 2>/dev/null || true
    done
    rm -rf "$STATE"
}

up() {
    local topology=${1:-}
    [[ -n $topology ]] || usage
    shift
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -qE "^$PREFIX-"; then
        die "a lab with prefix '$PREFIX' is already up (natlab.sh down $PREFIX)"
    fi
    mkdir -p "$STATE"
    # Any failure from here on (a command, or die) removes the half-built lab.
    trap 'status=$?; if ((status != 0)); then echo "natlab: setup failed, cleaning up" >&2; down; fi' EXIT
    case $topology in
        nat)
            [[ $# -eq 1 ]] || usage
            add_internet
            add_router 1 "$1"
            start_coturn
            ;;
        pair)
            [[ $# -eq 2 ]] || usage
            add_internet
            add_router 1 "$1"
            add_router 2 "$2"
            start_coturn
            ;;
        lan)
            [[ $# -eq 0 ]] || usage
            add_lan
            ;;
        *) usage ;;
    esac
    trap - EXIT
    echo "natlab: '$PREFIX' is up ($topology $*); nodes: $(ip netns list | awk '{print $1}' | grep -E "^$PREFIX-" | sed "s/^$PREFIX-//" | sort | tr '\n' ' ')"
}

[[ $# -ge 1 ]] || usage
command=$1
shift
case $command in
    list)
        ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^[a-z][a-z0-9]*-(inet|sw|h1|h2|rt1|rt2)$' |
            sed 's/-.*//' | sort -u
        exit 0
        ;;
    up | down | exec) ;;
    *) usage ;;
esac
[[ $# -ge 1 ]] || usage
PREFIX=$1
shift
check_prefix "$PREFIX"
STATE=$STATE_ROOT/$PREFIX
[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces and nftables)"

case $command in
    up) up "$@" ;;
    down) down ;;
    exec)
        [[ $# -ge 2 ]] || usage
        node=$1
        shift
        exec ip netns exec "$(ns "$node")" "$@"
        ;;
esac
