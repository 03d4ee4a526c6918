#!/usr/bin/env bash
# Builds the Debian package into <target dir>/debian/: the binary, the systemd unit
# (fulcrum.service), /etc/fulcrum/fulcrum.toml (a conffile that passes `fulcrum check`), the
# logrotate entry, man pages and bash/zsh/fish completions. Needs cargo-deb
# (`cargo install --locked cargo-deb`).
#
#   packaging/build-deb.sh                 # release build (what to ship)
#   packaging/build-deb.sh --profile dev   # the debug binary (CI checks the packaging with it)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [[ ${1:-} == --profile ]]; then
    profile=${2:?--profile needs a name}
fi
cargo build --locked --profile "$profile" -p fulcrum
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
case $profile in dev) dir=debug ;; *) dir=$profile ;; esac
bin=$target/$dir/fulcrum
# Generated files go where the package metadata (crates/fulcrum/Cargo.toml) looks for them
# (not under target/: cargo-deb treats that path as its own).
out=packaging/out
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
"$bin" manpages "$out/man"
gzip -9n "$out"/man/*.1
"$bin" completions bash >"$out/completions/fulcrum.bash"
"$bin" completions zsh >"$out/completions/_fulcrum"
"$bin" completions fish >"$out/completions/fulcrum.fish"
cargo deb -p fulcrum --no-build --profile "$profile" --fast
