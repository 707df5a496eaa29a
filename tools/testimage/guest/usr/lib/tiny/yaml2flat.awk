# yaml2flat.awk - flatten the YAML found in NoCloud seeds into "PATH<TAB>VALUE" lines.
#
# The guest has no YAML library, so the seed reader turns each seed file into lines such as
#   users/0/name<TAB>alice
#   users/0/ssh_authorized_keys/0<TAB>ssh-ed25519 AAAA... alice@host
# PATH joins mapping keys and list indexes (from 0) with "/". VALUE is escaped so that it fits
# on one line: backslash -> \\, newline -> \n, tab -> \t (tiny_unescape in seed.sh reverses it).
# A key whose value is null or an empty collection yields "PATH<TAB>" or nothing.
#
# Supported (what people and PyYAML write in cloud-config, meta-data and network-config):
# block mappings and sequences, sequences indented like their parent key, "- key: value" items,
# plain / 'single' / "double" quoted scalars, also folded over several lines, literal (|) and
# folded (>) block scalars with chomping indicators, flow collections [..] and {..} (nested,
# also spanning lines, so JSON works), comments, "---". Not supported: anchors and aliases,
# tags (a leading !tag is dropped), complex keys, more than one document.
# Written for busybox awk: no gawk extensions, no local arrays.

BEGIN { depth = 0; pend_on = 0; sc_on = 0; bs_on = 0; fl_on = 0; seen = 0; done = 0 }

function ltrim(s) { sub(/^[ \t]+/, "", s); return s }
function rtrim(s) { sub(/[ \t]+$/, "", s); return s }
function trim(s) { return rtrim(ltrim(s)) }
function join(p, k) { return p == "" ? k : p "/" k }
function indent_of(s) { match(s, /^ */); return RLENGTH }

# Not gsub: how its replacement text treats backslashes differs between awks.
function esc(s,    out, i, c) {
    out = ""
    while ((i = match(s, /[\\\n\t]/)) > 0) {
        c = substr(s, i, 1)
        out = out substr(s, 1, i - 1) (c == "\\" ? "\\\\" : c == "\n" ? "\\n" : "\\t")
        s = substr(s, i + 1)
    }
    return out s
}

function emit(path, v) { print path "\t" esc(v) }

# Cut a trailing comment: "#" at the start or after blank, outside quotes. A quote only opens
# a quoted scalar where a scalar may start, so "it's" in a plain scalar is not a quote.
function strip_comment(s,    i, n, c, q, prev) {
    n = length(s); q = ""; prev = " "
    for (i = 1; i <= n; i++) {
        c = substr(s, i, 1)
        if (q != "") {
            if (q == "\"" && c == "\\") { i++; prev = "x"; continue }
            if (c == q) q = ""
        } else if ((c == "\"" || c == "'") && index(" \t[{,:-", prev) > 0) {
            q = c
        } else if (c == "#" && (prev == " " || prev == "\t")) {
            return rtrim(substr(s, 1, i - 1))
        }
        prev = c
    }
    return rtrim(s)
}

# Position of the ":" that separates a key from its value (followed by blank or end of text,
# outside quotes and brackets), or 0. With json set, a ":" right after a quoted key counts too.
function key_colon(s, json,    i, n, c, q, d) {
    n = length(s); q = ""; d = 0
    for (i = 1; i <= n; i++) {
        c = substr(s, i, 1)
        if (q != "") {
            if (q == "\"" && c == "\\") { i++; continue }
            if (c == q) { q = ""; if (json && d == 0 && substr(s, i + 1, 1) == ":") return i + 1 }
            continue
        }
        if ((c == "\"" || c == "'") && (i == 1 || index(" \t[{,", substr(s, i - 1, 1)) > 0)) q = c
        else if (c == "[" || c == "{") d++
        else if (c == "]" || c == "}") d--
        else if (c == ":" && d == 0 && (i == n || index(" \t", substr(s, i + 1, 1)) > 0)) return i
    }
    return 0
}

function unquote_dq(s,    out, i, n, c, e) {
    out = ""; n = length(s)
    for (i = 1; i <= n; i++) {
        c = substr(s, i, 1)
        if (c != "\\") { out = out c; continue }
        e = substr(s, ++i, 1)
        if (e == "n") out = out "\n"
        else if (e == "t") out = out "\t"
        else if (e == "r") out = out "\r"
        else if (e == "0") out = out ""
        else out = out e
    }
    return out
}

function unquote_sq(s) { gsub(/''/, "'", s); return s }

