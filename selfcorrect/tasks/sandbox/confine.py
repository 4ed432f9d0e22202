"""The candidate's world: the namespaces, root, IPC limits, seccomp filter and cgroup a candidate runs in.

Part of the sandbox's trusted side: ``python -I -S -c <wire.py + confine.py + judge.py>`` (see ``judge.py``,
which forks the candidate through :func:`_launch_candidate`).  It runs in the judge's forked child before
that child ``exec``s ``candidate.py``; nothing here runs model-written code, and nothing here trusts it.

Step by step (:func:`_launch_candidate`): join the run's cgroup, enter fresh mount / PID / network / IPC /
UTS namespaces, build a root holding only the interpreter, its shared libraries and standard library
(site-packages masked, the extension modules that reach around the OS masked), a private ``/proc`` with the
host's counters masked, ``/dev`` with four device nodes, tiny ``/tmp`` and ``/dev/shm`` and the scratch
directory, pivot into it, set rlimits, drop to ``nobody`` with no new privileges, install the seccomp
filter and ``exec`` a fresh interpreter.  Set-up errors come back on a close-on-exec pipe the program never
holds (exit status ``_SETUP_RC``), so a program cannot fake one.
"""

import ctypes
import os
import resource
import signal

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}
_SETUP_RC = 121

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _check(name, rc, *args):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s%r: %s" % (name, args, os.strerror(err)))


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check("mount", _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), source, target)


def _unshare(flags):
    _check("unshare", _libc.unshare(flags), hex(flags))


def _prctl(option, value):
    _check("prctl", _libc.prctl(option, value, 0, 0, 0), option)


def _bind(source, target, writable=False):
    _mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (0 if writable else MS_RDONLY)
    _mount(None, target, None, flags)


def _make_parent(path):
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)


def _tmpfs(target, data, noexec=False):
    os.makedirs(target, mode=0o755, exist_ok=True)
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | (MS_NOEXEC if noexec else 0), data)


# Files of a fresh /proc that are global to the host, not to the run's namespaces: counters that one run
# moves (forks, CPU time, interrupts, page faults, memory, I/O, open files) and the next or a concurrent
# one reads are a channel between runs, and /proc/locks lists every lock on the host.  Each is covered by
# /dev/null (reads give nothing); per-process files (/proc/self) and the run's own namespaces stay.
_HOST_COUNTERS = ("stat", "loadavg", "uptime", "vmstat", "meminfo", "interrupts", "softirqs", "diskstats",
                  "schedstat", "locks", "buddyinfo", "zoneinfo", "pagetypeinfo", "swaps", "timer_list",
                  "key-users", "keys", "slabinfo", "vmallocinfo", "partitions", "cgroups", "sched_debug",
                  "sys/fs/file-nr", "sys/fs/inode-nr", "sys/fs/inode-state", "sys/fs/dentry-state",
                  "sys/kernel/random/entropy_avail", "sys/kernel/random/uuid", "sys/kernel/random/boot_id")
_HOST_COUNTER_DIRS = ("pressure", "irq", "tty", "sys/fs/quota")


def _mask_host_counters(proc):
    for name in _HOST_COUNTERS:
        if os.path.isfile(proc + "/" + name):
            _mount("/dev/null", proc + "/" + name, None, MS_BIND)
    for name in _HOST_COUNTER_DIRS:
        if os.path.isdir(proc + "/" + name):
            _mount("tmpfs", proc + "/" + name, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV,
                   "size=4k,nr_inodes=2,mode=0555")


