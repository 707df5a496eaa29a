# netplan.awk - turn a flattened NoCloud network-config (v1 or v2) into a plan, one line per
# interface entry, fields separated by tabs:
#   MATCH_KIND MATCH_VALUE SET_NAME MODE ADDRESSES GATEWAY DNS
# MATCH_KIND is "mac" (VALUE a lower-case MAC) or "name" (VALUE a glob); MODE is "static",
# "dhcp" or "manual" (link up, no address); ADDRESSES and DNS are comma-separated ("-" when
# empty, as are SET_NAME and GATEWAY). net.sh applies the plan.
BEGIN { FS = "\t"; n = 0 }

function add(list, v) { return list == "" ? v : list "," v }
function or_dash(v) { return v == "" ? "-" : v }

# 255.255.255.0 -> 24
function prefix_len(mask,    parts, i, b, bits) {
    if (mask ~ /^[0-9]+$/) return mask
    split(mask, parts, ".")
    bits = 0
    for (i = 1; i <= 4; i++) for (b = 128; b >= 1; b = int(b / 2)) if (parts[i] >= b) { bits++; parts[i] -= b }
    return bits
}

function entry(id) { if (!(id in idx)) { idx[id] = ++n; ids[n] = id } return id }

{ p = $1; v = $2; sub(/^network\//, "", p) }

p ~ /^ethernets\/[^\/]+\// {
    split(p, a, "/"); id = entry("v2:" a[2]); name[id] = a[2]
    rest = substr(p, length("ethernets/" a[2] "/") + 1)
    if (rest == "match/macaddress") mac[id] = tolower(v)
    else if (rest == "match/name") name[id] = v
    else if (rest == "set-name") setname[id] = v
    else if (rest ~ /^addresses\//) addrs[id] = add(addrs[id], v)
    else if (rest == "gateway4") gw[id] = v
    else if (rest ~ /^routes\/[0-9]+\/to$/) { split(rest, r, "/"); rto[id, r[2]] = v }
    else if (rest ~ /^routes\/[0-9]+\/via$/) { split(rest, r, "/"); rvia[id, r[2]] = v }
    else if (rest ~ /^nameservers\/addresses\//) dns[id] = add(dns[id], v)
    else if (rest == "dhcp4") dhcp[id] = (v == "true" || v == "yes" || v == "on")
    next
}

p ~ /^config\/[0-9]+\// {
    split(p, a, "/"); id = "v1:" a[2]
    rest = substr(p, length("config/" a[2] "/") + 1)
    if (rest == "type") { type[id] = v; if (v == "physical") entry(id) }
    else if (rest == "name") name[id] = v
    else if (rest == "mac_address") mac[id] = tolower(v)
    else if (rest ~ /^subnets\/[0-9]+\/type$/) { if (v ~ /^dhcp/) dhcp[id] = 1 }
    else if (rest ~ /^subnets\/[0-9]+\/address$/) { split(rest, r, "/"); saddr[id, r[2]] = v; nsub[id] = nsub[id] " " r[2] }
    else if (rest ~ /^subnets\/[0-9]+\/netmask$/) { split(rest, r, "/"); smask[id, r[2]] = v }
    else if (rest ~ /^subnets\/[0-9]+\/gateway$/) gw[id] = v
    else if (rest ~ /^subnets\/[0-9]+\/dns_nameservers\//) dns[id] = add(dns[id], v)
    else if (rest ~ /^address\//) global_dns = add(global_dns, v)
    next
}

# v2 routes "to: default" (or 0.0.0.0/0) stand for the gateway.
function v2_gateway(id,    k, parts) {
    for (k in rto) {
        split(k, parts, SUBSEP)
        if (parts[1] == id && (rto[k] == "default" || rto[k] == "0.0.0.0/0")) return rvia[k]
    }
    return ""
}

function v1_addresses(id,    list, s, subs, i, a) {
    list = ""
    split(nsub[id], subs, " ")
    for (i in subs) {
        a = saddr[id, subs[i]]
        if (a !~ /\//) a = a "/" (smask[id, subs[i]] == "" ? 24 : prefix_len(smask[id, subs[i]]))
        list = add(list, a)
    }
    return list
}

END {
    for (i = 1; i <= n; i++) {
        id = ids[i]
        if (id ~ /^v1:/) { addrs[id] = v1_addresses(id); if (mac[id] != "") setname[id] = name[id] }
        if (id ~ /^v2:/ && gw[id] == "") gw[id] = v2_gateway(id)
        mode = addrs[id] != "" ? "static" : (dhcp[id] ? "dhcp" : "manual")
        d = dns[id]; if (d == "" && mode == "static") d = global_dns
        kind = mac[id] != "" ? "mac" : "name"
        print kind "\t" (kind == "mac" ? mac[id] : name[id]) "\t" or_dash(setname[id]) "\t" mode "\t" or_dash(addrs[id]) "\t" or_dash(gw[id]) "\t" or_dash(d)
    }
}