# The value of a complete scalar token (quotes removed, escapes resolved, null -> "").
function scalar(s) {
    s = trim(s)
    if (s ~ /^!/) s = ltrim(substr(s, index(s " ", " ")))
    if (s ~ /^".*"$/ && length(s) >= 2) return unquote_dq(substr(s, 2, length(s) - 2))
    if (s ~ /^'.*'$/ && length(s) >= 2) return unquote_sq(substr(s, 2, length(s) - 2))
    if (s == "~" || s == "null" || s == "Null" || s == "NULL") return ""
    return s
}

# Bracket balance of flow text, ignoring quoted parts: 0 when complete.
function flow_balance(s,    i, n, c, q, d) {
    n = length(s); q = ""; d = 0
    for (i = 1; i <= n; i++) {
        c = substr(s, i, 1)
        if (q != "") {
            if (q == "\"" && c == "\\") { i++; continue }
            if (c == q) q = ""
            continue
        }
        if (c == "\"" || c == "'") q = c
        else if (c == "[" || c == "{") d++
        else if (c == "]" || c == "}") d--
    }
    return d
}

# Emit a flow node ([..], {..} or a scalar) found at path.
function flow(path, s,    first, inner, n, i, c, q, d, start, item, idx, p) {
    s = trim(s); first = substr(s, 1, 1)
    if (first != "[" && first != "{") { emit(path, scalar(s)); return }
    inner = substr(s, 2, length(s) - 2); n = length(inner)
    q = ""; d = 0; start = 1; idx = 0
    for (i = 1; i <= n + 1; i++) {
        c = i <= n ? substr(inner, i, 1) : ","
        if (q != "") {
            if (q == "\"" && c == "\\") { i++; continue }
            if (c == q) q = ""
            continue
        }
        if (c == "\"" || c == "'") { q = c; continue }
        if (c == "[" || c == "{") { d++; continue }
        if (c == "]" || c == "}") { d--; continue }
        if (c != "," || d != 0) continue
        item = trim(substr(inner, start, i - start)); start = i + 1
        if (item == "") continue
        if (first == "[") { flow(join(path, idx), item); idx++; continue }
        p = key_colon(item, 1)
        if (p == 0) emit(join(path, scalar(item)), "")
        else flow(join(path, scalar(substr(item, 1, p - 1))), substr(item, p + 1))
    }
}

function push(ind, path, kind) {
    depth++; fi[depth] = ind; fp[depth] = path; fk[depth] = kind; fx[depth] = -1
}

function pend(path, ind) { pend_on = 1; pend_path = path; pend_ind = ind }

# Scalars may continue on the following, deeper indented lines, so they are emitted late.
function flush_scalar(    v) {
    if (!sc_on) return
    sc_on = 0
    if (sc_kind == "plain") emit(sc_path, scalar(sc_buf))
    else if (sc_kind == "\"") emit(sc_path, unquote_dq(sc_buf))
    else emit(sc_path, unquote_sq(sc_buf))
}

# Index of the closing quote of a quoted scalar body (text after the opening quote), or 0.
function closing_quote(s, q,    i, n, c) {
    n = length(s)
    for (i = 1; i <= n; i++) {
        c = substr(s, i, 1)
        if (q == "\"" && c == "\\") { i++; continue }
        if (c != q) continue
        if (q == "'" && substr(s, i + 1, 1) == "'") { i++; continue }
        return i
    }
    return 0
}

# Start a quoted scalar (s begins with its quote); it may end on a later line.
function start_quoted(path, s, owner,    q, body, e) {
    q = substr(s, 1, 1); body = substr(s, 2); e = closing_quote(body, q)
    sc_on = 1; sc_path = path; sc_ind = owner; sc_kind = q
    if (e > 0) { sc_buf = substr(body, 1, e - 1); sc_open = 0 } else { sc_buf = body; sc_open = 1 }
}

# A line inside a quoted scalar that started on an earlier line.
function continue_quoted(line,    t, e) {
    t = ltrim(line)
    if (sc_kind == "\"" && sc_buf ~ /\\$/ && sc_buf !~ /\\\\$/) sc_buf = substr(sc_buf, 1, length(sc_buf) - 1)
    else if (t == "") { sc_buf = sc_buf "\n"; return }
    else if (sc_buf !~ /\n$/) sc_buf = sc_buf " "
    e = closing_quote(t, sc_kind)
    if (e > 0) { sc_buf = sc_buf substr(t, 1, e - 1); sc_open = 0 } else sc_buf = sc_buf t
}

