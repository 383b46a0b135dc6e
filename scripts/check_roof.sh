#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Checks attn's DRAM roofs against an independent tool: `attn bench peak` (its STREAM-style read
# and triad) beside likwid-bench's load and stream-triad kernels, interleaved ROUNDS times (3 by
# default) because a shared machine's bandwidth drifts from one minute to the next, so only
# figures taken close together compare. Prints every figure and the ratios attn / likwid per
# thread count and round. Informational: exits 0 whatever the ratios are (2 on usage errors).
#
#   scripts/check_roof.sh [ATTN [MAX_THREADS]]    ATTN defaults to build/attn, MAX_THREADS to
#                                                 every CPU
#   ROUNDS=5 LIKWID_SIZE=2GB scripts/check_roof.sh build/attn 2
#
# likwid-bench is not installed by scripts/install-deps.sh; on Debian `apt-get install likwid`
# provides it. Without it only attn's figures are printed. It is run as
# `likwid-bench -t load_avx512 -W N:1GB:<threads>` and `-t stream_avx512` (load_avx and
# stream_avx_fma where the CPU has no AVX-512). likwid counts bytes as STREAM does (8 per
# element and stream, 24 per triad element) and, like attn and STREAM, uses ordinary stores.
#
# attn writes its roofs to a temporary cache file ($ATTN_PEAK_CACHE), so this check leaves the
# cached roofs `attn bench kernel` uses untouched.
set -euo pipefail

usage() {
  sed -n '3,11p' "$0" | sed 's/^# \{0,1\}//'
}

if [[ $# -gt 2 ]]; then
  usage >&2
  exit 2
fi
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi
attn="${1:-build/attn}"
max_threads="${2:-$(nproc)}"
rounds="${ROUNDS:-3}"
size="${LIKWID_SIZE:-1GB}"
if [[ ! -x "$attn" ]]; then
  echo "check_roof.sh: '$attn' is not an executable attn (build it, or pass its path)" >&2
  exit 2
fi
if ! [[ "$max_threads" =~ ^[1-9][0-9]*$ && "$rounds" =~ ^[1-9][0-9]*$ ]]; then
  echo "check_roof.sh: MAX_THREADS and ROUNDS must be positive integers" >&2
  exit 2
fi

have_likwid=0
if command -v likwid-bench > /dev/null; then
  have_likwid=1
  if grep -qw avx512f /proc/cpuinfo; then
    load_kernel=load_avx512
    stream_kernel=stream_avx512
  else
    load_kernel=load_avx
    stream_kernel=stream_avx_fma
  fi
else
  echo "likwid-bench not found (apt-get install likwid): attn's figures only"
fi

cache="$(mktemp "${TMPDIR:-/tmp}/attn-check-roof.XXXXXX")"
json="$(mktemp "${TMPDIR:-/tmp}/attn-check-roof-json.XXXXXX")"
trap 'rm -f "$cache" "$json"' EXIT

# GB/s (10^9 bytes) from likwid-bench's "MByte/s:" line; empty when it failed.
likwid_gbps() {
  likwid-bench -t "$1" -W "N:$size:$2" 2> /dev/null |
    awk '/^MByte\/s:/ { printf "%.2f", $2 / 1000 }' || true
}

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.3f", a / b; else printf "-" }'
}

echo "attn: ATTN_PEAK_CACHE=<temp> $attn bench peak --reset --json --max-threads $max_threads"
if [[ $have_likwid == 1 ]]; then
  echo "likwid: likwid-bench -t $load_kernel|$stream_kernel -W N:$size:<threads>"
fi
echo "attn: best [median] of its repetitions (STREAM's rule); likwid (lk): its one figure, the"
echo "mean over its iterations. Ratios: attn best / likwid, attn median / likwid. GB = 1e9 B."
printf '%-6s %7s %17s %17s %9s %9s %15s %15s\n' round threads "attn read" "attn triad" \
  "lk load" "lk triad" "read/load" "triad/triad"
results=()  # "threads read_best read_median triad_best triad_median load stream", per round
for round in $(seq 1 "$rounds"); do
  ATTN_PEAK_CACHE="$cache" "$attn" bench peak --reset --json --max-threads "$max_threads" > "$json"
  for threads in $(seq 1 "$max_threads"); do
    read -r read_best read_median triad_best triad_median < <(python3 - "$json" "$threads" << 'EOF'
import json, sys
peak = json.load(open(sys.argv[1]))
p = next(p for p in peak["points"] if p["threads"] == int(sys.argv[2]))
print(f"{p['dram_gbps']:.2f} {p['dram_gbps_median']:.2f} "
      f"{p['dram_triad_gbps']:.2f} {p['dram_triad_gbps_median']:.2f}")
EOF
    )
    load="" stream=""
    if [[ $have_likwid == 1 ]]; then
      load="$(likwid_gbps "$load_kernel" "$threads")"
      stream="$(likwid_gbps "$stream_kernel" "$threads")"
    fi
    results+=("$threads $read_best $read_median $triad_best $triad_median ${load:-0} ${stream:-0}")
    printf '%-6s %7s %7s [%7s] %7s [%7s] %9s %9s %7s %7s %7s %7s\n' "$round" "$threads" \
      "$read_best" "$read_median" "$triad_best" "$triad_median" "${load:--}" "${stream:--}" \
      "$(ratio "$read_best" "$load")" "$(ratio "$read_median" "$load")" \
      "$(ratio "$triad_best" "$stream")" "$(ratio "$triad_median" "$stream")"
  done
done

# Over all rounds, per thread count: the highest figure each tool reached (STREAM's best-of rule
# applied to the whole session), their ratio, and the median of the per-round median ratios.
echo
echo "all rounds: the highest figure of each and their ratio; median of the rounds' median ratios"
printf '%s\n' "${results[@]}" | awk '
  function median(list, n,   i, j, t) {
    for (i = 2; i <= n; i++) {
      for (j = i; j > 1 && list[j - 1] > list[j]; j--) {
        t = list[j]; list[j] = list[j - 1]; list[j - 1] = t
      }
    }
    return n % 2 ? list[(n + 1) / 2] : (list[n / 2] + list[n / 2 + 1]) / 2
  }
  {
    t = $1; n[t]++; seen[t] = 1
    if ($2 > rb[t]) rb[t] = $2
    if ($4 > tb[t]) tb[t] = $4
    if ($6 > lb[t]) lb[t] = $6
    if ($7 > sb[t]) sb[t] = $7
    rr[t, n[t]] = $6 > 0 ? $3 / $6 : 0
    tr[t, n[t]] = $7 > 0 ? $5 / $7 : 0
  }
  END {
    printf "%7s %10s %9s %10s %9s %10s %12s %14s %16s\n", "threads", "attn read", "lk load", \
      "attn triad", "lk triad", "read/load", "triad/triad", "med read/load", "med triad/triad"
    for (t = 1; t in seen; t++) {
      for (i = 1; i <= n[t]; i++) { a[i] = rr[t, i]; b[i] = tr[t, i] }
      read_ratio = "-"; triad_ratio = "-"
      if (lb[t] > 0) read_ratio = sprintf("%.3f", rb[t] / lb[t])
      if (sb[t] > 0) triad_ratio = sprintf("%.3f", tb[t] / sb[t])
      printf "%7d %10.2f %9.2f %10.2f %9.2f %10s %12s %14.3f %16.3f\n", t, rb[t], lb[t], \
        tb[t], sb[t], read_ratio, triad_ratio, median(a, n[t]), median(b, n[t])
    }
  }'
exit 0