def _build_root(job, settings):
    """Mount the candidate's root at ``job["root"]`` (inside our own mount namespace) and enter it."""
    root = job["root"]
    _check("sethostname", _libc.sethostname(b"sandbox", 7))  # our own UTS namespace: the host's name stays out
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,nr_inodes=8192,mode=0755")
    for kind, path, extra in settings["view"]:
        target = root + path
        if kind == "symlink":
            _make_parent(target)
            os.symlink(extra, target)
        elif kind == "dir":
            os.makedirs(target, mode=0o755, exist_ok=True)
            _bind(path, target)
        elif kind == "file":
            _make_parent(target)
            open(target, "a").close()
            _bind(path, target)
        elif kind == "mask-dir":  # an empty read-only directory over e.g. site-packages
            _mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,nr_inodes=2,mode=0555")
        elif kind == "mask-file":  # an extension module that reaches around the OS limits
            _mount("/dev/null", target, None, MS_BIND)
    dev = root + "/dev"
    _tmpfs(dev, "size=64k,nr_inodes=64,mode=0755")
    for node in ("null", "zero", "random", "urandom"):
        open(dev + "/" + node, "a").close()
        _mount("/dev/" + node, dev + "/" + node, None, MS_BIND)  # device nodes: no nodev here
    # Everything the program can write is noexec: no native code of its own (it could make syscalls
    # the interpreter never offers); memfds are made non-executable below for the same reason.
    small = "size=1m,nr_inodes=256,mode=1777"
    for shared in ("/tmp", "/dev/shm"):
        _tmpfs(root + shared, small, noexec=True)
    owner = "" if job["uid"] is None else ",uid=%d,gid=%d" % (job["uid"], job["gid"])
    _tmpfs(root + "/sandbox", "size=%dm,nr_inodes=4096,mode=0700%s" % (job["disk_mb"], owner), noexec=True)
    os.makedirs(root + "/proc", mode=0o555, exist_ok=True)
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mask_host_counters(root + "/proc")
    _limit_ipc(root + "/proc/sys/kernel", job)
    try:  # per PID namespace (Linux >= 6.3): 2 = no executable memfd at all
        with open(root + "/proc/sys/vm/memfd_noexec", "w") as f:
            f.write("2")
    except OSError:
        pass  # older kernels: the seccomp filter and the noexec mounts still apply
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is not None and _libc.syscall(number, b".", b".") == 0:
        _check("umount2", _libc.umount2(b".", MNT_DETACH))  # the host's root, stacked under ours
    else:  # unknown syscall number: move the new root over / (the old one stays covered)
        _mount(root, "/", None, 8192)  # MS_MOVE
        os.chroot(".")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _limit_ipc(sysctl, job):
    """SysV IPC limits of the fresh IPC namespace (objects die with it; this bounds them meanwhile)."""
    pages = max(1, job["memory_mb"] * 256)  # 4 KiB pages
    for name, value in (("shmmax", job["memory_mb"] << 20), ("shmall", pages), ("shmmni", 16),
                        ("msgmni", 16), ("msgmnb", 1 << 16), ("sem", "32 256 32 16")):
        try:
            with open(sysctl + "/" + name, "w") as f:
                f.write(str(value))
        except OSError:
            pass


# Syscalls the candidate never needs and that reach state outside its namespaces: the kernel keyring
# is per *user* (a program could leave itself notes across runs and learn the tests by trial), io_uring
# bypasses syscall filtering, a memfd is writable memory that dlopen can map executable (the writable
# mounts are noexec), and the rest are attack surface (perf side channels, bpf, userfaultfd, new
# namespaces).  The second group reads or sets state of the host's *page cache* of the read-only view,
# which every run shares: which pages of a file are cached is a store one run can write and the next read
# (cross-run channel, docs/sandbox.md).  mincore, cachestat and preadv2 (RWF_NOWAIT) read residency;
# fadvise (DONTNEED) and madvise (COLD, PAGEOUT) evict, readahead fills without reading.  flock and the
# fcntl lock commands set locks on view files that other runs and the host see (and that block the host).
# Denied with EPERM; a foreign syscall ABI (i386, x32 on x86_64) kills the process.
_SECCOMP = {
    "x86_64": (0xC000003E, {"add_key": 248, "request_key": 249, "keyctl": 250, "io_uring_setup": 425,
                            "io_uring_enter": 426, "io_uring_register": 427, "perf_event_open": 298,
                            "bpf": 321, "userfaultfd": 323, "unshare": 272, "setns": 308,
                            "memfd_create": 319,
                            "mincore": 27, "cachestat": 451, "preadv2": 327, "pwritev2": 328,
                            "fadvise64": 221, "readahead": 187, "flock": 73}),
    "aarch64": (0xC00000B7, {"add_key": 217, "request_key": 218, "keyctl": 219, "io_uring_setup": 425,
                             "io_uring_enter": 426, "io_uring_register": 427, "perf_event_open": 241,
                             "bpf": 280, "userfaultfd": 282, "unshare": 97, "setns": 268,
                             "memfd_create": 279,
                             "mincore": 232, "cachestat": 451, "preadv2": 286, "pwritev2": 287,
                             "fadvise64": 223, "readahead": 213, "flock": 32}),
}

