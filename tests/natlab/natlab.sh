#!/usr/bin/env bash
# The NAT lab: Linux network namespaces wired into small networks, with nftables NAT
# routers and a coturn STUN/TURN server on the "public" side, so that p2p-transfer meets
# real kernel NAT behaviour. Only addresses inside 10.200.0.0/16 in the lab's own
# namespaces are used; nothing is added to the host's own network namespace.
#
#   natlab.sh up PREFIX nat MODE            one host behind one router
#   natlab.sh up PREFIX pair MODE_A MODE_B  two hosts behind two routers (hole punching)
#   natlab.sh up PREFIX same MODE           two hosts behind ONE router (no hairpin)
#   natlab.sh up PREFIX lan                 two hosts on one switch
#   natlab.sh exec PREFIX NODE CMD [ARG...] run a command inside node NODE
#   natlab.sh state PREFIX                  print the lab's state directory
#   natlab.sh down PREFIX                   kill everything inside, delete the namespaces
#   natlab.sh list                          prefixes of labs that are up
#
# MODE: open (routed, no NAT), cone (masquerade; the router's own input open),
# cone-dropped (masquerade; the router's own input dropped), random (masquerade random),
# symmetric (masquerade fully-random), blocked (masquerade, forwarded UDP dropped).
# Nodes: inet (the routed public side: 10.200.0.1 on its link to every router; coturn
# STUN+TURN on 10.200.0.2 and 10.200.0.3, ports 3478 and alt 3479, UDP and TCP, TURN
# secret natlab-secret, realm natlab; 10.200.0.4 is free for a rendezvous), rt1/rt2
# (routers, WAN 10.200.0.11/.12, each on its own link to inet), h1/h2 (hosts 10.200.1.2
# and 10.200.2.2 behind them; in `same` both behind rt1, at 10.200.1.2 and 10.200.1.3);
# in the lan topology sw (the switch) and h1/h2 at 10.200.100.2 and .3.
# docs/natlab.md explains what each topology models.
set -Eeuo pipefail

STATE_ROOT=${NATLAB_STATE:-/tmp/natlab}

die() { echo "natlab: $*" >&2; exit 1; }

usage() {
    sed -n '7,25p' "$0" | sed 's/^# \{0,1\}//' >&2
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

# The public side is routed: "inet" is a router with a point-to-point link of its own to
# every NAT router, so a packet from one NAT router to the other crosses one more router
# hop, as on the internet. A probe a host sends with IP TTL 2 passes its own NAT router
# (opening the mapping there) and dies at inet, never reaching the far NAT.
# The servers' addresses (coturn, a rendezvous) sit on a port-less bridge inside inet.
add_internet() {
    add_node inet
    in_ns inet sysctl -qw net.ipv4.ip_forward=1
    ip -n "$(ns inet)" link add pub0 type bridge
    ip -n "$(ns inet)" link set pub0 up
    local address
    for address in 10.200.0.2 10.200.0.3 10.200.0.4; do
        ip -n "$(ns inet)" addr add "$address/32" dev pub0
    done
}

# The input filter of a router whose own ports are closed to the WAN: nothing reaches the
# router itself unless it belongs to a flow already known. A packet dropped here leaves no
# conntrack entry behind (an entry is confirmed only once the packet has passed the hooks).
drop_router_input() {
    in_ns "$1" nft -f - <<EOF
table inet natlab_input {
    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname { "lo", "lan" } accept
    }
}
EOF
}

