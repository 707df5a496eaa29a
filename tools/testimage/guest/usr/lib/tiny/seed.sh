#!/bin/sh
# seed.sh - the NoCloud seed reader of the tiny test image: a small stand-in for cloud-init.
#
# Finds the file system labelled "cidata" (an ISO 9660 CD-ROM or a vfat disk), reads meta-data,
# user-data (#cloud-config or a #! script) and network-config, and applies them:
#   every boot:        hostname (meta-data local-hostname, else user-data hostname/fqdn) and
#                      the network plan for net.sh ($TINY_RUN/net.plan);
#   once per instance: users (created with a home, in group sudo), ssh_authorized_keys (all keys
#                      also go to root), passwords, chpasswd, write_files, runcmd / user script
#                      (written to $TINY_RUN/late.sh, which rcS runs in the background), and new
#                      SSH host keys.
# An instance is new when meta-data's instance-id differs from the one recorded last time.
# Everything it does is logged to /var/log/seed.log.

. /usr/lib/tiny/common.sh

STATE=/var/lib/tiny-seed
MNT=$TINY_RUN/seed
UD=$TINY_RUN/user-data.flat
MD=$TINY_RUN/meta-data.flat
LATE=$TINY_RUN/late.sh

log() { tiny_log seed "$@"; }

# The volume label of an ISO 9660 file system on $1 (its primary volume descriptor at 32 KiB).
iso_label() {
	[ "$(dd if="$1" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ] || return 1
	dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' '
}

# Print the device holding the seed; waits a little for CD-ROMs, which appear late.
find_seed() {
	_tries=0
	while [ "$_tries" -lt 50 ]; do
		for _dev in /dev/sr* /dev/vd* /dev/sd* /dev/hd* /dev/xvd*; do
			[ -b "$_dev" ] || continue
			case "$(iso_label "$_dev")" in cidata | CIDATA) echo "$_dev"; return 0 ;; esac
		done
		for _label in cidata CIDATA; do
			findfs "LABEL=$_label" 2>/dev/null && return 0
		done
		# Without any CD-ROM drive, a seed would be a disk, and disks are there by now.
		if [ "$_tries" -ge 10 ] && ! ls /sys/class/block | grep -q '^sr'; then return 1; fi
		_tries=$((_tries + 1))
		sleep 0.1
	done
	return 1
}

set_hostname() {
	_name=$(printf '%s' "$1" | tr -cd 'A-Za-z0-9.-')
	_short=${_name%%.*}
	[ -n "$_short" ] || return 0
	hostname "$_short"
	echo "$_short" >/etc/hostname
	sed -i '/^127\.0\.1\.1[[:space:]]/d' /etc/hosts
	if [ "$_name" = "$_short" ]; then
		printf '127.0.1.1\t%s\n' "$_short" >>/etc/hosts
	else
		printf '127.0.1.1\t%s %s\n' "$_name" "$_short" >>/etc/hosts
	fi
	log "hostname set to $_short"
}

apply_hostname() {
	for _src in "$MD local-hostname" "$MD hostname" "$UD fqdn" "$UD hostname"; do
		set -- $_src
		[ -s "$1" ] || continue
		_value=$(flat_get "$1" "$2") && [ -n "$_value" ] && { set_hostname "$_value"; return; }
	done
}

# ensure_user NAME SHELL: create NAME (own group, home, member of sudo) unless it exists.
ensure_user() {
	grep -q "^$1:" /etc/passwd && return 0
	_uid=$(awk -F: 'BEGIN { m = 999 } $3 > m && $3 < 60000 { m = $3 } END { print m + 1 }' /etc/passwd)
	_shell=$2
	[ -n "$_shell" ] && [ -x "$_shell" ] || _shell=/bin/sh
	echo "$1:x:$_uid:$_uid::/home/$1:$_shell" >>/etc/passwd
	echo "$1:x:$_uid:" >>/etc/group
	# "*": no password yet; dropbear refuses key logins for accounts locked with "!".
	echo "$1:*:19000:0:99999:7:::" >>/etc/shadow
	awk -F: -v OFS=: -v u="$1" '$1 == "sudo" { $4 = $4 == "" ? u : $4 "," u } { print }' \
		/etc/group >/etc/group.new && cat /etc/group.new >/etc/group && rm -f /etc/group.new
	mkdir -p "/home/$1"
	chown "$_uid:$_uid" "/home/$1"
	chmod 755 "/home/$1"
	log "created user $1 (uid $_uid, shell $_shell, group sudo)"
}

