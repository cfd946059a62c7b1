#!/usr/bin/env bash
# npm test: the CI tiers, in order, stopping at the first one that fails.
#   1. setup        scripts/setup.sh: Debian packages, npm deps, builds
#   2. lint         npm run lint (ESLint)
#   3. typecheck    npm run typecheck (tsc: sources, then tests)
#   4. unit         vitest run test/unit: framing, codec, config, policy, golden vectors
#   5. integration  vitest run test/integration: real daemon, SoftHSM2, socat ptys (minutes)
#
# Arguments are vitest options for both vitest tiers, e.g.
#   npm test -- --reporter=default --reporter=json --outputFile=.tmp/vitest.json
# With an --outputFile (or --outputFile.json), each tier writes its own report
# next to it (vitest.unit.json, vitest.integration.json) and the file asked
# for gets both tiers merged (counts summed, test results concatenated); it
# is rewritten after each tier, so it always covers the tiers that ran.
#
# Environment:
#   P11BRIDGE_TEST_INTEGRATION_FILES  the integration tier's files or filters
#                                     (space-separated; default test/integration)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'test: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- arguments
# The json reporter's output file, whichever way it was given.
out_file=''
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --outputFile=* | --outputFile.json=*)
      out_file="${args[i]#*=}" ;;
    --outputFile | --outputFile.json)
      if ((i + 1 < ${#args[@]})); then out_file="${args[i + 1]}"; fi ;;
  esac
done

# The arguments for one tier: the output file replaced by the tier's own.
tier_args=()
set_tier_args() { # tier-report-path
  tier_args=()
  local skip=0 a
  for a in "${args[@]}"; do
    if ((skip)); then skip=0; continue; fi
    case "$a" in
      --outputFile=* | --outputFile.json=*) tier_args+=("${a%%=*}=$1") ;;
      --outputFile | --outputFile.json) tier_args+=("$a=$1"); skip=1 ;;
      *) tier_args+=("$a") ;;
    esac
  done
}

tier_report() { # tier name -> its report's path
  local base="${out_file%.json}"
  printf '%s.%s.json' "$base" "$1"
}

reports=()
if [[ -n "$out_file" ]]; then
  mkdir -p "$(dirname "$out_file")"
  # no report of an earlier run may pass for this one's
  rm -f "$out_file" "$(tier_report unit)" "$(tier_report integration)"
fi

# Writes $out_file from the reports of the vitest tiers that ran so far.
merge_reports() {
  [[ -n "$out_file" ]] || return 0
  node - "$out_file" "${reports[@]}" <<'EOF'
const fs = require('node:fs');
const [out, ...files] = process.argv.slice(2);
const parts = files.filter((f) => fs.existsSync(f)).map((f) => JSON.parse(fs.readFileSync(f, 'utf8')));
// vitest's json report (jest's format): numbers are counts, except startTime;
// success only if every tier succeeded, other flags (snapshot.failure ...) if any did.
const merge = (a, b, key) => {
  if (a === undefined) return b;
  if (b === undefined) return a;
  if (typeof a === 'number' && typeof b === 'number') return key === 'startTime' ? Math.min(a, b) : a + b;
  if (typeof a === 'boolean' && typeof b === 'boolean') return key === 'success' ? a && b : a || b;
  if (Array.isArray(a) && Array.isArray(b)) return [...a, ...b];
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const o = {};
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) o[k] = merge(a[k], b[k], k);
    return o;
  }
  return a;
};
if (parts.length === 0) process.exit(0);
fs.writeFileSync(out, JSON.stringify(parts.reduce((a, b) => merge(a, b, ''))));
EOF
}

# ---------------------------------------------------------------- tiers
fail() { # tier status
  log "FAILED: tier '$1' (exit $2); later tiers not run"
  exit "$2"
}

run_tier() { # name command...
  local name="$1"
  shift
  log "tier '$name': $*"
  local status=0
  "$@" || status=$?
  if ((status != 0)); then fail "$name" "$status"; fi
  log "tier '$name' passed"
}

run_vitest_tier() { # name files...
  local name="$1"
  shift
  local report=''
  if [[ -n "$out_file" ]]; then
    report="$(tier_report "$name")"
    reports+=("$report")
  fi
  set_tier_args "$report"
  log "tier '$name': vitest run $* ${tier_args[*]}"
  local status=0
  node_modules/.bin/vitest run "$@" "${tier_args[@]}" || status=$?
  merge_reports
  if ((status != 0)); then fail "$name" "$status"; fi
  log "tier '$name' passed"
}

run_tier setup bash scripts/setup.sh
run_tier lint npm run --silent lint
run_tier typecheck npm run --silent typecheck
run_vitest_tier unit test/unit
read -r -a integration_files <<<"${P11BRIDGE_TEST_INTEGRATION_FILES:-test/integration}"
run_vitest_tier integration "${integration_files[@]}"
log "all tiers passed"
