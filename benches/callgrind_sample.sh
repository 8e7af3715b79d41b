#!/bin/sh
# Counts, with callgrind, the instructions of one sample and of its free at a depth of 16 frames (the
# `deep16*` workloads of benches/workloads.rs), and with `--whole`, the instructions of whole workloads with
# and without the profiler, beside jemalloc's own heap profiler over jemalloc (at the same rate) where the bench
# can be built with it (feature `jemalloc-bench`, x86_64 Linux; building jemalloc takes a few minutes once).
#
#   benches/callgrind_sample.sh [--whole]
#
# A sample's record is what `track` costs (stack, bucket, live entry, totals, peak); its
# free, what `free_if_sampled` costs (or `untrack` and `record_free`, as a reallocation frees); the inner
# allocator's own free is not counted. Both are inclusive counts divided by the pairs the workload makes.
set -eu
cd "$(dirname "$0")/.."
pairs=100000
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
features=
if [ "${1:-}" = --whole ] && [ "$(uname -sm)" = "Linux x86_64" ]; then
    features="--features jemalloc-bench"
fi
# shellcheck disable=SC2086 # $features is one flag and its value, or nothing
bin=$(cargo bench --bench workloads $features --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*workloads-[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build the workloads bench" >&2; exit 1; }

# Inclusive instructions of the functions whose names end with $2, in callgrind output $1.
inclusive() {
    callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
        awk -v name="$2" '$0 ~ name " \\[" { gsub(",", "", $1); sum += $1 } END { print sum + 0 }'
}

run() { # workload allocator
    # jemalloc's profiler samples at 2^19 bytes, as heap-sampler's default rate; the other variants leave
    # jemalloc's profiler off.
    conf=prof:false
    [ "$2" = jemalloc-prof ] && conf=prof:true,prof_active:true,lg_prof_sample:19
    _RJEM_MALLOC_CONF=$conf HEAP_SAMPLER_BENCH_WORKLOAD=$1 HEAP_SAMPLER_BENCH_ALLOCATOR=$2 valgrind --tool=callgrind \
        --callgrind-out-file="$out/$1.$2" "$bin" >/dev/null 2>&1
    echo "$out/$1.$2"
}

total() {
    callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}

echo "instructions per sample, $pairs sampled allocate+free pairs 16 frames deep"
for workload in deep16 deep16x8 deep16exact; do
    file=$(run $workload sampled)
    record=$(inclusive "$file" 'allocator::track')
    untrack=$(inclusive "$file" 'allocator::untrack')
    free=$(inclusive "$file" 'allocator::record_free')
    free_maybe=$(inclusive "$file" 'allocator::free_if_sampled')
    awk -v w=$workload -v r="$record" -v u="$untrack" -v f="$free" -v m="$free_maybe" -v n=$pairs \
        'BEGIN { printf "%-12s record %6.0f  free %5.0f\n", w, r / n, (u + f + m) / n }'
done

if [ "${1:-}" = --whole ]; then
    echo "whole workloads: instructions with heap-sampler at 512 KiB / bare System, and with jemalloc's"
    echo "profiler at the same rate / jemalloc without it"
    for workload in churn churn2 json index; do
        bare=$(total "$(run $workload bare)")
        sampled=$(total "$(run $workload sampled)")
        line=$(awk -v w=$workload -v b="$bare" -v s="$sampled" \
            'BEGIN { printf "%-8s bare %14.0f  sampled %14.0f  %.4fx", w, b, s, s / b }')
        if [ -n "$features" ]; then
            jemalloc=$(total "$(run $workload jemalloc)")
            prof=$(total "$(run $workload jemalloc-prof)")
            line=$line$(awk -v j="$jemalloc" -v p="$prof" \
                'BEGIN { printf "   jemalloc %14.0f  profiler %14.0f  %.4fx", j, p, p / j }')
        fi
        echo "$line"
    done
fi
