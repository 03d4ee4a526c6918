#!/usr/bin/env bash
# CI's check of the Debian package: build it (debug binary), install it with dpkg, and check
# what an operator gets: `fulcrum check` passes on the shipped /etc/fulcrum/fulcrum.toml,
# `systemd-analyze verify` accepts the unit, the man pages and completions are in place.
# Removes the package again at the end. Run as root (dpkg).
set -euo pipefail
cd "$(dirname "$0")/.."
packaging/build-deb.sh --profile dev
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
deb=$(ls -t "$target"/debian/fulcrum_*.deb | head -1)
echo "installing $deb"
dpkg -i "$deb"
trap 'dpkg --purge fulcrum >/dev/null' EXIT
/usr/bin/fulcrum check --config /etc/fulcrum/fulcrum.toml
unit=$(dpkg -L fulcrum | grep '/fulcrum\.service$')
systemd-analyze verify "$unit"
dpkg-query -W -f='${Conffiles}\n' fulcrum | grep -q /etc/fulcrum/fulcrum.toml
for f in /usr/share/man/man1/fulcrum.1.gz /usr/share/man/man1/fulcrum-run.1.gz \
    /usr/share/bash-completion/completions/fulcrum /usr/share/zsh/vendor-completions/_fulcrum \
    /usr/share/fish/vendor_completions.d/fulcrum.fish /etc/logrotate.d/fulcrum; do
    test -s "$f" || { echo "missing from the package: $f" >&2; exit 1; }
done
echo "package ok: $(basename "$deb")"