# add_key USER KEY: append KEY to USER's authorized_keys unless it is there.
add_key() {
	_home=$(home_of "$1")
	[ -n "$_home" ] || return 0
	case "$2" in "" | *"
"*) return 0 ;; esac
	mkdir -p "$_home/.ssh"
	_file=$_home/.ssh/authorized_keys
	touch "$_file"
	grep -qxF -- "$2" "$_file" || printf '%s\n' "$2" >>"$_file"
	chmod 700 "$_home/.ssh"
	chmod 600 "$_file"
	chown -R "$1:" "$_home/.ssh" 2>/dev/null || chown -R "$1" "$_home/.ssh"
	log "authorized key for $1: $(printf '%s' "$2" | cut -c1-40)..."
}

# set_password USER PLAIN | set_password_hash USER HASH
set_password() { set_password_hash "$1" "$(mkpasswd -m sha512 "$2")"; }
set_password_hash() {
	grep -q "^$1:" /etc/shadow || return 0
	awk -F: -v OFS=: -v u="$1" -v h="$2" '$1 == u { $2 = h } { print }' /etc/shadow >/etc/shadow.new
	cat /etc/shadow.new >/etc/shadow && rm -f /etc/shadow.new
	log "password set for $1"
}

apply_user() {
	_i=$1
	_name=$(flat_get "$UD" "users/$_i/name") || _name=$(flat_get "$UD" "users/$_i")
	case "$_name" in
	"" | default) return 0 ;;
	*[!a-z0-9_.-]* | [.-]*) log "skipping user with an invalid name: $_name"; return 0 ;;
	esac
	[ "$_name" = root ] || ensure_user "$_name" "$(flat_get "$UD" "users/$_i/shell")"
	for _k in ssh_authorized_keys ssh-authorized-keys; do
		for _j in $(flat_items "$UD" "users/$_i/$_k"); do
			_key=$(flat_get "$UD" "users/$_i/$_k/$_j")
			add_key root "$_key"
			[ "$_name" = root ] || add_key "$_name" "$_key"
		done
	done
	if _pw=$(flat_get "$UD" "users/$_i/plain_text_passwd") && [ -n "$_pw" ]; then
		set_password "$_name" "$_pw"
	elif _pw=$(flat_get "$UD" "users/$_i/passwd") && [ -n "$_pw" ]; then
		set_password_hash "$_name" "$_pw"
	elif _pw=$(flat_get "$UD" "users/$_i/hashed_passwd") && [ -n "$_pw" ]; then
		set_password_hash "$_name" "$_pw"
	fi
}

apply_chpasswd() {
	_list=$(flat_get "$UD" chpasswd/list) && printf '%s\n' "$_list" | while IFS=: read -r _u _p; do
		[ -n "$_u" ] && [ -n "$_p" ] && set_password "$(echo "$_u" | tr -d ' -')" "$_p"
	done
	for _i in $(flat_items "$UD" chpasswd/users); do
		_u=$(flat_get "$UD" "chpasswd/users/$_i/name") || continue
		_p=$(flat_get "$UD" "chpasswd/users/$_i/password") || continue
		if [ "$(flat_get "$UD" "chpasswd/users/$_i/type")" = hash ]; then
			set_password_hash "$_u" "$_p"
		else
			set_password "$_u" "$_p"
		fi
	done
}

apply_accounts() {
	for _i in $(flat_items "$UD" ssh_authorized_keys); do
		add_key root "$(flat_get "$UD" "ssh_authorized_keys/$_i")"
	done
	for _i in $(flat_items "$UD" users); do apply_user "$_i"; done
	_pw=$(flat_get "$UD" password) && [ -n "$_pw" ] && set_password root "$_pw"
	apply_chpasswd
}

