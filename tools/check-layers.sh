#!/usr/bin/env bash
# Checks the layering rules of docs/architecture.md on the sources' imports:
#   - each C module is imported by exactly one Swift module (its wrapper);
#   - protocol cores (RPCCore, TollgateServices, RoleCore, ThrottleCore, ThriftCore) and
#     storage import no NIO and no C module;
#   - role modules (every module declaring a RoleModule) import no NIO and
#     no C module.
# Usage: tools/check-layers.sh [sources-dir]   (default: Sources)
#        tools/check-layers.sh --self-test      (proves each rule can fail)
set -euo pipefail
cd "$(dirname "$0")/.."

check() {
    local sources=$1 failed=0
    # C module → the one Swift module allowed to import it.
    declare -A owner=(
        [CLMDB]=LMDBKit [COpenSSL]=OpenSSLKit [CProtobufC]=TollgateProto [CTollgateProto]=TollgateProto
        [CSystemd]=SystemdKit [CYAML]=YAMLKit
    )
    # module<TAB>imported module, for every Swift file
    local imports
    imports=$(find "$sources" -name '*.swift' | while read -r file; do
        module=${file#"$sources"/}; module=${module%%/*}
        sed -nE 's/^[[:space:]]*(@_[a-zA-Z]+[[:space:]]+)?((public|package|internal|fileprivate|private)[[:space:]]+)?import[[:space:]]+([A-Za-z0-9_]+).*/\4/p' "$file" |
            while read -r imported; do printf '%s\t%s\t%s\n' "$module" "$imported" "$file"; done
    done | sort -u)

    while IFS=$'\t' read -r module imported file; do
        [ -n "$module" ] || continue
        if [ -n "${owner[$imported]:-}" ] && [ "${owner[$imported]}" != "$module" ]; then
            echo "layering: $file: $module imports C module $imported (only ${owner[$imported]} may)" >&2
            failed=1
        fi
    done <<< "$imports"

    # Modules that must stay free of NIO and C: the cores, storage, and role modules.
    local nio_free="RPCCore TollgateServices RoleCore TollgateStorage ThrottleCore ThriftCore"
    nio_free+=" $(grep -rlE ':[[:space:]]*RoleModule[[:space:]]*\{' "$sources" 2>/dev/null | sed -E "s#^$sources/([^/]+)/.*#\1#" | sort -u | tr '\n' ' ')"
    for module in $nio_free; do
        while IFS=$'\t' read -r importer imported file; do
            [ "$importer" = "$module" ] || continue
            case "$imported" in
                NIO*|_NIO*|C[A-Z]*)
                    echo "layering: $file: $module must not import $imported (cores, storage and role logic stay free of NIO and C)" >&2
                    failed=1 ;;
            esac
        done <<< "$imports"
    done
    return $failed
}

if [ "${1:-}" = "--self-test" ]; then
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    violation() {  # <module> <file content>: the check must refuse it
        rm -rf "$scratch/Sources"; mkdir -p "$scratch/Sources/$1"
        printf '%s\n' "$2" > "$scratch/Sources/$1/File.swift"
        if check "$scratch/Sources" 2>/dev/null; then echo "check-layers self-test: missed: $1: $2" >&2; exit 1; fi
    }
    violation RPCCore 'import NIOCore'
    violation ThrottleCore 'import NIOPosix'
    violation ThriftCore 'import NIOPosix'
    violation TollgateWidgets $'import NIOPosix\nstruct WidgetsModule: RoleModule {'
    violation TollgateWidgets $'internal import CLMDB\nstruct WidgetsModule: RoleModule {'
    violation TollgateNode 'import COpenSSL'
    rm -rf "$scratch/Sources"; mkdir -p "$scratch/Sources/LMDBKit" "$scratch/Sources/RPCNIO"
    echo 'internal import CLMDB' > "$scratch/Sources/LMDBKit/A.swift"
    echo 'public import NIOCore' > "$scratch/Sources/RPCNIO/A.swift"
    check "$scratch/Sources" || { echo "check-layers self-test: refused a correct tree" >&2; exit 1; }
    echo "check-layers self-test: every rule refuses its violation"
    exit 0
fi

check "${1:-Sources}" && echo "layering: every module keeps to its layer"
