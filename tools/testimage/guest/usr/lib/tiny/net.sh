#!/bin/sh
# net.sh - network setup at boot for the tiny test image.
#
# 1. Brings up lo.
# 2. Renames the ethernet interfaces to eth0, eth1, ... in PCI address order, so names follow
#    the NICs' slots whatever order their drivers were loaded in (there is no udev here).
# 3. Applies the plan seed.sh made from the seed's network-config ($TINY_RUN/net.plan, see
#    netplan.awk): static addresses, routes and DNS, or DHCP, for the interfaces it matches
#    (by MAC or by name glob), renaming them first when it says set-name.
# 4. Runs udhcpc in the background on every other ethernet interface, so a NIC without a DHCP
#    server never holds up the boot; /usr/share/udhcpc/default.script applies the leases.

. /usr/lib/tiny/common.sh

PLAN=$TINY_RUN/net.plan
RESOLV_D=$TINY_RUN/resolv.d

log() { tiny_log net "$@"; }

ethernet_ifaces() {
	for _d in /sys/class/net/*; do
		[ -e "$_d/device" ] && [ "$(cat "$_d/type")" = 1 ] && echo "${_d##*/}"
	done
}

rename_by_pci_order() {
	_order=$(for _n in $(ethernet_ifaces); do
		echo "$(readlink -f "/sys/class/net/$_n/device") $_n"
	done | sort | awk '{ print $2 }')
	_i=0
	_wanted=$(for _n in $_order; do echo "eth$_i"; _i=$((_i + 1)); done)
	[ "$(echo $_order)" = "$(echo $_wanted)" ] && return 0
	for _n in $_order; do ip link set dev "$_n" name "tmp-$_n"; done
	_i=0
	for _n in $_order; do
		ip link set dev "tmp-$_n" name "eth$_i"
		log "renamed $_n to eth$_i (PCI order)"
		_i=$((_i + 1))
	done
}

# plan_for IFACE MAC: the plan line matching the interface, if any.
plan_for() {
	[ -s "$PLAN" ] || return 1
	awk -F'\t' -v n="$1" -v m="$2" '
		function glob_re(g) { gsub(/\./, "[.]", g); gsub(/\*/, ".*", g); gsub(/\?/, ".", g); return "^" g "$" }
		($1 == "mac" && $2 == m) || ($1 == "name" && n ~ glob_re($2)) { print; found = 1; exit }
		END { exit !found }' "$PLAN"
}

# write_resolv IFACE "DNS,DNS" ["SEARCH ..."]: record IFACE's name servers, rebuild resolv.conf.
write_resolv() {
	mkdir -p "$RESOLV_D"
	{
		[ -n "$3" ] && echo "search $3"
		for _s in $(echo "$2" | tr ',' ' '); do echo "nameserver $_s"; done
	} >"$RESOLV_D/$1"
	cat "$RESOLV_D"/* | awk '!seen[$0]++' >/etc/resolv.conf
}

configure_static() {
	_n=$1 _addrs=$2 _gw=$3 _dns=$4
	ip link set dev "$_n" up
	for _a in $(echo "$_addrs" | tr ',' ' '); do ip addr add "$_a" dev "$_n"; done
	[ "$_gw" != - ] && ip route add default via "$_gw" dev "$_n" metric 10
	[ "$_dns" != - ] && write_resolv "$_n" "$_dns"
	log "$_n: static $_addrs gateway $_gw dns $_dns"
}

start_dhcp() {
	ip link set dev "$1" up
	setsid udhcpc -f -S -i "$1" -s /usr/share/udhcpc/default.script -T 1 -t 4 -A 5 \
		-x "hostname:$(hostname)" </dev/null >>/var/log/udhcpc.log 2>&1 &
	log "$1: DHCP started in the background"
}

configure() {
	_n=$1
	_mac=$(cat "/sys/class/net/$_n/address")
	if ! _line=$(plan_for "$_n" "$_mac"); then
		start_dhcp "$_n"
		return
	fi
	set -f
	set -- $_line
	set +f
	_setname=$3 _mode=$4
	if [ "$_setname" != - ] && [ "$_setname" != "$_n" ]; then
		[ -e "/sys/class/net/$_setname" ] && ip link set dev "$_setname" name "old-$_setname"
		ip link set dev "$_n" name "$_setname" && log "renamed $_n to $_setname" && _n=$_setname
	fi
	case $_mode in
	static) configure_static "$_n" "$5" "$6" "$7" ;;
	dhcp) start_dhcp "$_n" ;;
	*) ip link set dev "$_n" up; log "$_n: up, no address (network-config)" ;;
	esac
}

ip link set dev lo up
rename_by_pci_order
for _iface in $(ethernet_ifaces); do configure "$_iface"; done
