#!/usr/bin/env bash
# Fails, naming them, when tests that need a server feature were skipped on
# every server the suite ran on. DIR is the GEOSYNC_TEST_FEATURE_LOG
# directory scripts/test.sh gives the test runs; each such test appends
# "ran|skipped<TAB><binary>::<test><TAB><feature><TAB><server>" to
# DIR/records (tests/support/feature.rs).
set -euo pipefail
records=${1:?usage: feature-check.sh DIR}/records
echo "==> feature-gated tests ran on at least one server"
if [[ ! -s $records ]]; then
  # Every run of the suite has feature-gated tests: none recorded means
  # the log never reached them, and nothing here would be checked.
  echo "FAILED: no feature-gated test recorded whether it ran ($records is missing or empty); GEOSYNC_TEST_FEATURE_LOG did not reach the tests"
  exit 1
fi
never_ran=$(awk -F'\t' '
  $1 == "ran" { ran[$2] = 1 }
  $1 == "skipped" { skipped[$2] = skipped[$2] (skipped[$2] == "" ? "" : ", ") $4; needs[$2] = $3 }
  END { for (t in skipped) if (!(t in ran)) print "  " t " (needs " needs[t] "): skipped on " skipped[t] }' "$records" | sort)
if [[ -n $never_ran ]]; then
  echo "FAILED: these tests were skipped on every server, so what they check was never tested:"
  echo "$never_ran"
  exit 1
fi
awk -F'\t' '$1 == "ran" { print "  " $2 " ran on " $4 }' "$records" | sort -u
