#!/usr/bin/env bash
# Installs every toolchain the MBXP checker (harness/evaluation/mbxp) needs, on Debian 12:
# g++, php-cli, ruby, node/npm (Debian's, only when no node is present), typescript + lodash
# in a fixed npm prefix that the checker reads (MBXP_NODE_PREFIX, default /opt/mbxp-node), and
# Debian's python3, which runs python answers as "nobody" when the harness's own interpreter lives
# where that user cannot read it (a pyenv under /root).
# Idempotent: every step is skipped when its tool is already there, so a second run takes seconds.
# Used by Dockerfile.eval and CI; run it as root (or with sudo available).
set -euo pipefail

PREFIX="${MBXP_NODE_PREFIX:-/opt/mbxp-node}"
# The versions the reference labels were made with; TypeScript must stay 5.x (7.x drops --target es5).
TYPESCRIPT_VERSION=5.9.3
LODASH_VERSION=4.18.1

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi

missing_packages=()
command -v g++ >/dev/null || missing_packages+=(g++)
command -v php >/dev/null || missing_packages+=(php-cli)
command -v ruby >/dev/null || missing_packages+=(ruby)
command -v node >/dev/null || missing_packages+=(nodejs)
command -v npm >/dev/null || missing_packages+=(npm)
[ -x /usr/bin/python3 ] || missing_packages+=(python3)

if [ "${#missing_packages[@]}" -gt 0 ]; then
    echo "install_eval_toolchains: apt-get install ${missing_packages[*]}"
    $SUDO apt-get update
    # ca-certificates: npm fetches from its registry over https.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates "${missing_packages[@]}"
fi

installed_version() {  # prints the version of npm package $1 in PREFIX, or nothing
    node -p "require('$PREFIX/node_modules/$1/package.json').version" 2>/dev/null || true
}

if [ "$(installed_version typescript)" != "$TYPESCRIPT_VERSION" ] \
    || [ "$(installed_version lodash)" != "$LODASH_VERSION" ]; then
    echo "install_eval_toolchains: npm install typescript@$TYPESCRIPT_VERSION lodash@$LODASH_VERSION into $PREFIX"
    $SUDO mkdir -p "$PREFIX"
    # --no-save with no package.json keeps the prefix to exactly these two packages (no @types/node:
    # the checker's TypeScript verdicts rely on tsc NOT knowing node's 'assert' module).
    $SUDO npm install --prefix "$PREFIX" --no-save --no-audit --no-fund \
        "typescript@$TYPESCRIPT_VERSION" "lodash@$LODASH_VERSION"
fi

if [ -e "$PREFIX/node_modules/@types/node" ]; then
    echo "install_eval_toolchains: remove $PREFIX/node_modules/@types/node, it changes TypeScript verdicts" >&2
    exit 1
fi

echo "install_eval_toolchains: g++ $(g++ -dumpfullversion), $(php -r 'echo "php ", PHP_VERSION;'), $(ruby -e 'print "ruby ", RUBY_VERSION'), node $(node --version), tsc $(installed_version typescript), lodash $(installed_version lodash) in $PREFIX"
