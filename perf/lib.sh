# Shell helpers the perf scripts share (sourced, not run): the tools they
# need, the requests wrk had answered, free loopback ports, the nats-server to
# run, waiting for a server to answer, reading its metrics, and stopping it.

# require_tools PACKAGES TOOL...: exits 2 when a TOOL is not on PATH, naming
# the Debian PACKAGES to install.
require_tools() {
  local packages=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install $packages)" >&2; exit 2; }
  done
}

# answered_requests: the requests wrk (its report on stdin) had answered 2xx:
# those it sent less its "Non-2xx or 3xx responses".
answered_requests() {
  awk '/requests in/ { sent = $1 } /Non-2xx or 3xx responses:/ { refused = $NF } END { print sent - refused }'
}

# wrk_script SOURCE DEST: copies the wrk script SOURCE to DEST, with each
# request sent `Connection: close` when CLOSE=1 (a connection per request, as
# a field mod's LuaSocket sends).
wrk_script() {
  cp "$1" "$2"
  [[ ${CLOSE:-0} != 1 ]] || echo 'wrk.headers["Connection"] = "close"' >>"$2"
}

# free_port: a loopback port nobody listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# nats_server_bin: the nats-server to run (NATS_SERVER, tools/.venv/bin from
# the repository root, or PATH); empty when there is none.
nats_server_bin() {
  echo "${NATS_SERVER:-$( [[ -x tools/.venv/bin/nats-server ]] && echo tools/.venv/bin/nats-server || command -v nats-server || true)}"
}

# wait_listening PORT: until something accepts connections on loopback PORT, for at most 10 s.
wait_listening() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
}

# wait_ready PID URL: until URL answers 2xx; fails if PID exits first or after 30 s.
wait_ready() {
  local pid=$1 url=$2
  for _ in $(seq 300); do
    curl -sf -o /dev/null "$url" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "process $pid exited before $url answered" >&2; return 1; }
    sleep 0.1
  done
  echo "no answer from $url" >&2
  return 1
}

# start_jimbus BINARY DIR [FLAG...]: `BINARY serve` on free loopback ports,
# with a fresh data directory DIR/data, its log in DIR/server.log and FLAGs;
# sets pid, http and grpc, and returns once the server answers /ready. Set the
# caller's EXIT trap first, stopping "${pid:-}": pid is set before the wait,
# so a server that never gets ready is stopped too.
start_jimbus() {
  local binary=$1 dir=$2
  shift 2
  http=$(free_port) grpc=$(free_port)
  "$binary" serve --http "127.0.0.1:$http" --grpc "127.0.0.1:$grpc" --data-dir "$dir/data" "$@" \
    >"$dir/server.log" 2>&1 &
  pid=$!
  wait_ready "$pid" "http://127.0.0.1:$http/ready"
}

# server_metric NAME: the value of the sample NAME (with its labels, as
# /metrics writes them: 'name{label="v"}') on the server start_jimbus started
# (its $http); 0 while the server has not recorded it yet.
server_metric() {
  curl -s "http://127.0.0.1:$http/metrics" | awk -v k="$1" '$1 == k { v = $2 } END { print v + 0 }'
}

# stop PID: SIGTERM, then SIGKILL if it is still there after 10 s.
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# stat_ticks FILE: utime + stime so far, in clock ticks (getconf CLK_TCK per
# second), from a /proc stat file (a process's or a thread's). Fields are
# counted after the command name's closing parenthesis, which may hold spaces.
stat_ticks() {
  awk '{ sub(/.*\) /, ""); print $12 + $13 }' "$1"
}

# cpu_ticks PID: the process's utime + stime so far, in clock ticks.
cpu_ticks() {
  stat_ticks "/proc/$1/stat"
}

# machine_ticks: the whole machine's busy time so far, in clock ticks: user,
# nice, system, irq and softirq of /proc/stat's first line (every core). It
# holds what a server's own utime + stime leaves out: the kernel's worker
# threads (a direct write's completion and its cache flush run in them) and
# interrupts.
machine_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat
}

# thread_ticks PID: one line per thread of PID: its id, its name (comm, with
# spaces made _), its utime + stime so far, in clock ticks, how long it has
# been runnable but waiting for a CPU, in nanoseconds (the second field of
# /proc/PID/task/TID/schedstat; 0 where the kernel keeps no schedstat), and
# its voluntary and involuntary context switches (/proc/PID/task/TID/status).
thread_ticks() {
  local task name ticks waited switches
  for task in /proc/"$1"/task/*; do
    # A thread that ends between the listing and the reads is left out.
    name=$(tr ' ' _ 2>/dev/null <"$task/comm") && ticks=$(stat_ticks "$task/stat" 2>/dev/null) || continue
    waited=$(awk '{ print $2 }' "$task/schedstat" 2>/dev/null) || waited=0
    switches=$(awk '/^(non)?voluntary_ctxt_switches:/ { printf "%s ", $2 }' "$task/status" 2>/dev/null) || switches="0 0"
    echo "${task##*/} $name $ticks ${waited:-0} ${switches:-0 0}"
  done
}