# add_router K MODE [HOSTS]: router rtK (WAN 10.200.0.1K on its own point-to-point link to
# inet's 10.200.0.1, LAN 10.200.K.1/24) and the hosts behind it: one host hK at 10.200.K.2,
# or with HOSTS=2 the hosts h1 and h2 at 10.200.K.2 and 10.200.K.3 on a bridge in rtK.
add_router() {
    local k=$1 mode=$2 hosts=${3:-1} rt="rt$1" wan_ip="10.200.0.1$1"
    add_node "$rt"
    link "$rt" wan inet "$rt"
    ip -n "$(ns inet)" addr add 10.200.0.1/32 peer "$wan_ip/32" dev "$rt"
    ip -n "$(ns "$rt")" addr add "$wan_ip/32" peer 10.200.0.1/32 dev wan
    ip -n "$(ns "$rt")" route add default via 10.200.0.1
    if ((hosts == 1)); then
        add_node "h$k"
        link "$rt" lan "h$k" eth0
        ip -n "$(ns "h$k")" addr add "10.200.$k.2/24" dev eth0
        ip -n "$(ns "h$k")" route add default via "10.200.$k.1"
    else
        ip -n "$(ns "$rt")" link add lan type bridge
        ip -n "$(ns "$rt")" link set lan up
        local i
        for ((i = 1; i <= hosts; i++)); do
            add_node "h$i"
            link "$rt" "h$i" "h$i" eth0
            ip -n "$(ns "$rt")" link set "h$i" master lan
            ip -n "$(ns "h$i")" addr add "10.200.$k.$((i + 1))/24" dev eth0
            ip -n "$(ns "h$i")" route add default via "10.200.$k.1"
        done
    fi
    ip -n "$(ns "$rt")" addr add "10.200.$k.1/24" dev lan
    in_ns "$rt" sysctl -qw net.ipv4.ip_forward=1

    local masquerade
    case $mode in
        open) masquerade="" ;;
        cone | cone-dropped | blocked) masquerade="masquerade" ;;
        random) masquerade="masquerade random" ;;
        symmetric) masquerade="masquerade fully-random" ;;
        *) die "unknown NAT mode '$mode' (open, cone, cone-dropped, random, symmetric, blocked)" ;;
    esac
    if [[ -z $masquerade ]]; then
        # Plain routing: the public side can reach the host's own address.
        ip -n "$(ns inet)" route add "10.200.$k.0/24" via "$wan_ip"
    else
        # Translated only on the way out of the WAN port: a host that sends to the
        # router's public address reaches the router itself, not the other host behind it
        # (no hairpin NAT).
        in_ns "$rt" nft -f - <<EOF
table ip natlab {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" $masquerade
    }
}
EOF
    fi
    if [[ $mode == cone-dropped ]]; then
        drop_router_input "$rt"
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

# coturn, a full TURN server with TURN REST API credentials (username "EXPIRY[:NAME]",
# password base64(HMAC-SHA1(secret, username))), relaying from 10.200.0.2. It answers
# plain STUN on both addresses and both ports too (RFC 5780: OTHER-ADDRESS 10.200.0.3:3479).
TURN_SECRET=natlab-secret
start_coturn() {
    command -v turnserver >/dev/null || die "turnserver not found (apt-get install coturn)"
    echo "$TURN_SECRET" >"$STATE/turn-secret"
    in_ns inet turnserver -n --no-cli --no-tls --no-dtls \
        --listening-ip 10.200.0.2 --listening-ip 10.200.0.3 \
        --listening-port 3478 --alt-listening-port 3479 \
        --relay-ip 10.200.0.2 --min-port 49152 --max-port 65535 \
        --use-auth-secret --static-auth-secret "$TURN_SECRET" --realm natlab \
        --userdb "$STATE/turndb" \
        --simple-log --log-file stdout --pidfile "$STATE/turnserver.pid" \
        </dev/null >"$STATE/turnserver.log" 2>&1 &
    echo $! >"$STATE/coturn.pid"
    local tries=0
    until in_ns inet ss -Hlun | grep -q '10.200.0.3:3478' &&
        in_ns inet ss -Hlun | grep -q '10.200.0.2:3478' &&
        in_ns inet ss -Hltn | grep -q '10.200.0.2:3478'; do
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
        same)
            [[ $# -eq 1 ]] || usage
            add_internet
            add_router 1 "$1" 2
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
    up | down | exec | state) ;;
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
    state) echo "$STATE" ;;
    exec)
        [[ $# -ge 2 ]] || usage
        node=$1
        shift
        exec ip netns exec "$(ns "$node")" "$@"
        ;;
esac