# Syscalls denied only for some arguments: (argument index, mask, denied values of ``arg & mask``).
# W^X: no mapping that is writable and executable at once (PROT_WRITE | PROT_EXEC = 6): with the
# writable mounts noexec and memfds gone, such a mapping is the only way left to run native code of its
# own.  madvise COLD (20) and PAGEOUT (21) evict page-cache pages of a file mapping.  fcntl's lock
# commands: F_GETLK/F_SETLK/F_SETLKW (5, 6, 7) and their open-file-description forms (36, 37, 38).
_WX = (2, 6, (6,))
_SECCOMP_ARGS = {
    "x86_64": {"mmap": (9, _WX), "mprotect": (10, _WX), "pkey_mprotect": (329, _WX),
               "madvise": (28, (2, 0xFFFFFFFF, (20, 21))), "fcntl": (72, (1, 0xFFFFFFFF, (5, 6, 7, 36, 37, 38)))},
    "aarch64": {"mmap": (222, _WX), "mprotect": (226, _WX), "pkey_mprotect": (288, _WX),
                "madvise": (233, (2, 0xFFFFFFFF, (20, 21))), "fcntl": (25, (1, 0xFFFFFFFF, (5, 6, 7, 36, 37, 38)))},
}


def seccomp_program(machine):
    """The classic-BPF seccomp filter for ``machine`` (bytes of struct sock_filter), or None.

    Layout: check the ABI; then one test per denied syscall number (match: deny); then, per syscall
    with argument rules, a block entered on its number that loads the argument's low 32 bits (struct
    seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i, little-endian), masks it and denies the
    listed values, else allows; anything else is allowed.
    """
    import struct
    if machine not in _SECCOMP:
        return None
    arch, denied = _SECCOMP[machine]
    ld_abs, jeq, jge, alu_and, ret = 0x20, 0x15, 0x35, 0x54, 0x06
    allow, deny, kill = 0x7FFF0000, 0x00050000 | 1, 0x80000000   # ALLOW, ERRNO(EPERM), KILL_PROCESS
    ops = [(ld_abs, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (ld_abs, 0, 0, 0)]
    if machine == "x86_64":
        ops += [(jge, 0, 1, 0x40000000), (ret, 0, 0, kill)]         # the x32 ABI
    for number in sorted(denied.values()):
        ops += [(jeq, 0, 1, number), (ret, 0, 0, deny)]             # match: the next op denies; else skip it
    for number, (index, mask, values) in sorted(_SECCOMP_ARGS.get(machine, {}).values()):
        block = [(ld_abs, 0, 0, 16 + 8 * index), (alu_and, 0, 0, mask)]
        for value in values:
            block += [(jeq, 0, 1, value), (ret, 0, 0, deny)]
        block.append((ret, 0, 0, allow))
        ops += [(jeq, 0, len(block), number)] + block               # not this syscall: jump over its block
    ops.append((ret, 0, 0, allow))
    return b"".join(struct.pack("HBBI", *op) for op in ops)


def install_seccomp():
    """Apply :func:`seccomp_program` to this process (needs no_new_privs); False where unsupported."""
    program = seccomp_program(os.uname().machine)
    if program is None:
        return False
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog
    _check("prctl(PR_SET_SECCOMP)", _libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0))
    return True


class _SockFprog(ctypes.Structure):
    """struct sock_fprog: the filter's length in instructions and a pointer to them."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _join_cgroup(job):
    for directory in job["cgroups"]:
        with open(directory + "/cgroup.procs", "w") as f:
            f.write("0")


def _launch_candidate(job, settings, requests_r, answers_w, out_fd, err_fd, setup_w):
    """The forked child: confine ourselves, then exec the candidate interpreter. Never returns."""
    try:
        _join_cgroup(job)
        if job["unshare"] & ~CLONE_NEWPID:  # the judge entered the PID namespace for us
            _unshare(job["unshare"] & ~CLONE_NEWPID)
        if job["unshare"] & CLONE_NEWNS:
            _build_root(job, settings)
            workdir = "/sandbox"
        else:
            workdir = job["workdir"]
        for name, (soft, hard) in job["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (soft, hard))
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.umask(0o077)
        if job["uid"] is not None:
            os.setgroups([])
            os.setgid(job["gid"])
            os.setuid(job["uid"])
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
        if job["seccomp"]:
            install_seccomp()
        os.chdir(workdir)
        for fd, target in ((out_fd, 1), (err_fd, 2), (requests_r, 3), (answers_w, 4)):
            os.dup2(fd, target)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.set_inheritable(setup_w, False)
        os.closerange(5, setup_w)
        os.closerange(setup_w + 1, 1 << 16)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir,
               "TMPDIR": workdir, "PYTHONHASHSEED": "0"}
        python = settings["python"]
        os.execve(python, [python, "-I", "-S", "-c", settings["candidate_source"]], env)
    except BaseException as exc:
        try:
            os.write(setup_w, ("%s: %s" % (type(exc).__name__, exc)).encode("utf-8", "replace")[:2000])
        finally:
            os._exit(_SETUP_RC)
