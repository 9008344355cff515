#!/usr/bin/env bash
# `make deb`: builds the Debian binary package with dpkg-buildpackage from a
# staging copy of the working tree in which packaging/debian is debian/.
# Output: .build-deb/tollgate_<version>_<arch>.deb, checked by lintian.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/.build-deb"
stage="$out/tollgate"
tools/install-deps.sh package
rm -rf "$stage"
mkdir -p "$stage"
# Tracked and new (not ignored) files, as they are in the working tree.
(cd "$top" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$stage"
cp -r "$top/packaging/debian" "$stage/debian"
rm -f "$out"/tollgate_*.deb "$out"/tollgate_*.changes "$out"/tollgate_*.buildinfo
(cd "$stage" && SWIFT_SCRATCH="${SWIFT_SCRATCH:-$top/.build-release}" dpkg-buildpackage -b -us -uc)
deb=$(ls "$out"/tollgate_*.deb)
echo "built $deb"
# Errors fail the build; warnings kept are overridden, with the reason, in
# packaging/debian/tollgate.lintian-overrides.
lintian --fail-on error --info "$deb" || {
    echo "lintian found errors in $deb" >&2
    exit 1
}