function value(path, v, owner,    head) {
    head = substr(v, 1, 1)
    if (v ~ /^!!null( |$)/) { emit(path, ""); return }
    if (v ~ /^![^ ]* /) { v = ltrim(substr(v, index(v, " "))); head = substr(v, 1, 1) }
    if (head == "|" || head == ">") {
        bs_on = 1; bs_path = path; bs_style = head; bs_owner = owner; bs_ind = 0
        bs_chomp = v ~ /-/ ? "strip" : (v ~ /\+/ ? "keep" : "clip")
        if (match(v, /[1-9]/)) bs_ind = owner + substr(v, RSTART, 1)
        bs_n = 0
        return
    }
    if (head == "[" || head == "{") {
        if (flow_balance(v) == 0) flow(path, v)
        else { fl_on = 1; fl_path = path; fl_buf = v }
        return
    }
    if (head == "\"" || head == "'") { start_quoted(path, v, owner); return }
    sc_on = 1; sc_path = path; sc_ind = owner; sc_kind = "plain"; sc_buf = v
}

# A line while a block scalar is open: returns 1 when the line belongs to it.
function block_line(line,    ind) {
    if (line ~ /^[ \t]*$/) { bs_line[++bs_n] = ""; return 1 }
    ind = indent_of(line)
    if (bs_ind == 0) { if (ind <= bs_owner) { finish_block(); return 0 } bs_ind = ind }
    if (ind < bs_ind) { finish_block(); return 0 }
    bs_line[++bs_n] = substr(line, bs_ind + 1)
    return 1
}

function finish_block(    last, i, out, l, p) {
    bs_on = 0
    last = bs_n
    while (last > 0 && bs_line[last] == "") last--
    out = bs_line[1]
    for (i = 2; i <= last; i++) {
        l = bs_line[i]; p = bs_line[i - 1]
        if (bs_style == "|") out = out "\n" l
        else if (l == "") out = out "\n"
        else if (p == "") out = out l
        else if (l ~ /^[ \t]/ || p ~ /^[ \t]/) out = out "\n" l
        else out = out " " l
    }
    if (last == 0) out = ""
    if (bs_chomp == "clip" && last > 0) out = out "\n"
    if (bs_chomp == "keep") { out = out "\n"; for (i = last + 1; i <= bs_n; i++) out = out "\n" }
    emit(bs_path, out)
}

function map_entry(ind, c,    p, path, v) {
    p = key_colon(c, 1)
    if (p == 0) return
    path = join(fp[depth], scalar(substr(c, 1, p - 1)))
    v = trim(substr(c, p + 1))
    if (v == "") pend(path, ind)
    else value(path, v, ind)
}

function entry(ind, c,    path, r, off) {
    if (c !~ /^-( |$)/) { if (fk[depth] == "m") map_entry(ind, c); return }
    if (fk[depth] != "s") return
    path = join(fp[depth], ++fx[depth])
    r = substr(c, 2); off = ind + 1
    while (substr(r, 1, 1) == " ") { r = substr(r, 2); off++ }
    if (r == "") { pend(path, ind); return }
    if (r ~ /^-( |$)/) { push(off, path, "s"); entry(off, r); return }
    if (r !~ /^["'[{]/ && key_colon(r, 0) > 0 || r ~ /^["']/ && key_colon(r, 1) > 0) {
        push(off, path, "m"); map_entry(off, r); return
    }
    value(path, r, ind)
}

{
    line = $0; sub(/\r$/, "", line)
    if (done) next
    if (bs_on && block_line(line)) next
    if (sc_on && sc_kind != "plain" && sc_open) { continue_quoted(line); next }
    c = strip_comment(line)
    if (fl_on) {
        fl_buf = fl_buf " " trim(c)
        if (flow_balance(fl_buf) <= 0) { fl_on = 0; flow(fl_path, fl_buf) }
        next
    }
    if (c ~ /^[ \t]*$/) next
    if (c ~ /^(---|\.\.\.)( |$)/) { if (seen) done = 1; next }
    seen = 1
    ind = indent_of(c); c = trim(c)
    if (sc_on) { if (ind > sc_ind) { sc_buf = sc_buf " " c; next } flush_scalar() }
    if (pend_on) {
        pend_on = 0
        if (ind > pend_ind && c !~ /^-( |$)/ && key_colon(c, c ~ /^["']/) == 0) {
            value(pend_path, c, pend_ind); next
        }
        if (ind > pend_ind || ind == pend_ind && c ~ /^-( |$)/) push(ind, pend_path, c ~ /^-( |$)/ ? "s" : "m")
        else emit(pend_path, "")
    }
    while (depth > 0 && (fi[depth] > ind || fi[depth] == ind && fk[depth] == "s" && c !~ /^-( |$)/)) depth--
    if (depth == 0) {
        if (c ~ /^[[{]/) { value("", c, -1); next }
        push(ind, "", c ~ /^-( |$)/ ? "s" : "m")
    }
    entry(ind, c)
}

END {
    if (bs_on) finish_block()
    if (fl_on) flow(fl_path, fl_buf)
    flush_scalar()
    if (pend_on) emit(pend_path, "")
}
