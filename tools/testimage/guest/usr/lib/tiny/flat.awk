# flat.awk - query the "PATH<TAB>VALUE" lines written by yaml2flat.awk.
#   awk -v op=get -v key=users/0/name -f flat.awk FILE   print the value, unescaped, with no
#                                                        newline added; exit 1 when absent
#   awk -v op=has -v key=runcmd/0 -f flat.awk FILE       exit 0 when PATH holds a scalar
#   awk -v op=items -v key=users -f flat.awk FILE        print the names of the children of
#                                                        PATH (list indexes or keys), in order
BEGIN { FS = "\t"; found = 0 }

function unesc(s,    out, i, c) {
    out = ""
    while ((i = index(s, "\\")) > 0) {
        c = substr(s, i + 1, 1)
        out = out substr(s, 1, i - 1) (c == "n" ? "\n" : c == "t" ? "\t" : c)
        s = substr(s, i + 2)
    }
    return out s
}

op == "get" && $1 == key { printf "%s", unesc(substr($0, length($1) + 2)); found = 1; exit }
op == "has" && $1 == key { found = 1; exit }
op == "items" && index($1, key "/") == 1 {
    rest = substr($1, length(key) + 2); sub(/\/.*/, "", rest)
    if (!(rest in seen)) { seen[rest] = 1; print rest }
    found = 1
}

END { exit found ? 0 : 1 }
