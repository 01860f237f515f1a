"""deploy/seccomp/io_uring.json is Docker's default seccomp profile plus the three
io_uring syscalls glommio needs, and the Dockerfile and README name it. No
container engine runs in CI, so the profile is checked as JSON: its shape,
the io_uring rule, and a representative set of the default profile's rules."""

from __future__ import annotations

import json

from support import DEPLOY, ROOT

PROFILE = DEPLOY / "seccomp" / "io_uring.json"
IO_URING = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
# Allowed unconditionally by Docker's default profile (moby/profiles seccomp/default.json).
DEFAULT_ALLOWED = {
    "accept4", "bind", "brk", "close", "connect", "epoll_create1", "epoll_ctl", "epoll_pwait", "eventfd2",
    "execve", "exit_group", "fdatasync", "fstat", "fsync", "futex", "getrandom", "io_setup", "io_submit",
    "madvise", "mlock", "mmap", "mprotect", "munmap", "openat", "pread64", "prlimit64", "pwrite64", "read",
    "recvfrom", "renameat2", "rseq", "rt_sigaction", "sched_getaffinity", "sched_setaffinity", "sendto",
    "setsockopt", "statx", "timerfd_create", "write", "writev",
}
# Still refused by it, and so by this profile.
DEFAULT_REFUSED = {"mount", "umount2", "kexec_load", "open_by_handle_at", "init_module", "bpf", "ptrace"}


def profile() -> dict:
    return json.loads(PROFILE.read_text())


def unconditional(rule: dict) -> bool:
    return rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args") and not rule.get("includes") \
        and not rule.get("excludes")


def test_the_profile_is_json_with_the_default_shape():
    p = profile()
    assert p["defaultAction"] == "SCMP_ACT_ERRNO" and p["defaultErrnoRet"] == 1
    arches = {a["architecture"]: set(a["subArchitectures"] or ()) for a in p["archMap"]}
    assert arches["SCMP_ARCH_X86_64"] == {"SCMP_ARCH_X86", "SCMP_ARCH_X32"}
    assert arches["SCMP_ARCH_AARCH64"] == {"SCMP_ARCH_ARM"}
    assert {"SCMP_ARCH_MIPS64", "SCMP_ARCH_S390X", "SCMP_ARCH_RISCV64"} <= set(arches)
    assert len(p["syscalls"]) >= 34, "the default profile's 33 rules and the io_uring one"


def test_io_uring_is_allowed_unconditionally():
    rules = [r for r in profile()["syscalls"] if IO_URING & set(r["names"])]
    assert len(rules) == 1 and unconditional(rules[0]) and set(rules[0]["names"]) == IO_URING, rules


def test_the_default_profile_s_rules_are_kept():
    syscalls = profile()["syscalls"]
    allowed = {n for r in syscalls if unconditional(r) for n in r["names"]}
    assert len(allowed) >= 361 + 3, "the default allow list (361 names) was cut"
    assert DEFAULT_ALLOWED <= allowed, DEFAULT_ALLOWED - allowed
    assert not DEFAULT_REFUSED & allowed, DEFAULT_REFUSED & allowed
    # Conditional rules: socket by family, personality by value, clone without CAP_SYS_ADMIN, per-cap grants.
    conditional = [r for r in syscalls if not unconditional(r)]
    assert sum(1 for r in conditional if r["names"] == ["socket"] and r.get("args")) == 3
    assert sum(1 for r in conditional if r["names"] == ["personality"]) == 5
    assert any(r["names"] == ["clone"] and r.get("excludes", {}).get("caps") == ["CAP_SYS_ADMIN"] for r in conditional)
    assert any(r["names"] == ["clone3"] and r["action"] == "SCMP_ACT_ERRNO" and r.get("errnoRet") == 38
               for r in conditional)
    assert any("mount" in r["names"] and r.get("includes", {}).get("caps") == ["CAP_SYS_ADMIN"] for r in conditional)


def test_the_dockerfile_and_readme_name_the_profile():
    for doc in ("Dockerfile", "README.md"):
        text = (ROOT / doc).read_text()
        assert "seccomp=deploy/seccomp/io_uring.json" in text, doc
        assert "io_uring-seccomp.json" not in text, f"{doc} still names a profile that does not exist"