write_one_file() {
	_path=$(flat_get "$UD" "write_files/$1/path") || return 0
	case "$_path" in /*) ;; *) log "write_files: skipping relative path $_path"; return 0 ;; esac
	mkdir -p "$(dirname "$_path")"
	_redirect='>'
	[ "$(flat_get "$UD" "write_files/$1/append")" = true ] && _redirect='>>'
	case "$(flat_get "$UD" "write_files/$1/encoding")" in
	b64 | base64) _decode='base64 -d' ;;
	gz+b64 | gzip+base64 | gz+base64 | gzip+b64) _decode='base64 -d | gunzip' ;;
	*) _decode=cat ;;
	esac
	flat_get "$UD" "write_files/$1/content" | eval "$_decode $_redirect \"\$_path\""
	_mode=$(flat_get "$UD" "write_files/$1/permissions") || _mode=0644
	chmod "$_mode" "$_path"
	_owner=$(flat_get "$UD" "write_files/$1/owner") && chown "$_owner" "$_path"
	log "wrote $_path (mode $_mode)"
}

# Quote $1 for sh: 'it'\''s'
sh_quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

write_late_script() {
	{
		echo '#!/bin/sh'
		echo '# runcmd of the NoCloud seed, run once per instance by rcS.'
		for _i in $(flat_items "$UD" runcmd); do
			if flat_has "$UD" "runcmd/$_i"; then
				flat_get "$UD" "runcmd/$_i"
				echo
			else
				for _j in $(flat_items "$UD" "runcmd/$_i"); do
					printf '%s ' "$(sh_quote "$(flat_get "$UD" "runcmd/$_i/$_j")")"
				done
				echo
			fi
		done
	} >"$LATE"
	chmod 755 "$LATE"
	log "runcmd: $(flat_items "$UD" runcmd | wc -l) command(s) queued"
}

apply_instance() {
	log "new instance $1: applying user-data"
	rm -f /etc/dropbear/dropbear_*_host_key
	ensure_host_keys
	if head -n 1 "$MNT/user-data" 2>/dev/null | grep -q '^#!'; then
		cp "$MNT/user-data" "$LATE"
		chmod 755 "$LATE"
		log "user-data is a script: queued"
		return 0
	fi
	for _i in $(flat_items "$UD" write_files); do write_one_file "$_i"; done
	apply_accounts
	[ -n "$(flat_items "$UD" runcmd)" ] && write_late_script
}

main() {
	: >"$UD"
	: >"$MD"
	_dev=$(find_seed) || { log "no NoCloud seed (label cidata) found"; return 0; }
	mkdir -p "$MNT"
	mount -o ro "$_dev" "$MNT" 2>/dev/null || mount -t iso9660 -o ro "$_dev" "$MNT" || {
		log "cannot mount seed $_dev"
		return 0
	}
	log "seed found on $_dev: $(ls "$MNT" | tr '\n' ' ')"
	[ -f "$MNT/meta-data" ] && yaml_flatten "$MNT/meta-data" >"$MD"
	[ -f "$MNT/user-data" ] && yaml_flatten "$MNT/user-data" >"$UD"
	if [ -f "$MNT/network-config" ]; then
		yaml_flatten "$MNT/network-config" | awk -f "$TINY_LIB/netplan.awk" >"$TINY_RUN/net.plan"
		log "network-config plan: $(tr '\t\n' ' ;' <"$TINY_RUN/net.plan")"
	fi
	apply_hostname
	_iid=$(flat_get "$MD" instance-id) && [ -n "$_iid" ] ||
		_iid=iid-$(cat "$MNT/meta-data" "$MNT/user-data" 2>/dev/null | md5sum | cut -c1-16)
	mkdir -p "$STATE"
	if [ "$(cat "$STATE/instance-id" 2>/dev/null)" = "$_iid" ]; then
		log "instance $_iid already set up"
	else
		apply_instance "$_iid"
		echo "$_iid" >"$STATE/instance-id"
	fi
	umount "$MNT" 2>/dev/null
}

main
