"""Checks that a systemd unit's SystemCallFilter allows every system call a
process made, from an `strace -f -o FILE` log of that process.

    python unit_syscalls.py UNIT STRACE_LOG

The filter is expanded with `systemd-analyze syscall-filter` (groups nest),
as systemd applies it: allow-lists add, `~` lines remove. Exit 1 naming each
call the filter would refuse (the service would get EPERM there).
"""

import re
import subprocess
import sys


def groups():
    """Every @group of this systemd, with its direct members (names and @groups)."""
    text = subprocess.run(["systemd-analyze", "syscall-filter"], check=True, capture_output=True, text=True).stdout
    table, current = {}, None
    for line in text.splitlines():
        if line.startswith("@"):
            current = line.strip()
            table[current] = set()
        elif current and line.strip() and not line.strip().startswith("#"):
            table[current].add(line.strip())
    return table


def expand(names, table):
    out = set()
    for name in names:
        if name.startswith("@"):
            out |= expand(table.get(name, ()), table)
        else:
            out.add(name)
    return out


def allowed(unit_text, table):
    allow, deny = set(), set()
    for line in unit_text.splitlines():
        match = re.match(r"\s*SystemCallFilter=(.*)", line)
        if not match:
            continue
        value = match.group(1).strip()
        if value.startswith("~"):
            deny |= expand(value[1:].split(), table)
        else:
            allow |= expand(value.split(), table)
    if not allow:
        sys.exit("unit_syscalls: the unit has no allow-list SystemCallFilter=")
    return allow - deny


def used(strace_log):
    calls = set()
    for line in open(strace_log, errors="replace"):
        match = re.match(r"\s*(?:\d+\s+)?(?:<\.\.\. )?([a-z_][a-z0-9_]*)(?:\(| resumed>)", line)
        if match and match.group(1) not in ("exit", "killed", "restart_syscall"):
            calls.add(match.group(1))
    return calls


def main():
    unit, log = sys.argv[1:3]
    table = groups()
    permitted = allowed(open(unit).read(), table)
    calls = used(log)
    if len(calls) < 20:
        sys.exit(f"unit_syscalls: only {len(calls)} system calls in {log}: did the process run?")
    refused = sorted(calls - permitted)
    for name in refused:
        print(f"unit_syscalls: {name} is used but SystemCallFilter refuses it", file=sys.stderr)
    needed = {"io_uring_setup", "io_uring_enter"}
    if not needed <= calls:
        sys.exit(f"unit_syscalls: the process made no {sorted(needed - calls)}: is it the jimbus server?")
    print(f"unit_syscalls: {len(calls)} distinct system calls, {len(refused)} refused by the unit's filter")
    sys.exit(1 if refused else 0)


if __name__ == "__main__":
    main()
