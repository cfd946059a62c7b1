#!/usr/bin/env bash
# Idempotent project setup: system packages, npm deps (with native addons), build.
# Fast when everything is already present. Used by `npm test`, `npm run demo`, `npm run bench`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- apt packages
APT_PACKAGES=(softhsm2 socat opensc p11-kit libmsgpack-dev libseccomp-dev zlib1g-dev valgrind make gcc clang libclang-rt-14-dev util-linux)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} > 0)); then
  log "missing Debian packages: ${missing[*]}"
  if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    die "not root and sudo is not available; please install these packages: ${missing[*]}
       e.g. (as root): apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  fi
  log "apt-get update"
  "${SUDO[@]}" apt-get update -qq >&2
  log "apt-get install ${missing[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  log "Debian packages present"
fi

# ---------------------------------------------------------------- npm deps
need_install=0
if [[ ! -f node_modules/.package-lock.json ]]; then
  need_install=1
elif [[ -f package-lock.json && package-lock.json -nt node_modules/.package-lock.json ]]; then
  need_install=1
fi

if ((need_install)); then
  # npm install, not npm ci: the registry this runs against may lack the
  # other platforms' optional packages (esbuild, rollup, msgpackr-extract
  # builds), which then never reach package-lock.json, and npm ci refuses a
  # lock without them. npm install still takes the locked versions.
  log "npm install"
  npm install --no-audit --no-fund >&2
else
  log "node_modules up to date"
fi

# npm 11 silently skips dependency install scripts unless approved (allowScripts),
# which leaves native addons unbuilt. Check that the ones in use actually load:
# pkcs11js (tests and bench load PKCS#11 modules directly with it) and
# msgpackr-extract (msgpackr's native string decoding, which the daemon and
# the client get whenever it loads).
addon_fail=()
node -e "require('pkcs11js')" >/dev/null 2>&1 || addon_fail+=(pkcs11js)
node -e "if (typeof require('msgpackr-extract').extractStrings !== 'function') process.exit(1)" >/dev/null 2>&1 || addon_fail+=(msgpackr-extract)
if ((${#addon_fail[@]} > 0)); then
  die "native addon(s) failed to load: ${addon_fail[*]}.
       npm 11 skips dependency install scripts unless they are approved in package.json \"allowScripts\"
       (pkcs11js, msgpackr-extract, esbuild). Approve them, then run:
         rm -rf node_modules && npm install
       or rebuild in place: npm rebuild ${addon_fail[*]}
       (details: node -e \"require('${addon_fail[0]}')\")"
fi

# ---------------------------------------------------------------- build
TSC=node_modules/.bin/tsc
[[ -x "$TSC" ]] || die "$TSC not found (is typescript installed? try: npm install)"
log "tsc -p tsconfig.json"
"$TSC" -p tsconfig.json

[[ -f native/Makefile ]] || die "native/Makefile not found; cannot build the native executor"
log "make -C native"
make -s -C native >&2
log "make -C native/addon"
make -s -C native/addon >&2
# the project's own addon (flock, tty set-up, poll watches for the transports)
node -e "require('./native/build/p11bridge_io.node')" >&2 \
  || die "native/build/p11bridge_io.node was built but does not load (see the error above)"

log "done"
