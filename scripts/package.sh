#!/usr/bin/env bash
# Builds dist/gateway_<version>_<arch>.deb for the architecture it runs on (arm64 on a Pi or any
# arm64 Debian 12, amd64 here) with dpkg-deb, from the release build (scripts/build-release.sh,
# run first if the binary is missing):
#   /usr/bin/gateway                   stripped; its debug info in dist/gateway.debug (linked by
#                                      .gnu_debuglink: copy it to /usr/lib/debug/usr/bin/ for gdb)
#   /lib/systemd/system/gateway.service  deploy/gateway.service, pointed at /usr/bin
#   /etc/gateway/gateway.toml          the commented example (a conffile)
#   /usr/share/man/man1/gateway.1.gz   from `gateway --help` and each subcommand's help
#   /usr/share/gateway/profiles/       the shipped device profiles (profiles/*.toml)
#   bash, zsh and fish completions     from swift-argument-parser
#   /usr/share/doc/gateway/            README, copyright, changelog, the example config
# Depends: computed from the binary by dpkg-shlibdeps (libc6, libmodbus5, libsqlite3-0).
# Needs: dpkg-dev (dpkg-shlibdeps), binutils (objcopy, strip). Usage: scripts/package.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-.build/release/gateway}"
if [ ! -x "$BIN" ]; then ./scripts/build-release.sh; fi

# The version comes from one place: GatewayCommand.release (what `gateway --version` prints first).
VERSION="$("$BIN" --version | awk '{print $1}')"
ARCH="$(dpkg --print-architecture)"
DEB="dist/gateway_${VERSION}_${ARCH}.deb"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
DOC="$ROOT/usr/share/doc/gateway"
mkdir -p dist "$ROOT/DEBIAN" "$ROOT/usr/bin" "$ROOT/lib/systemd/system" "$ROOT/etc/gateway" "$DOC/examples" \
    "$ROOT/usr/share/man/man1" "$ROOT/usr/share/bash-completion/completions" "$ROOT/usr/share/zsh/vendor-completions" \
    "$ROOT/usr/share/fish/vendor_completions.d"

# The executable, stripped, with its debug info kept beside the package.
objcopy --only-keep-debug "$BIN" dist/gateway.debug
strip --strip-all -o "$ROOT/usr/bin/gateway" "$BIN"
objcopy --add-gnu-debuglink=dist/gateway.debug "$ROOT/usr/bin/gateway"
chmod 0755 "$ROOT/usr/bin/gateway"
GW="$ROOT/usr/bin/gateway"

sed -e 's|/usr/local/bin/gateway|/usr/bin/gateway|' -e 's|^Documentation=.*|Documentation=man:gateway(1) file:///usr/share/doc/gateway/README.md.gz|' \
    deploy/gateway.service > "$ROOT/lib/systemd/system/gateway.service"
install -m 0644 gateway.toml "$ROOT/etc/gateway/gateway.toml"
install -m 0644 gateway.toml "$DOC/examples/gateway.toml"
# Device profiles, where the binary looks for them (<prefix>/share/gateway/profiles beside /usr/bin).
mkdir -p "$ROOT/usr/share/gateway/profiles"
install -m 0644 profiles/*.toml "$ROOT/usr/share/gateway/profiles/"

# A man page from the built-in help (preformatted: the help is already laid out for a terminal).
{
    echo ".TH GATEWAY 1 \"$(date -u -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}" +%Y-%m-%d)\" \"gateway $VERSION\" \"User Commands\""
    echo ".SH NAME"
    echo "gateway \\- MQTT gateway for doors, gates, turnstiles and sensors (Modbus RTU/TCP, serial)"
    echo ".SH DESCRIPTION"
    echo ".nf"
    "$GW" --help | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./'
    for sub in run check simulate read write sign scan profiles; do
        echo
        "$GW" help "$sub" | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./'
    done
    echo ".fi"
    echo ".SH FILES"
    echo "/etc/gateway/gateway.toml, /etc/gateway/profiles (the site's device profiles), /usr/share/gateway/profiles (shipped), /var/lib/gateway (state), /usr/share/doc/gateway/README.md.gz"
} > "$WORK/gateway.1"
gzip -9n < "$WORK/gateway.1" > "$ROOT/usr/share/man/man1/gateway.1.gz"

"$GW" --generate-completion-script bash | sed "1{/^#!/d}" > "$ROOT/usr/share/bash-completion/completions/gateway"
"$GW" --generate-completion-script zsh > "$ROOT/usr/share/zsh/vendor-completions/_gateway"
"$GW" --generate-completion-script fish > "$ROOT/usr/share/fish/vendor_completions.d/gateway.fish"

gzip -9n < README.md > "$DOC/README.md.gz"
# The changelog names this version (the one place it is written is GatewayCommand.release).
printf 'gateway (%s) unstable; urgency=medium\n\n  * Built from %s.\n\n -- gateway maintainers <maintainers@gateway.invalid>  %s\n' \
    "$VERSION" "$("$GW" --version)" "$(date -uR -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" | gzip -9n > "$DOC/changelog.gz"
install -m 0644 deploy/debian/copyright "$DOC/copyright"
install -m 0755 deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm "$ROOT/DEBIAN/"
echo "/etc/gateway/gateway.toml" > "$ROOT/DEBIAN/conffiles"

# Depends from the binary's own needs (dpkg-shlibdeps wants a debian/control beside it).
mkdir -p "$WORK/src/debian"
printf 'Source: gateway\n\nPackage: gateway\nArchitecture: any\n' > "$WORK/src/debian/control"
DEPENDS="$(cd "$WORK/src" && dpkg-shlibdeps -O -e "$GW" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')"
[ -n "$DEPENDS" ] || { echo "package.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

find "$ROOT" -type d -exec chmod 0755 {} +
find "$ROOT/usr/share" "$ROOT/etc" "$ROOT/lib" -type f -exec chmod 0644 {} +
cat > "$ROOT/DEBIAN/control" <<EOF
Package: gateway
Version: $VERSION
Architecture: $ARCH
Maintainer: gateway maintainers <maintainers@gateway.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
Depends: $DEPENDS, adduser
Recommends: mosquitto
Section: net
Priority: optional
Description: MQTT gateway for doors, gates, turnstiles and sensors
 Polls Modbus RTU/TCP devices and serial lines, publishes their values to an
 MQTT broker (with a last will and a status per device), and turns MQTT
 commands back into device writes. Home Assistant finds the devices by itself.
EOF
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" > /dev/null
echo "$DEB: $(du -k "$DEB" | cut -f1) KiB, installed $(du -sk --exclude=DEBIAN "$ROOT" | cut -f1) KiB; executable $(du -k "$GW" | cut -f1) KiB stripped; Depends: $DEPENDS"
