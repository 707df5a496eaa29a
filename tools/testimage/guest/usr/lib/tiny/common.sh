# common.sh - helpers shared by the boot scripts of the tiny test image (sourced, not run).

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
TINY_LIB=/usr/lib/tiny
TINY_RUN=/run/tiny
mkdir -p "$TINY_RUN" /var/log

# tiny_log TAG MESSAGE...: to the console (boot output) and to /var/log/TAG.log.
tiny_log() {
	_tag=$1
	shift
	echo "$_tag: $*" >&2
	echo "$(date '+%Y-%m-%d %H:%M:%S') $*" >>"/var/log/$_tag.log"
}

# flat_get FILE PATH: the value at PATH of a flattened YAML file (see yaml2flat.awk).
flat_get() { awk -v op=get -v key="$2" -f "$TINY_LIB/flat.awk" "$1"; }

# flat_has FILE PATH: true when PATH holds a scalar.
flat_has() { awk -v op=has -v key="$2" -f "$TINY_LIB/flat.awk" "$1"; }

# flat_items FILE PATH: the list indexes (or keys) under PATH, one a line.
flat_items() { awk -v op=items -v key="$2" -f "$TINY_LIB/flat.awk" "$1"; }

# yaml_flatten FILE: print FILE as "PATH<TAB>VALUE" lines.
yaml_flatten() { awk -f "$TINY_LIB/yaml2flat.awk" "$1"; }

# home_of USER: the home folder from /etc/passwd.
home_of() { awk -F: -v u="$1" '$1 == u { print $6; exit }' /etc/passwd; }

# ensure_host_keys: create dropbear's host keys that are missing (new at first boot and for
# every new instance, so clones of one template do not share keys).
ensure_host_keys() {
	mkdir -p /etc/dropbear
	for _type in ed25519 ecdsa; do
		_key=/etc/dropbear/dropbear_${_type}_host_key
		[ -s "$_key" ] || dropbearkey -t "$_type" -f "$_key" >/dev/null 2>&1
	done
}