# thread_deltas BEFORE AFTER FIELD: what each thread name gained in FIELD of
# two thread_ticks snapshots (3: CPU ticks, 4: nanoseconds waiting for a
# CPU, 5 and 6: voluntary and involuntary context switches), one "NAME
# AMOUNT" line per name. An io_uring worker (iou-wrk-TID) is
# counted as "io_uring(NAME)", NAME being the thread it works for.
thread_deltas() {
  awk -v field="$3" '
    FNR == 1 { file++ }
    file == 1 { before[$1] = $field; next }
    { name[$1] = $2; gained[$1] = $field - ($1 in before ? before[$1] : 0) }
    END {
      for (tid in gained) {
        group = name[tid]
        if (match(group, /^iou-wrk-[0-9]+$/)) {
          owner = substr(group, 9)
          group = "io_uring(" (owner in name ? name[owner] : owner) ")"
        }
        by[group] += gained[tid]
      }
      for (group in by) printf "%s %.0f\n", group, by[group]
    }' "$1" "$2"
}

# thread_split BEFORE AFTER TOTAL_TICKS: the share of TOTAL_TICKS (the
# process's CPU over the run) each thread name took between two thread_ticks
# snapshots, on one line (thread_deltas); what threads that ended during the
# run spent is "ended".
thread_split() {
  thread_deltas "$1" "$2" 3 | awk -v total="$3" '
    { by[$1] = $2; sum += $2 }
    END {
      if (total > sum) by["ended"] += total - sum
      for (group in by) if (by[group] > 0) printf "%s %.0f\n", group, 100 * by[group] / (total > 0 ? total : 1)
    }' | sort -k2,2nr -k1,1 | awk '{ line = line sprintf(" %s %s%%", $1, $2) } END { print "server CPU by thread:" line }'
}

# thread_waits BEFORE AFTER: how long each thread name was runnable but not
# running between two thread_ticks snapshots (seconds, on one line; 5 ms
# and more). A thread that waits for a CPU answers late however little it
# spends: on a machine the load generator shares, this is where a latency
# tail that the server's own timings do not show comes from.
thread_waits() {
  thread_deltas "$1" "$2" 4 | awk '$2 >= 5e6 { printf "%s %.2f\n", $1, $2 / 1e9 }' |
    sort -k2,2nr -k1,1 | awk '{ line = line sprintf(" %s %s s", $1, $2) } END { print "waited for a CPU, by thread:" line }'
}

# thread_switches BEFORE AFTER SECONDS: each thread name's context switches a
# second between two thread_ticks snapshots SECONDS apart (100 a second and
# more), voluntary (it slept) / involuntary (something else took its CPU).
# A shard taken off its CPU often answers late however little it spends.
thread_switches() {
  join <(thread_deltas "$1" "$2" 5 | sort) <(thread_deltas "$1" "$2" 6 | sort) |
    awk -v s="$3" '($2 + $3) / s >= 100 { printf "%s %.0f/%.0f\n", $1, $2 / s, $3 / s }' |
    sort -t' ' -k1,1 | awk '{ line = line sprintf(" %s %s", $1, $2) } END { print "context switches a second, voluntary/involuntary:" line }'
}

# commit_count PAGE: the group commits a server had made when its /metrics
# page was saved in the file PAGE (the count of jimbus_log_commit_records,
# over its shards), and the records in them; "0 0" when the page has none.
commit_count() {
  awk '/^jimbus_log_commit_records_count/ { c += $2 } /^jimbus_log_commit_records_sum/ { r += $2 }
    END { printf "%d %d\n", c, r }' "$1"
}

# answer_buckets PAGE: the server's answers by how long each took, on the
# /metrics page saved in PAGE (jimbus_http_request_seconds, from when a shard
# takes a request up to its answer), one cumulative "LE COUNT" line per
# bucket, summed over series.
answer_buckets() {
  awk '/^jimbus_http_request_seconds_bucket/ && match($0, /le="[^"]+"/) {
      n[substr($0, RSTART + 4, RLENGTH - 5)] += $NF
    } END { for (le in n) print le, n[le] }' "$1"
}

# answer_shares BEFORE AFTER: of the answers between two answer_buckets
# snapshots, the share the server gave within 2.5, 5 and 10 ms by its own
# clock; nothing when there were none. Beside the generator's p99, it says
# whether a latency tail lies in the server's work or outside it: before it
# (a request waiting in its socket while the shard is off its CPU) or after
# it (the generator's own threads).
answer_shares() {
  awk 'FILENAME == ARGV[1] { before[$1] = $2; next } { n[$1] = $2 - before[$1] }
    END {
      total = n["+Inf"]
      if (total <= 0) exit
      printf "the server'"'"'s own answer times: within 2.5 ms %.2f %%, 5 ms %.2f %%, 10 ms %.2f %% of %d answers\n",
        100 * n["0.0025"] / total, 100 * n["0.005"] / total, 100 * n["0.01"] / total, total
    }' "$1" "$2"
}

# prime_page_cache DIR: writes 2 GiB under DIR (synced), then deletes it.
# On a fresh virtual machine, the first gigabytes written go into page-cache
# memory the guest has never touched, and the kernel's copy into it costs
# about 8 times what it does into memory touched before (docs/perf.md,
# "Twentieth pass"): the first server that writes would be charged for it.
# The kernel hands freed pages out again first, so the servers measured after
# this write into memory that has been touched.
prime_page_cache() {
  dd if=/dev/zero of="$1/prime" bs=1M count=2048 conv=fdatasync status=none
  rm -f "$1/prime"
}
