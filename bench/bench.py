#!/usr/bin/env python3
"""ckpt benchmark: checkpoint time, stopped time, restart time and image size of a few
workloads, side by side with `dd` writing 1 GiB to the same file system, plus the runtime's
overhead (compute-loop slowdown, resident memory). Python 3 standard library only.

See bench/README.md for what every figure means and the targets it is compared against.
"""

import argparse
import ctypes
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MIB = 1024 * 1024

# Targets from issues 2 and 9 (see bench/README.md).
TARGETS = {
    "tiny_ckpt_s": 0.050,
    "tiny_restart_s": 0.050,
    "tiny_image_bytes": 1 * MIB,
    "stopped_s": 0.050,
    "gib_ckpt_vs_dd": 1.5,
}

# Peer figures measured on this VM (../shared/research/peers.md), medians.
PEERS = {
    "tiny": {"DMTCP": (0.409, 0.212, 22.4 * MIB), "CRIU": (0.043, 0.021, 0.12 * MIB)},
    "threads4": {"DMTCP": (0.397, 0.214, 22.5 * MIB), "CRIU": (0.038, 0.022, 0.15 * MIB)},
    "mem1g": {"DMTCP": (2.47, 0.74, 1046.4 * MIB), "CRIU": (1.05, 0.84, 1024.1 * MIB)},
}


# ----------------------------------------------------------------------------------------
# Workloads


def parse_size_mib(s):
    m = re.fullmatch(r"(\d+)([mg])", s)
    if not m:
        raise ValueError(s)
    return int(m.group(1)) * (1024 if m.group(2) == "g" else 1)


def vname(name, label):
    """Row name of a workload run with the build labelled `label` ("" = the main one)."""
    return f"{name}@{label}" if label else name


MPI_ENV = {
    # TCP over loopback only; no shared-memory transport (its /dev/shm files would be one
    # more thing for every tool); hwloc's linuxio component opens O_PATH fds to symlinks in
    # /sys, which DMTCP asserts on (peers.md §7), and the ring needs no topology.
    "OMPI_MCA_btl": "self,tcp", "OMPI_MCA_btl_tcp_if_include": "lo",
    "OMPI_MCA_oob_tcp_if_include": "lo", "HWLOC_COMPONENTS": "-linuxio",
    # 4 ranks on 2 cores: ranks yield instead of spinning while they wait
    "OMPI_MCA_mpi_yield_when_idle": "1",
}

# Workloads known not to work with a tool yet, with the reason (they are run anyway).
KNOWN_FAILING = {
    ("mpi4", ""): "`ckpt launch -- mpirun` does not work yet: mpirun holds a pseudo-terminal "
                  "master (/dev/ptmx) for its ranks' stdio and ckpt refuses terminals on fds "
                  "other than 0-2; ptys are being implemented in another branch",
}


def workload(name):
    """name -> dict(program, args, ready, verify_ticks, procs, ...)"""
    name = name.split("@")[0]
    base = {"name": name, "args": [], "ready": None, "verify_ticks": 3, "procs": 1,
            "env": {}, "tcp": False, "interp": None}
    if name == "tiny":
        return dict(base, program="tiny")
    if name == "threads4":
        return dict(base, program="threads4")
    if name == "pipepair":
        return dict(base, program="pipepair", procs=2)
    if name == "tcppair":
        return dict(base, program="tcppair", procs=2, tcp=True)
    if name == "mpi4":
        # mpirun + 4 ranks, ring + allreduce; rank 0 prints the ticks
        return dict(base, program="mpiring", procs=5, tcp=True, env=MPI_ENV, interp="mpirun")
    if name.startswith("mem") and name.endswith("-incr"):
        # a full checkpoint (the job runs on), the program rewrites 1 % of its memory, then
        # the timed checkpoint --kill is incremental; the restart restores the chain
        w = workload(name[:-len("-incr")])
        w.update(name=name, incremental=True)
        return w
    if name.startswith("mem"):
        mib = parse_size_mib(name[3:])
        # after the restart, wait for a full verification pass (32 MiB per tick) + 1 tick
        return dict(base, program="mem", args=[str(mib)], ready="ready",
                    verify_ticks=-(-mib // 32) + 1, mib=mib)
    if name.startswith("pyheap"):
        mib = parse_size_mib(name[6:])
        # 64 ticks verify the whole heap
        return dict(base, program="pyheap.py", args=[str(mib)], ready="ready",
                    verify_ticks=65, interp="python3", mib=mib)
    if name in ("sparse", "sparse8g"):
        return dict(base, program="sparse", ready="ready")
    raise SystemExit(f"bench.py: unknown workload {name!r} (tiny, threads4, pipepair, tcppair, "
                     "mpi4, memNg/memNm[-incr], pyheapNm, sparse8g)")


def system_python():
    """The distribution's python3 (the one the pyheap workload runs, a plain ELF binary)."""
    for p in ("/usr/bin/python3", shutil.which("python3")):
        if p and os.access(p, os.X_OK):
            return os.path.realpath(p)
    return "python3"


def program_argv(bindir, wl):
    prog = os.path.join(bindir, wl["program"])
    if wl["interp"] == "python3":
        return [system_python(), prog] + wl["args"]
    if wl["interp"] == "mpirun":
        return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "4", prog] + wl["args"]
    return [prog] + wl["args"]


def program_env(wl):
    env = dict(os.environ)
    for k in ("CKPT_DIR", "LD_PRELOAD"):
        env.pop(k, None)
    env.update(wl["env"])
    return env


# ----------------------------------------------------------------------------------------
# Process bookkeeping: everything we start is registered and killed by pid on exit.


class Registry:
    def __init__(self):
        self.procs = []  # Popen objects
        self.extra_pids = set()  # pids that are not our Popen children (coordinators, ...)
        self.dirs = []  # temp dirs to remove
        self.ckpt_dirs = []  # checkpoint dirs: their coordinator is ours to stop

    def popen(self, argv, **kw):
        kw.setdefault("close_fds", True)  # no stray inherited fds (pipes!) in the job
        kw.setdefault("start_new_session", True)  # a terminal's Ctrl-C reaches only us
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def kill_proc(self, p, sig=signal.SIGKILL, timeout=10):
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if p in self.procs and p.poll() is not None:
            self.procs.remove(p)

    def cleanup(self):
        for p in list(self.procs):
            self.kill_proc(p)
        for d in list(self.ckpt_dirs):
            stop_coordinator(self, d)
        for pid in list(self.extra_pids):
            kill_pid(pid)
        for d in reversed(self.dirs):
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            reap(pid)
            return False
        return True
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def reap(pid):
    # We are a child subreaper, so orphaned coordinators become our children: reap them.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_pid(pid, timeout=5):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def set_subreaper():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_CHILD_SUBREAPER = 36
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except OSError:
        pass


def coordinator_pid(ckdir):
    """The pid of the coordinator serving ckdir, if one runs (checked via /proc cmdline)."""
    try:
        pid = int(open(os.path.join(ckdir, "coordinator.pid")).read().split()[0])
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if any(b"ckpt-coordinatord" in c for c in cmd[:1]) and ckdir.encode() in cmd:
        return pid
    return None


def stop_coordinator(reg, ckdir, ckpt=None):
    """Stops ckdir's coordinator (`ckpt shutdown`, then SIGKILL by pid) and waits until it is
    gone, so that the next restart starts its own, as it would in a new job."""
    pid = coordinator_pid(ckdir)
    if pid is None:
        return
    if ckpt:
        subprocess.run([ckpt, "shutdown", "--ckpt-dir", ckdir], close_fds=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    if pid_alive(pid):
        kill_pid(pid)


class Lines:
    """Reads a pipe in a thread; every line is queued with its arrival time."""

    def __init__(self, pipe):
        self.q = queue.Queue()
        self.all = []
        self.t = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self.t.start()

    def _run(self, pipe):
        for raw in iter(pipe.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            item = (time.monotonic(), line)
            self.all.append(item)
            self.q.put(item)
        self.q.put((time.monotonic(), None))

    def next(self, deadline):
        """Next (time, line); line is None at EOF; raises TimeoutError past the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            return self.q.get(timeout=left)
        except queue.Empty:
            raise TimeoutError from None


def tick_of(line):
    m = re.fullmatch(r"tick (\d+)", line or "")
    return int(m.group(1)) if m else None


class Failure(Exception):
    """ckpt itself failed: the run is recorded as failed with the command and its output."""

    def __init__(self, what, command=None, output=None):
        super().__init__(what)
        self.what, self.command, self.output = what, command, output


def wait_ticks(lines, n, deadline, ready=None, what="program"):
    """Waits for `ready` (if given) then n tick lines; returns (last tick, time of first
    tick seen, lines seen). Raises Failure on FAIL, EOF or timeout."""
    seen, last, first_t = [], None, None
    got_ready = ready is None
    count = 0
    while count < n or not got_ready:
        try:
            t, line = lines.next(deadline)
        except TimeoutError:
            raise Failure(f"{what}: timed out waiting for output", output="\n".join(seen[-20:]))
        if line is None:
            raise Failure(f"{what}: output ended (the process exited)", output="\n".join(seen[-20:]))
        seen.append(line)
        if line.startswith("FAIL"):
            raise Failure(f"{what} reported: {line}", output="\n".join(seen[-20:]))
        if not got_ready and line.startswith(ready):
            got_ready = True
            continue
        k = tick_of(line)
        if k is not None and got_ready:
            if first_t is None:
                first_t = t
            last = k
            count += 1
    return last, first_t, seen


def read_events(ckdir):
    out = []
    try:
        for l in open(os.path.join(ckdir, "events.jsonl")):
            try:
                out.append(json.loads(l))
            except ValueError:
                pass
    except OSError:
        pass
    return out


def dir_bytes(d):
    """(apparent bytes, allocated bytes) of the files in d."""
    app = alloc = 0
    for root, _, files in os.walk(d):
        for f in files:
            st = os.stat(os.path.join(root, f))
            app += st.st_size
            alloc += st.st_blocks * 512
    return app, alloc


def drop_cache(d):
    for root, _, files in os.walk(d):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# ----------------------------------------------------------------------------------------
# Peak extra memory during a checkpoint


def _proc_tree():
    """{pid: ppid} of every live process."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] != "Z":
                    out[int(d)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


HAVE_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _children(pid):
    """Children of pid from /proc/<pid>/task/*/children, or None when the kernel has no
    such files (CONFIG_PROC_CHILDREN is not set on this VM's kernel)."""
    if not HAVE_CHILDREN_FILES:
        return None
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                continue
    except OSError:
        return []
    return out


def our_descendants():
    """Every process below the bench (it is a child subreaper, so orphans stay below)."""
    out, todo = [], [os.getpid()]
    while todo:
        kids = _children(todo.pop())
        if kids is None:  # no children files: walk the whole process table
            tree = _proc_tree()
            kids_of = {}
            for pid, pp in tree.items():
                kids_of.setdefault(pp, []).append(pid)
            out, todo = [], [os.getpid()]
            while todo:
                for c in kids_of.get(todo.pop(), []):
                    out.append(c)
                    todo.append(c)
            return out
        out.extend(kids)
        todo.extend(kids)
    return out


def pss_anon_kib(pid):
    """Proportional anonymous (+ shmem) memory of pid: pages shared copy-on-write between a
    process and its fork()ed snapshot are counted once in the sum over both."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            tot = 0
            for l in f:
                if l.startswith(("Pss_Anon:", "Pss_Shmem:")):
                    tot += int(l.split()[1])
            return tot
    except (OSError, ValueError):
        return 0


class MemSampler:
    """Samples, every few ms while a checkpoint runs, the proportional anonymous memory of
    every process below the bench (the workload, the tool's coordinator, the checkpoint
    command, ckpt's snapshot, criu, ...). Peak extra memory = the peak of that sum minus
    what the workload's own processes held just before the checkpoint (the `exclude`d
    pids, the tool's long-lived coordinator, are not part of the workload). Page cache
    filled by image writes is not included (see bench/README.md)."""

    def __init__(self, exclude=()):
        excl = {p for p in exclude if p}
        pids = our_descendants()
        self.base = sum(pss_anon_kib(p) for p in pids if p not in excl)
        self.peak = sum(pss_anon_kib(p) for p in pids)
        self.samples = 1
        self.done = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        pids, n = [], 0
        while not self.done.is_set():
            if n % 4 == 0:  # new processes (a snapshot, criu's helpers) every 4th sample
                pids = our_descendants()
            n += 1
            tot = sum(pss_anon_kib(p) for p in pids)
            self.peak = max(self.peak, tot)
            self.samples += 1
            self.done.wait(0.01)

    def stop(self, r):
        self.done.set()
        self.t.join(5)
        r["peak_extra_bytes"] = max(0, self.peak - self.base) * 1024
        r["workload_anon_bytes"] = self.base * 1024
        r["mem_samples"] = self.samples


# ----------------------------------------------------------------------------------------
# One checkpoint -> kill -> restart cycle


def warm_cache(d):
    """Reads every file under d, so that a restart finds the image in the page cache."""
    for root, _, files in os.walk(d):
        for f in files:
            with open(os.path.join(root, f), "rb", buffering=0) as fh:
                while fh.read(8 * MIB):
                    pass


def restart_once(reg, ckpt, ckdir, gen_dir, wl, r, args, env, restart_err, pre_tick,
                 last_before_kill, mode):
    """One timed restart of the newest generation with the image's page cache in state
    `mode` (asis: as the checkpoint left it; cold: dropped; hot: read in first). Returns
    the seconds until the first new tick; raises Failure."""
    # The restart happens as in a new job: no coordinator left from the launch.
    stop_coordinator(reg, ckdir, ckpt)
    # every generation: an incremental image reads page data from older ones
    gens = [os.path.join(ckdir, g) for g in os.listdir(ckdir) if g.startswith("gen-")]
    for g in gens:
        if mode == "cold":
            drop_cache(g)
        elif mode == "hot":
            warm_cache(g)
    cmd = [ckpt, "restart", ckdir]
    spawn_wall = time.time()
    t0 = time.monotonic()
    q = reg.popen(cmd, stdout=subprocess.PIPE, stderr=restart_err, env=env)
    rl = Lines(q.stdout)
    try:
        first, first_t, seen = wait_ticks(rl, 1, t0 + args.timeout, None, "restarted program")
    except Failure as f:
        q.poll()
        f.command = " ".join(cmd)
        restart_err.flush()
        f.output = (f.output or "") + "\n[stderr] " + open(ckdir + ".restart.err",
                                                          errors="replace").read()
        raise
    secs = first_t - t0
    for e in read_events(ckdir):
        if e.get("event") == "process_joined" and e.get("restored_from") is not None:
            r.setdefault("restart_joined_s", e["time"] - spawn_wall)
            if e.get("real_pid") and e["real_pid"] != q.pid:
                reg.extra_pids.add(e["real_pid"])
    r.setdefault("tick_first_after_restart", first)
    if not (first > 1 and pre_tick <= first <= last_before_kill + 1):
        raise Failure(f"restarted program ({mode} cache) did not continue from the checkpoint: "
                      f"first tick {first}, ticks before the checkpoint request {pre_tick}, "
                      f"before the kill {last_before_kill}", " ".join(cmd), "\n".join(seen))
    more, _, seen2 = wait_ticks(rl, max(3, wl["verify_ticks"]),
                                time.monotonic() + args.timeout, None, "restarted program")
    if more <= first:
        raise Failure("ticks do not advance after restart", " ".join(cmd), "\n".join(seen2))
    if any(l.startswith("FAIL") for _, l in rl.all):
        raise Failure(f"the restarted program ({mode} cache) reported FAIL", " ".join(cmd),
                      "\n".join(l for _, l in rl.all[-10:]))
    reg.kill_proc(q)
    for pid in list(reg.extra_pids):
        kill_pid(pid)
        reg.extra_pids.discard(pid)
    return secs


def one_cycle(reg, ckpt, bindir, wl, ckdir, args):
    r = {"workload": wl["name"], "ok": False}
    prog = program_argv(bindir, wl)
    reg.ckpt_dirs.append(ckdir)
    env = program_env(wl)
    if args.log:
        env["CKPT_LOG"] = args.log
    launch_err = open(os.path.join(ckdir + ".launch.err"), "wb")
    restart_err = open(os.path.join(ckdir + ".restart.err"), "wb")
    try:
        # 1. launch and wait until it runs (ready + 3 ticks)
        cmd = [ckpt, "launch", "--ckpt-dir", ckdir, "--"] + prog
        launch_wall = time.time()
        p = reg.popen(cmd, stdout=subprocess.PIPE, stderr=launch_err, env=env)
        lines = Lines(p.stdout)
        pre_tick, _, _ = wait_ticks(lines, 3, time.monotonic() + args.timeout, wl["ready"],
                                    "launched program")
        # The runtime joins the coordinator asynchronously; a checkpoint requested before
        # that fails ("no process of the job is connected"). Wait for the join like a
        # harness waits for DMTCP's NUM_PEERS, and report how long it took.
        deadline = time.monotonic() + args.timeout
        while True:
            joined = [e for e in read_events(ckdir) if e.get("event") == "process_joined"
                      and e.get("real_pid") == p.pid]
            if joined:
                r["join_s"] = joined[0]["time"] - launch_wall
                break
            if time.monotonic() > deadline or p.poll() is not None:
                raise Failure("the launched program never joined its coordinator",
                              " ".join(cmd), "\n".join(l for _, l in lines.all[-10:]))
            time.sleep(0.005)
        if wl.get("incremental"):
            # the full checkpoint the incremental one builds on (the job runs on)
            cmd = [ckpt, "checkpoint", "--ckpt-dir", ckdir, "--json"]
            subprocess.run(["sync"], check=True)
            t0 = time.monotonic()
            c = subprocess.run(cmd, capture_output=True, close_fds=True, timeout=args.timeout,
                               env=env)
            r["full_ckpt_s"] = time.monotonic() - t0
            if c.returncode != 0:
                raise Failure(f"full checkpoint failed (exit status {c.returncode})",
                              " ".join(cmd), (c.stdout + c.stderr).decode(errors="replace"))
            r["full_image_bytes"] = json.loads(c.stdout).get("bytes")
            os.kill(p.pid, signal.SIGUSR1)
            deadline = time.monotonic() + args.timeout
            while not any(l.startswith("touched") for _, l in lines.all):
                if time.monotonic() > deadline or p.poll() is not None:
                    raise Failure("the program did not report `touched` after SIGUSR1")
                time.sleep(0.01)
            r["touched_bytes"] = int([l for _, l in lines.all if l.startswith("touched")][0].split()[1])
            while not lines.q.empty():  # older ticks: the checkpoint comes after the touch
                lines.q.get_nowait()
            pre_tick, _, _ = wait_ticks(lines, 2, time.monotonic() + args.timeout, None,
                                        "program after touching")
        # 2. no dirty backlog from the program's start-up
        t = time.monotonic()
        subprocess.run(["sync"], check=True)
        r["sync_before_s"] = time.monotonic() - t
        # 3. checkpoint --kill, timed
        cmd = [ckpt, "checkpoint", "--ckpt-dir", ckdir, "--kill", "--json"]
        sampler = MemSampler(exclude=[coordinator_pid(ckdir)])
        t0 = time.monotonic()
        c = subprocess.run(cmd, capture_output=True, close_fds=True, timeout=args.timeout, env=env)
        r["ckpt_wall_s"] = time.monotonic() - t0
        sampler.stop(r)
        if c.returncode != 0:
            raise Failure(f"checkpoint failed (exit status {c.returncode})", " ".join(cmd),
                          (c.stdout + c.stderr).decode(errors="replace"))
        try:
            summary = json.loads(c.stdout)
        except ValueError:
            raise Failure("checkpoint --json printed no JSON", " ".join(cmd),
                          (c.stdout + c.stderr).decode(errors="replace"))
        r["ckpt_reported_s"] = summary.get("seconds")
        r["stopped_s"] = summary.get("stopped_seconds")
        r["generation"] = summary.get("generation")
        gen_dir = summary.get("path") or ""
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            raise Failure("the job was still running 10 s after `checkpoint --kill` returned",
                          " ".join(cmd))
        r["launch_exit"] = p.returncode
        last_before_kill = max([tick_of(l) or 0 for _, l in lines.all] + [0])
        lines.t.join(2)
        if any(l.startswith("FAIL") for _, l in lines.all):
            raise Failure("the program reported FAIL before the restart",
                          output="\n".join(l for _, l in lines.all[-10:]))
        reg.kill_proc(p)
        app, alloc = dir_bytes(gen_dir) if os.path.isdir(gen_dir) else (None, None)
        r["image_bytes"] = summary.get("bytes") if summary.get("bytes") is not None else app
        r["gen_dir_bytes"], r["gen_dir_alloc_bytes"] = app, alloc
        r["tick_at_request"], r["tick_last_before_kill"] = pre_tick, last_before_kill
        # 4. restart (once per page-cache state asked for), timed until the program prints
        # its first new tick; 5. verify it continued from the checkpoint.
        r["restart_cache_s"] = {}
        for k, mode in enumerate(args.restart_cache):
            s_ = restart_once(reg, ckpt, ckdir, gen_dir, wl, r, args, env, restart_err,
                              pre_tick, last_before_kill, mode)
            r["restart_cache_s"][mode] = s_
            if k == 0:
                r["restart_s"] = s_
        r["ok"] = True
    except Failure as f:
        r["error"] = f.what
        if f.command:
            r["command"] = f.command
        if f.output:
            r["output"] = f.output[-4000:]
        launch_err.flush()
        try:
            r["launch_stderr"] = open(ckdir + ".launch.err", errors="replace").read()[-2000:]
            r["restart_stderr"] = open(ckdir + ".restart.err", errors="replace").read()[-2000:]
        except OSError:
            pass
        events = read_events(ckdir)
        if events:
            r["events"] = events[-8:]
    finally:
        launch_err.close()
        restart_err.close()
        for pr in list(reg.procs):
            reg.kill_proc(pr)
        for pid in list(reg.extra_pids):
            kill_pid(pid)
            reg.extra_pids.discard(pid)
        stop_coordinator(reg, ckdir, ckpt)
        if ckdir in reg.ckpt_dirs:
            reg.ckpt_dirs.remove(ckdir)
        if not args.keep:
            shutil.rmtree(ckdir, ignore_errors=True)
        for f in (ckdir + ".launch.err", ckdir + ".restart.err"):
            try:
                os.unlink(f)
            except OSError:
                pass
    return r


# ----------------------------------------------------------------------------------------
# The same cycle through DMTCP or CRIU (bench/peers.py)


class FileLines:
    """Like Lines, for a program whose stdout is a regular file (O_APPEND): the peers
    restore a file by path, while a pipe to the bench would lead outside the checkpointed
    tree. Polls the file every millisecond from `offset`; `alive()` (checked every 0.2 s)
    returning False ends it like EOF. If the file shrinks (a tool restored its old
    contents), reading goes on from its new end."""

    def __init__(self, path, offset, alive):
        self.path, self.offset, self.alive = path, offset, alive
        self.q = queue.Queue()
        self.all = []
        self.truncated = False
        self.done = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        buf, last_check = b"", time.monotonic()
        with open(self.path, "rb") as f:
            while not self.done.is_set():
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:
                    self.truncated, self.offset, buf = True, size, b""
                if size > self.offset:
                    f.seek(self.offset)
                    data = f.read(size - self.offset)
                    self.offset += len(data)
                    buf += data
                    *full, buf = buf.split(b"\n")
                    now = time.monotonic()
                    for raw in full:
                        item = (now, raw.decode(errors="replace"))
                        self.all.append(item)
                        self.q.put(item)
                    continue
                now = time.monotonic()
                if now - last_check > 0.2:
                    last_check = now
                    if not self.alive():
                        break
                time.sleep(0.001)
        self.q.put((time.monotonic(), None))

    def stop(self):
        self.done.set()
        self.t.join(2)

    def next(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            return self.q.get(timeout=left)
        except queue.Empty:
            raise TimeoutError from None


def peer_cycle(reg, tool_name, tool_bin, bindir, wl, rundir, args):
    """launch -> ready + 3 ticks -> sync -> checkpoint (timed) -> kill -> restart (timed until
    the first new tick) -> verify, as one_cycle does for ckpt."""
    r = {"workload": wl["name"], "ok": False, "tool": tool_name}
    os.makedirs(rundir)
    out = os.path.join(rundir, "out.log")
    argv = program_argv(bindir, wl)
    env = program_env(wl)
    if tool_name == "dmtcp":
        tool = peers.Dmtcp(tool_bin, rundir, reg)
    else:
        tool = peers.Criu(tool_bin, rundir, reg, tcp=wl["tcp"])
    sids = set()

    def alive():
        return bool(peers.sessions_pids(sids))

    def kill_all():
        peers.kill_sessions(sids, kill_pid)

    try:
        # 1. launch, in its own session, stdio on a file
        with open(out, "ab") as fo:
            p = tool.launch(argv, fo, env)
        sids.add(p.pid)
        lines = FileLines(out, 0, alive)
        pre_tick, _, _ = wait_ticks(lines, 3, time.monotonic() + args.timeout, wl["ready"],
                                    "launched program")
        try:
            tool.wait_joined(wl["procs"], args.timeout)
        except RuntimeError as e:
            raise Failure(str(e), tool.launch_cmd, tool.logs())
        # 2. no dirty backlog from start-up
        subprocess.run(["sync"], check=True)
        # 3. checkpoint, timed
        sampler = MemSampler(exclude=tool.helpers)
        t0 = time.monotonic()
        cmd, c = tool.checkpoint(args.timeout)
        r["ckpt_wall_s"] = time.monotonic() - t0
        sampler.stop(r)
        if c.returncode != 0:
            raise Failure(f"checkpoint failed (exit status {c.returncode})", " ".join(cmd),
                          (c.stdout + c.stderr).decode(errors="replace")[-3000:] + tool.logs())
        # the program is stopped for the whole checkpoint (DMTCP's threads write the image
        # themselves; criu dump keeps the tree frozen until it is killed)
        r["stopped_s"] = r["ckpt_wall_s"]
        r["stopped_is_whole_ckpt"] = True
        r["image_bytes"] = tool.image_bytes()
        r["gen_dir_bytes"], r["gen_dir_alloc_bytes"] = dir_bytes(tool.image_dir)
        # 4. kill the workload (criu dump already did), wait until every pid is free
        kill_all()
        lines.stop()
        last_before_kill = max([tick_of(l) or 0 for _, l in lines.all] + [0])
        if any(l.startswith("FAIL") for _, l in lines.all):
            raise Failure("the program reported FAIL before the restart",
                          output="\n".join(l for _, l in lines.all[-10:]))
        r["tick_at_request"], r["tick_last_before_kill"] = pre_tick, last_before_kill
        r["restart_cache_s"] = {}
        for k, mode in enumerate(args.restart_cache):
            if mode == "cold":
                drop_cache(tool.image_dir)
            elif mode == "hot":
                warm_cache(tool.image_dir)
            tool.prepare_restart(kill_pid)
            off = os.path.getsize(out)
            with open(out, "ab") as fo:
                t0 = time.monotonic()
                q = tool.restart(fo)
            sids.add(q.pid)  # DMTCP's restored tree; CRIU's keeps its session (the launch pid)
            rl = FileLines(out, off, lambda: alive() or q.poll() is None)
            try:
                first, first_t, seen = wait_ticks(rl, 1, t0 + args.timeout, None,
                                                  "restarted program")
            except Failure as f:
                f.command = tool.restart_cmd
                q.poll()
                f.output = (f.output or "") + f"\n[restart exit status {q.returncode}]\n" + \
                    open(out, errors="replace").read()[-1500:] + tool.logs()
                raise
            secs = first_t - t0
            r.setdefault("tick_first_after_restart", first)
            if rl.truncated:
                r["output_truncated_by_restore"] = True
            if not (first > 1 and pre_tick <= first <= last_before_kill + 1):
                raise Failure(f"restarted program ({mode} cache) did not continue from the "
                              f"checkpoint: first tick {first}, ticks before the checkpoint "
                              f"request {pre_tick}, before the kill {last_before_kill}",
                              tool.restart_cmd, "\n".join(seen))
            more, _, seen2 = wait_ticks(rl, max(3, wl["verify_ticks"]),
                                        time.monotonic() + args.timeout, None, "restarted program")
            if more <= first:
                raise Failure("ticks do not advance after restart", tool.restart_cmd,
                              "\n".join(seen2))
            if any(l.startswith("FAIL") for _, l in rl.all):
                raise Failure(f"the restarted program ({mode} cache) reported FAIL",
                              tool.restart_cmd, "\n".join(l for _, l in rl.all[-10:]))
            rl.stop()
            kill_all()
            reg.kill_proc(q)
            r["restart_cache_s"][mode] = secs
            if k == 0:
                r["restart_s"] = secs
        r["ok"] = True
    except (Failure, peers.Unavailable, subprocess.TimeoutExpired, RuntimeError) as f:
        if isinstance(f, Failure):
            r["error"] = f.what
            if f.command:
                r["command"] = f.command
            if f.output:
                r["output"] = f.output[-4000:]
        else:
            r["error"] = str(f)[:2000]
    finally:
        kill_all()
        for pid in tool.helpers:
            kill_pid(pid)
        for pr in list(reg.procs):
            reg.kill_proc(pr)
        if not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)
    return r


# ----------------------------------------------------------------------------------------
# References: dd, runtime overhead


def dd_run(base, mib, direct=False):
    """dd of mib MiB of zeros to the checkpoint file system, through the page cache + fsync
    (what ckpt does today), or with O_DIRECT (what the disk itself can do)."""
    path = os.path.join(base, "dd.tmp")
    subprocess.run(["sync"], check=True)
    mode = ["bs=4M", f"count={max(1, mib // 4)}", "oflag=direct"] if direct else \
        ["bs=1M", f"count={mib}"]
    t0 = time.monotonic()
    d = subprocess.run(["dd", "if=/dev/zero", f"of={path}"] + mode + ["conv=fsync"],
                       capture_output=True, close_fds=True)
    dt = time.monotonic() - t0
    try:
        os.unlink(path)
    except OSError:
        pass
    if d.returncode != 0:
        return {"ok": False, "error": d.stderr.decode(errors="replace")}
    return {"ok": True, "seconds": dt, "bytes": mib * MIB}


def vm_status(pid):
    out = {}
    try:
        for l in open(f"/proc/{pid}/status"):
            k, _, v = l.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def overhead_run(reg, ckpt, bindir, base, mib, with_runtime, args):
    """Time of mem's fill+checksum loop (self-reported) and spawn->ready, with/without the
    runtime."""
    prog = [os.path.join(bindir, "mem"), str(mib)]
    ckdir = os.path.join(base, f"ovh-{int(with_runtime)}")
    cmd = ([ckpt, "launch", "--ckpt-dir", ckdir, "--"] + prog) if with_runtime else prog
    if with_runtime:
        reg.ckpt_dirs.append(ckdir)
    t0 = time.monotonic()
    p = reg.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines = Lines(p.stdout)
    res = {"with_runtime": with_runtime}
    try:
        while True:
            t, line = lines.next(t0 + args.timeout)
            if line is None:
                res["error"] = "exited before ready"
                break
            if line.startswith("ready"):
                res["self_s"] = float(line.split()[1])
                res["compute_s"] = float(line.split()[2])
                res["spawn_to_ready_s"] = t - t0
                break
    except TimeoutError:
        res["error"] = "timeout"
    reg.kill_proc(p)
    if with_runtime:
        stop_coordinator(reg, ckdir, ckpt)
        reg.ckpt_dirs.remove(ckdir)
        shutil.rmtree(ckdir, ignore_errors=True)
    return res


def rss_run(reg, ckpt, bindir, base, with_runtime, args):
    prog = [os.path.join(bindir, "tiny")]
    ckdir = os.path.join(base, f"rss-{int(with_runtime)}")
    cmd = ([ckpt, "launch", "--ckpt-dir", ckdir, "--"] + prog) if with_runtime else prog
    if with_runtime:
        reg.ckpt_dirs.append(ckdir)
    p = reg.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines = Lines(p.stdout)
    res = {"with_runtime": with_runtime}
    try:
        wait_ticks(lines, 10, time.monotonic() + args.timeout)
        res.update(vm_status(p.pid))
        if with_runtime:
            cp = coordinator_pid(ckdir)
            if cp:
                res["coordinator"] = vm_status(cp)
    except Failure as f:
        res["error"] = f.what
    reg.kill_proc(p)
    if with_runtime:
        stop_coordinator(reg, ckdir, ckpt)
        reg.ckpt_dirs.remove(ckdir)
        shutil.rmtree(ckdir, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------------------
# Machine, statistics, output


def machine():
    m = {"kernel": platform.release(), "nproc": os.cpu_count(), "python": platform.python_version()}
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                m["cpu"] = l.split(":", 1)[1].strip()
                break
        for l in open("/proc/meminfo"):
            if l.startswith("MemTotal"):
                m["mem_gib"] = round(int(l.split()[1]) / 1024 / 1024, 1)
        m["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    return m


def fs_of(path):
    best = ("", "?", "?")
    try:
        for l in open("/proc/mounts"):
            dev, mnt, typ = l.split()[:3]
            if path.startswith(mnt) and len(mnt) >= len(best[0]):
                best = (mnt, dev, typ)
    except OSError:
        pass
    return {"mount": best[0], "device": best[1], "fstype": best[2]}


def stats(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt_s(st, ms=False):
    if not st:
        return "–"
    scale, unit, digits = (1000, "ms", 1) if ms else (1, "s", 3)
    f = lambda v: f"{v * scale:.{digits}f}"
    if st["n"] == 1:
        return f"{f(st['median'])} {unit}"
    return f"{f(st['median'])} {unit} [{f(st['min'])}–{f(st['max'])}]"


def fmt_bytes(b):
    if b is None:
        return "–"
    if b >= 1024 * MIB:
        return f"{b / 1024 / MIB:.2f} GiB"
    if b >= MIB:
        return f"{b / MIB:.1f} MiB"
    return f"{b / 1024:.0f} KiB"


def summarize(results):
    s = {"machine": results["machine"], "workloads": {}}
    for wl, runs in results["runs"].items():
        ok = [r for r in runs if r.get("ok")]
        s["workloads"][wl] = {
            "runs": len(runs),
            "ok": len(ok),
            "ckpt_wall_s": stats([r.get("ckpt_wall_s") for r in ok]),
            "ckpt_reported_s": stats([r.get("ckpt_reported_s") for r in ok]),
            "stopped_s": stats([r.get("stopped_s") for r in ok]),
            "restart_s": stats([r.get("restart_s") for r in ok]),
            "restart_cache_s": {m: stats([(r.get("restart_cache_s") or {}).get(m) for r in ok])
                                for m in results["args"]["restart_cache"]},
            "restart_joined_s": stats([r.get("restart_joined_s") for r in ok]),
            "launch_joined_s": stats([r.get("join_s") for r in runs]),
            "image_bytes": stats([r.get("image_bytes") for r in ok]),
            "image_alloc_bytes": stats([r.get("gen_dir_alloc_bytes") for r in ok]),
            "full_ckpt_s": stats([r.get("full_ckpt_s") for r in ok]),
            "full_image_bytes": stats([r.get("full_image_bytes") for r in ok]),
            "touched_bytes": stats([r.get("touched_bytes") for r in ok]),
            "peak_extra_bytes": stats([r.get("peak_extra_bytes") for r in ok]),
            "workload_anon_bytes": stats([r.get("workload_anon_bytes") for r in ok]),
            "errors": sorted({r.get("error", "") for r in runs if not r.get("ok")}),
        }
    s["peers"] = side_by_side(results)
    s["dd"] = stats([d["seconds"] for d in results["dd"] if d.get("ok")])
    s["dd_direct"] = stats([d["seconds"] for d in results.get("dd_direct", []) if d.get("ok")])
    # ckpt/dd ratio per round (same minute, same noise), for every memNg workload
    s["ratio_per_round"] = {}
    for wl, runs in results["runs"].items():
        if not wl.startswith("mem") or "incr" in wl:
            continue
        mib = workload(wl)["mib"]
        rr = [r["ckpt_wall_s"] / (d["seconds"] * mib / results["args"]["dd_mib"])
              for r, d in zip(runs, results["dd"]) if r.get("ok") and d.get("ok")]
        s["ratio_per_round"][wl] = stats(rr)
    o = results["overhead"]
    on = stats([x.get("self_s") for x in o if x["with_runtime"]])
    off = stats([x.get("self_s") for x in o if not x["with_runtime"]])
    con = stats([x.get("compute_s") for x in o if x["with_runtime"]])
    coff = stats([x.get("compute_s") for x in o if not x["with_runtime"]])
    s["overhead"] = {
        "checksum_with_s": con, "checksum_without_s": coff,
        "checksum_ratio": (con["median"] / coff["median"]) if con and coff else None,
        "compute_with_s": on, "compute_without_s": off,
        "ratio": (on["median"] / off["median"]) if on and off else None,
        "ready_with_s": stats([x.get("spawn_to_ready_s") for x in o if x["with_runtime"]]),
        "ready_without_s": stats([x.get("spawn_to_ready_s") for x in o if not x["with_runtime"]]),
    }
    rs = results["rss"]
    on = stats([x.get("VmRSS") for x in rs if x["with_runtime"]])
    off = stats([x.get("VmRSS") for x in rs if not x["with_runtime"]])
    s["rss"] = {
        "with_kib": on, "without_kib": off,
        "extra_kib": (on["median"] - off["median"]) if on and off else None,
        "threads_with": stats([x.get("Threads") for x in rs if x["with_runtime"]]),
        "coordinator_kib": stats([x.get("coordinator", {}).get("VmRSS") for x in rs
                                  if x["with_runtime"]]),
    }
    return s


def per_round_ratio(a_runs, b_runs, key, sub=None):
    """Median [min-max] of a/b over the rounds where both runs worked."""
    def get(r):
        v = r.get(key)
        return v.get(sub) if (sub and isinstance(v, dict)) else v
    rr = [get(a) / get(b) for a, b in zip(a_runs, b_runs)
          if a.get("ok") and b.get("ok") and get(a) and get(b)]
    return stats(rr)


def compare_lines(results, s):
    """Ratios of the main build to every --compare build, same rounds."""
    out = []
    runs = results["runs"]
    for name in runs:
        if "@" not in name:
            continue
        main, label = name.split("@", 1)
        if main not in runs or label in results.get("peers", {}):
            continue
        parts = []
        for what, key, sub in [("checkpoint", "ckpt_wall_s", None)] + [
                (f"restart ({m})", "restart_cache_s", m) for m in results["args"]["restart_cache"]]:
            st = per_round_ratio(runs[main], runs[name], key, sub)
            if st:
                parts.append(f"{what} {st['median']:.2f}× [{st['min']:.2f}–{st['max']:.2f}]")
        if parts:
            out.append(f"- **{main}**, this build / `{label}` (per round, median [min–max]): "
                       + ", ".join(parts))
    if out:
        out.insert(0, "Against the other builds, measured in the same rounds:")
        out.insert(1, "")
    return out


def side_by_side(results):
    """Per workload: per-round ratios ckpt / peer of checkpoint and restart time (rounds
    where both worked), for every peer that ran."""
    out = {}
    runs = results["runs"]
    for label in results.get("peers", {}):
        for name, pr in runs.items():
            if not name.endswith("@" + label) or name.split("@")[0] not in runs:
                continue
            mine = runs[name.split("@")[0]]
            out.setdefault(name.split("@")[0], {})[label] = {
                "ckpt_ratio": per_round_ratio(mine, pr, "ckpt_wall_s"),
                "restart_ratio": per_round_ratio(mine, pr, "restart_s"),
                "restart_cache_ratio": {
                    m: per_round_ratio(mine, pr, "restart_cache_s", m)
                    for m in results["args"]["restart_cache"]},
            }
    return out


def peer_lines(results, s):
    pr = results.get("peers", {})
    if not pr:
        return []
    out = ["Peers, built by the bench from the source checkouts given:", ""]
    for label, p in pr.items():
        if p.get("bin"):
            out.append(f"- {p['tool']} (`{label}` rows): revision `{p['revision']}`, from "
                       f"`{p['src']}`.")
        else:
            ls = [x.strip() for x in p["error"].splitlines() if x.strip()]
            why = (ls[0] + (f" … `{ls[-1]}`" if len(ls) > 1 else "")) if ls else "?"
            out.append(f"- {p['tool']}: **not run**: {why} (the JSON has the full message)")
    out.append("")
    ran = [l for l, p in pr.items() if p.get("bin")]
    if not ran or not s["peers"]:
        return out
    modes = results["args"]["restart_cache"]
    rnames = ", ".join(f"restart {m}" for m in modes)
    head = "| workload | ckpt ckpt / restart / image | " + " | ".join(
        f"{pr[l]['tool']} ckpt / restart / image | ckpt ÷ {pr[l]['tool']}: ckpt, {rnames} "
        f"(per round)" for l in ran) + " |"
    out.append(f"Side by side (medians; restart = restart ({modes[0]}); ratios are per round, "
               "median [min–max]):")
    out.append("")
    out.append(head)
    out.append("|---|---|" + "---|---|" * len(ran))

    def cell(w):
        if not w or not w["ok"]:
            return "failed" if w else "–"
        return (f"{fmt_s(w['ckpt_wall_s'] and dict(w['ckpt_wall_s'], n=1))} / "
                f"{fmt_s(w['restart_s'] and dict(w['restart_s'], n=1))} / "
                f"{fmt_bytes(w['image_bytes']['median'])}")

    def ratio(st):
        return f"{st['median']:.2f}× [{st['min']:.2f}–{st['max']:.2f}]" if st else "–"
    for wl, w in s["workloads"].items():
        if "@" in wl:
            continue
        row = [wl, cell(w)]
        for l in ran:
            row.append(cell(s["workloads"].get(f"{wl}@{l}")))
            rr = s["peers"].get(wl, {}).get(l)
            row.append(", ".join([ratio(rr["ckpt_ratio"])] + [
                ratio(rr["restart_cache_ratio"].get(m)) for m in modes]) if rr else "–")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    return out


def plot(results, s, path):
    """Checkpoint time and restart time against image size, one marker per tool, one
    point per workload (median), log-log. Uses matplotlib; if this python has none, runs
    the distribution's python3 (Debian: python3-matplotlib) on the JSON instead."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401
    except ImportError:
        py = "/usr/bin/python3"
        if os.path.realpath(sys.executable) == os.path.realpath(py) or not os.access(py, os.X_OK):
            print("bench.py: no matplotlib (apt-get install python3-matplotlib); no plot",
                  file=sys.stderr)
            return 1
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"results": results, "summary": s}, f)
        try:
            return subprocess.run([py, os.path.abspath(__file__), "--plot-from", f.name,
                                   "--plot", path]).returncode
        finally:
            os.unlink(f.name)
    tools = {"": ("ckpt", "o", "tab:blue")}
    for label, p in results.get("peers", {}).items():
        tools[label] = (p["tool"], "s" if label == "dmtcp" else "^",
                        "tab:red" if label == "dmtcp" else "tab:green")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, key, title in ((axes[0], "ckpt_wall_s", "checkpoint (until the image is written)"),
                           (axes[1], "restart_s", "restart (until the program runs again)")):
        for label, (tname, marker, color) in tools.items():
            xs, ys, names = [], [], []
            for wl, w in s["workloads"].items():
                base, _, lab = wl.partition("@")
                if lab != label or not w["ok"] or not w.get(key) or not w["image_bytes"]:
                    continue
                xs.append(w["image_bytes"]["median"] / MIB)
                ys.append(w[key]["median"])
                names.append(base)
            if not xs:
                continue
            ax.scatter(xs, ys, marker=marker, color=color, label=tname, s=46, zorder=3)
            for x, y, n in zip(xs, ys, names):
                ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=color)
        if key == "ckpt_wall_s" and s.get("dd"):
            mib = results["args"]["dd_mib"]
            ax.scatter([mib], [s["dd"]["median"]], marker="x", color="black",
                       label="dd (page cache + fsync)", zorder=3)
            if s.get("dd_direct"):
                ax.scatter([mib], [s["dd_direct"]["median"]], marker="+", color="black", s=70,
                           label="dd O_DIRECT", zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(fmt)
        ax.yaxis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("image size, MiB (median)")
        ax.set_ylabel("seconds (median)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = results["machine"]
    names = " vs ".join(t[0] for t in tools.values())
    fig.suptitle(f"{names}, {results['date']}, {m.get('nproc')} vCPU, "
                 f"{results['args']['runs']} runs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"bench.py: plot written to {path}", file=sys.stderr)
    return 0


def markdown(results, s):
    m = s["machine"]
    out = []
    out.append(f"ckpt benchmark, {results['date']} — {m.get('cpu', '?')} × {m.get('nproc')}, "
               f"{m.get('mem_gib')} GiB RAM, kernel {m.get('kernel')}; checkpoint dir on "
               f"{results['fs']['device']} ({results['fs']['fstype']}); "
               f"{results['args']['runs']} runs; restart from the image's page cache: "
               f"{', '.join(results['args']['restart_cache'])}; "
               f"loadavg {' '.join(m.get('loadavg_start', []))} → {' '.join(results.get('loadavg_end', []))}")
    out.append("")
    out.append("Median [min–max]. checkpoint = wall time of `ckpt checkpoint --kill --json` "
               "(image durable); stopped = time the program was stopped (reported by ckpt); "
               "restart = spawn of `ckpt restart` until the program's first new output line.")
    out.append("")
    modes = results["args"]["restart_cache"]
    rcols = " | ".join(f"restart ({m})" for m in modes)
    out.append(f"| workload | ok/runs | checkpoint | stopped | {rcols} | image | peak extra memory "
               f"| targets / notes |")
    out.append("|---|---|---|---|" + "---|" * len(modes) + "---|---|---|")
    dd = s["dd"]
    for wl, w in s["workloads"].items():
        notes = []
        if wl == "tiny" and w["ok"]:
            notes.append("ckpt ≤ 50 ms " + ("✓" if w["ckpt_wall_s"]["median"] <= TARGETS["tiny_ckpt_s"] else "✗"))
            notes.append("restart ≤ 50 ms " + ("✓" if w["restart_s"]["median"] <= TARGETS["tiny_restart_s"] else "✗"))
            notes.append("image ≤ 1 MiB " + ("✓" if w["image_bytes"]["median"] <= TARGETS["tiny_image_bytes"] else "✗"))
        if w["ok"] and w["stopped_s"]:
            notes.append("stopped ≤ 50 ms " + ("✓" if w["stopped_s"]["median"] <= TARGETS["stopped_s"] else "✗"))
        if w.get("full_image_bytes") and w["image_bytes"]:
            frac = w["image_bytes"]["median"] / w["full_image_bytes"]["median"]
            notes.append(f"incremental after {fmt_bytes(w['touched_bytes']['median'])} rewritten: "
                         f"{100 * frac:.2f} % of the full image "
                         f"({fmt_bytes(w['full_image_bytes']['median'])}, "
                         f"{fmt_s(w['full_ckpt_s'])}) " + ("≤ 5 % ✓" if frac <= 0.05 else "≤ 5 % ✗"))
        if wl.startswith("mem") and "incr" not in wl and w["ok"] and dd:
            mib = workload(wl)["mib"]
            ref = dd["median"] * mib / results["args"]["dd_mib"]
            ratio = w["ckpt_wall_s"]["median"] / ref
            rr = s["ratio_per_round"].get(wl)
            per = (f", per round {rr['median']:.2f}× [{rr['min']:.2f}–{rr['max']:.2f}]"
                   if rr and rr["n"] > 1 else "")
            notes.append(f"ckpt = {ratio:.2f}× dd (medians{per})" +
                         ((" ≤ 1.5× ✓" if ratio <= 1.5 else " ≤ 1.5× ✗") if mib == 1024 else ""))
            if s["dd_direct"]:
                notes.append(f"{w['ckpt_wall_s']['median'] / (s['dd_direct']['median'] * mib / results['args']['dd_mib']):.2f}× dd O_DIRECT")
        if wl == "mem1g" and w["ok"]:
            # issue 9: 1 GiB random, against the peers measured in the same rounds
            pr = s["peers"].get("mem1g", {})
            for label, key, limit, what in (("criu", "ckpt_ratio", 1.0, "ckpt ≤ CRIU"),
                                            ("dmtcp", "ckpt_ratio", 0.5, "ckpt ≤ 0.5× DMTCP"),
                                            ("dmtcp", "restart_ratio", 0.5,
                                             "restart ≤ 0.5× DMTCP")):
                st = (pr.get(label) or {}).get(key)
                if st:
                    notes.append(f"{what}: {st['median']:.2f}× (per round) "
                                 + ("✓" if st["median"] <= limit else "✗"))
        img = fmt_bytes(w["image_bytes"]["median"]) if w["image_bytes"] else "–"
        if w["image_alloc_bytes"] and w["image_bytes"] and \
                abs(w["image_alloc_bytes"]["median"] - w["image_bytes"]["median"]) > MIB:
            img += f" ({fmt_bytes(w['image_alloc_bytes']['median'])} on disk)"
        base_wl, _, label = wl.partition("@")
        peer = label in results.get("peers", {})
        if (base_wl, label) in KNOWN_FAILING and w["ok"] < w["runs"]:
            notes.append("known to fail: " + KNOWN_FAILING[(base_wl, label)])
        if w["ok"] < w["runs"] and w["errors"]:
            notes.append("failed: " + "; ".join(e.splitlines()[0][:160] for e in w["errors"]))
        stopped = ("= checkpoint" if peer and w["ok"] else fmt_s(w["stopped_s"], ms=True))
        out.append(f"| {wl} | {w['ok']}/{w['runs']} | {fmt_s(w['ckpt_wall_s'])} | "
                   f"{stopped} | "
                   + " | ".join(fmt_s(w["restart_cache_s"].get(m)) for m in modes)
                   + f" | {img} | {fmt_bytes((w['peak_extra_bytes'] or {}).get('median'))} | "
                   f"{'; '.join(notes)} |")
    if dd:
        out.append(f"| dd {fmt_bytes(results['args']['dd_mib'] * MIB)} (zeros, conv=fsync, same fs) | "
                   f"{dd['n']} | {fmt_s(dd)} | |" + " |" * len(modes)
                   + f" {fmt_bytes(results['args']['dd_mib'] * MIB)} | | reference |")
    ddd = s["dd_direct"]
    if ddd:
        out.append(f"| dd {fmt_bytes(results['args']['dd_mib'] * MIB)} (zeros, O_DIRECT bs=4M, same fs) | "
                   f"{ddd['n']} | {fmt_s(ddd)} | |" + " |" * len(modes)
                   + f" {fmt_bytes(results['args']['dd_mib'] * MIB)} | | "
                   f"what the disk does without the page cache |")
    out.append("")
    out.extend(peer_lines(results, s))
    cmp_lines = compare_lines(results, s)
    if cmp_lines:
        out.extend(cmp_lines)
        out.append("")
    js = [f"{wl} {fmt_s(w['launch_joined_s'], ms=True)}" for wl, w in s["workloads"].items()
          if w.get("launch_joined_s")]
    if js:
        out.append("Spawn of `ckpt launch` → the program's runtime joined its coordinator: "
                   + ", ".join(js) + ".")
    o, r = s["overhead"], s["rss"]
    if o["ratio"]:
        out.append(f"Runtime overhead: mem {results['args']['overhead_mib']} MiB fill+checksum loop "
                   f"{fmt_s(o['compute_with_s'])} with the runtime vs {fmt_s(o['compute_without_s'])} "
                   f"without (ratio of medians {o['ratio']:.3f}); spawn→ready "
                   f"{fmt_s(o['ready_with_s'])} vs {fmt_s(o['ready_without_s'])}.")
    if o.get("checksum_ratio"):
        out.append(f"Compute loop alone (mem's checksum pass over its resident buffer, no page "
                   f"faults): {fmt_s(o['checksum_with_s'])} with the runtime vs "
                   f"{fmt_s(o['checksum_without_s'])} without (ratio of medians "
                   f"{o['checksum_ratio']:.3f}).")
    if r["extra_kib"] is not None:
        out.append(f"Resident memory of `tiny`: {r['with_kib']['median'] / 1024:.2f} MiB under "
                   f"`ckpt launch` vs {r['without_kib']['median'] / 1024:.2f} MiB alone "
                   f"(runtime +{r['extra_kib'] / 1024:.2f} MiB, "
                   f"{int(r['threads_with']['median'])} threads); coordinator "
                   f"{(r['coordinator_kib'] or {'median': 0})['median'] / 1024:.2f} MiB.")
    fails = [x for runs in results["runs"].values() for x in runs if not x.get("ok")]
    if fails:
        out.append("")
        out.append(f"**{len(fails)} failed run(s)** (details in the JSON output):")
        for x in fails:
            out.append(f"- {x['workload']}: {x.get('error')}" +
                       (f" — `{x['command']}`" if x.get("command") else ""))
    if not any(p.get("bin") for p in results.get("peers", {}).values()):
        out.append("")
        out.append("DMTCP and CRIU were not run (not asked for with --dmtcp-src / --criu-src, "
                   "or not available, see above): ckpt alone. "
                   "Peers measured on this VM earlier (peers.md; other runs, so compare loosely): "
                   "tiny DMTCP 0.41 s / 0.21 s / 22 MiB, CRIU 0.043 s / 0.021 s / 0.12 MiB; "
                   "1 GiB random DMTCP 2.47 s / 0.74 s, CRIU 1.05 s / 0.84 s "
                   "(checkpoint / restart / image).")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------


def build_programs(bindir, names):
    for n in sorted(set(names)):
        src = os.path.join(HERE, "programs", n + ("" if n.endswith(".py") else ".c"))
        dst = os.path.join(bindir, n)
        if n.endswith(".py"):
            shutil.copy2(src, dst)
        elif n == "mpiring":
            if not shutil.which("mpicc"):
                continue  # the workload then fails with "not found"; the others run
            subprocess.run(["mpicc", "-O2", "-o", dst, src], check=True)
        else:
            subprocess.run(["cc", "-O2", "-pthread", "-o", dst, src], check=True)


def build_peers(args, say):
    """{label: {"tool", "bin", "revision"} or {"tool", "error"}} for --dmtcp-src/--criu-src."""
    out = {}
    bdir = os.path.abspath(args.peer_build_dir or os.path.join(tempfile.gettempdir(),
                                                               "ckpt-bench-peers"))
    for label, cls, src in (("dmtcp", peers.Dmtcp, args.dmtcp_src),
                            ("criu", peers.Criu, args.criu_src)):
        if not src:
            continue
        try:
            b, rev = cls.build(src, bdir, say)
            out[label] = {"tool": cls.name, "bin": b, "revision": rev, "src": os.path.abspath(src)}
            say(f"{cls.name}: ready ({b}, revision {rev[:12]})")
        except peers.Unavailable as e:
            out[label] = {"tool": cls.name, "error": str(e), "src": os.path.abspath(src)}
            say(f"{cls.name}: NOT AVAILABLE: {e}")
    return out


def main():
    ap = argparse.ArgumentParser(
        description="Benchmark ckpt: checkpoint/stopped/restart time and image size per "
                    "workload, dd reference, runtime overhead. Prints a markdown table.")
    ap.add_argument("--workloads", default="tiny,threads4,mem1g,sparse8g",
                    help="comma-separated: tiny, threads4, memNg / memNm (N GiB/MiB of random "
                         "data), sparse8g (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=5, help="cycles per workload (default 5)")
    ap.add_argument("--dir", help="base for checkpoint dirs (default: a temp dir under "
                                  "<repo>/target, i.e. on the repository's file system)")
    ap.add_argument("--json", metavar="OUT", help="write raw runs and summary as JSON")
    ap.add_argument("--markdown", metavar="OUT", help="also write the markdown table here")
    ap.add_argument("--ckpt", default=os.path.join(REPO, "target", "release", "ckpt"),
                    help="ckpt binary (default: %(default)s)")
    ap.add_argument("--dd-mib", type=int, default=1024, help="MiB written by the dd reference")
    ap.add_argument("--no-dd", action="store_true", help="skip the dd reference")
    ap.add_argument("--overhead-mib", type=int, default=512,
                    help="size of the mem run for the runtime overhead (default 512)")
    ap.add_argument("--no-overhead", action="store_true", help="skip overhead/RSS measurements")
    ap.add_argument("--cold", action="store_true",
                    help="drop the image from the page cache before each restart "
                         "(same as --restart-cache cold)")
    ap.add_argument("--restart-cache", default=None, metavar="MODES",
                    help="comma-separated page-cache states of the image to restart from, each "
                         "a timed restart of the same checkpoint: asis (as the checkpoint left "
                         "it), cold (dropped), hot (read in first); the first one is the "
                         "table's restart column (default: asis)")
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=CKPT",
                    help="also run every workload with another ckpt build (e.g. "
                         "before=/tmp/old/target/release/ckpt), interleaved in the same rounds; "
                         "its rows are named WORKLOAD@LABEL")
    ap.add_argument("--no-stage", action="store_true",
                    help="run the binaries in place instead of a private copy")
    ap.add_argument("--dmtcp-src", metavar="DIR",
                    help="a DMTCP source checkout: build it (once) and run every workload "
                         "through it too, in the same rounds (rows WORKLOAD@dmtcp)")
    ap.add_argument("--criu-src", metavar="DIR",
                    help="a CRIU source checkout: build it (once) and run every workload "
                         "through it too (needs root; rows WORKLOAD@criu)")
    ap.add_argument("--peer-build-dir", metavar="DIR",
                    help="where the peers are built and kept for later runs (default: "
                         "<temp dir>/ckpt-bench-peers)")
    ap.add_argument("--plot", metavar="OUT.png",
                    help="write a plot of checkpoint and restart time against image size "
                         "(matplotlib)")
    ap.add_argument("--plot-from", metavar="JSON",
                    help="only draw --plot from an earlier --json output, run nothing")
    ap.add_argument("--timeout", type=float, default=120, help="per-step timeout, s")
    ap.add_argument("--log", help="CKPT_LOG for the runs (e.g. info)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint dirs")
    args = ap.parse_args()
    if args.plot_from:
        if not args.plot:
            sys.exit("bench.py: --plot-from needs --plot OUT.png")
        with open(args.plot_from) as f:
            d = json.load(f)
        return plot(d["results"], d["summary"], args.plot)
    modes = args.restart_cache or ("cold" if args.cold else "asis")
    args.restart_cache = [m.strip() for m in modes.split(",") if m.strip()]
    if not args.restart_cache or any(m not in ("asis", "cold", "hot") for m in args.restart_cache):
        sys.exit(f"bench.py: --restart-cache takes asis, cold and/or hot, not {modes!r}")
    builds = [("", os.path.abspath(args.ckpt))]
    for c in args.compare:
        label, _, path = c.partition("=")
        if not label or not path or "@" in label:
            sys.exit(f"bench.py: --compare LABEL=CKPT, not {c!r}")
        builds.append((label, os.path.abspath(path)))
    for _, b in builds:
        if not os.access(b, os.X_OK):
            sys.exit(f"bench.py: {b} not found; run `cargo build --release` first")

    ckpt = os.path.abspath(args.ckpt)
    if not os.access(ckpt, os.X_OK):
        sys.exit(f"bench.py: {ckpt} not found; run `cargo build --release` first")
    wls = [workload(w.strip()) for w in args.workloads.split(",") if w.strip()]

    reg = Registry()
    set_subreaper()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited as ignored
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    results = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
               "args": vars(args), "runs": {vname(w["name"], l): [] for w in wls for l, _ in builds},
               "dd": [], "dd_direct": [],
               "overhead": [], "rss": []}
    try:
        if args.dir:
            os.makedirs(args.dir, exist_ok=True)
            base = tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir)
        else:
            parent = os.path.join(REPO, "target")
            base = tempfile.mkdtemp(prefix="ckpt-bench-",
                                    dir=parent if os.path.isdir(parent) else REPO)
        reg.dirs.append(base)
        results["fs"] = fs_of(os.path.realpath(base))
        results["fs"]["path"] = base
        bindir = os.path.join(base, "bin")
        os.mkdir(bindir)
        staged = []
        for label, b in builds:
            if args.no_stage:
                staged.append((label, b))
                continue
            # Other people rebuild target/release while we run; a restart refuses an image
            # whose mapped libckpt.so changed. Run a private copy (ckpt finds libckpt.so and
            # ckpt-coordinatord next to itself).
            stage = os.path.join(base, "ckpt-bin" + (f"-{label}" if label else ""))
            os.mkdir(stage)
            src = os.path.dirname(b)
            for f in ("ckpt", "ckpt-coordinatord", "libckpt.so"):
                shutil.copy2(os.path.join(src, f), os.path.join(stage, f))
            staged.append((label, os.path.join(stage, "ckpt")))
        ckpt = staged[0][1]
        results["builds"] = {(label or "current"): b for label, b in staged}
        results["ckpt_binary"] = ckpt
        build_programs(bindir, [w["program"] for w in wls] + ["tiny", "mem"])
        say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        results["peers"] = build_peers(args, say)
        runners = [(label, bckpt, None) for label, bckpt in staged]
        for label, pr in results["peers"].items():
            if pr.get("bin"):
                runners.append((label, pr["bin"], label))
        if not results["peers"]:
            say("no --dmtcp-src / --criu-src given: measuring ckpt alone")
        ordered = {}  # rows grouped by workload: ckpt, --compare builds, then the peers
        for w in wls:
            for label, _, peer in runners:
                if peer and w.get("incremental"):
                    continue  # neither peer has incremental checkpoints here (no soft-dirty)
                ordered[vname(w["name"], label)] = []
        results["runs"] = ordered

        # Interleave: every round runs each workload once, dd once, and one overhead pair.
        for i in range(args.runs):
            for w in wls:
                for label, bckpt, peer in runners:
                    name = vname(w["name"], label)
                    if name not in results["runs"]:
                        continue
                    ckdir = os.path.join(base, f"{name.replace('@', '-')}-{i}")
                    if peer:
                        r = peer_cycle(reg, peer, bckpt, bindir, w, ckdir, args)
                    else:
                        r = one_cycle(reg, bckpt, bindir, w, ckdir, args)
                    r["workload"] = name
                    results["runs"][name].append(r)
                    status = "ok" if r["ok"] else "FAILED: " + r.get("error", "")
                    rc = r.get("restart_cache_s") or {}
                    rs = ", ".join(f"{m} {v:.3f} s" for m, v in rc.items()) or "–"
                    print(f"[{i + 1}/{args.runs}] {name}: ckpt {r.get('ckpt_wall_s', 0):.3f} s, "
                          f"stopped {1000 * (r.get('stopped_s') or 0):.1f} ms, restart {rs}, "
                          f"image {fmt_bytes(r.get('image_bytes'))} — {status}",
                          file=sys.stderr, flush=True)
            if not args.no_dd:
                d = dd_run(base, args.dd_mib)
                results["dd"].append(d)
                dx = dd_run(base, args.dd_mib, direct=True)
                results["dd_direct"].append(dx)
                print(f"[{i + 1}/{args.runs}] dd {args.dd_mib} MiB: "
                      f"{d.get('seconds', float('nan')):.3f} s, O_DIRECT "
                      f"{dx.get('seconds', float('nan')):.3f} s", file=sys.stderr, flush=True)
            if not args.no_overhead:
                for with_rt in ((False, True) if i % 2 == 0 else (True, False)):
                    results["overhead"].append(
                        overhead_run(reg, ckpt, bindir, base, args.overhead_mib, with_rt, args))
                    results["rss"].append(rss_run(reg, ckpt, bindir, base, with_rt, args))
        try:
            results["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        except OSError:
            pass
        s = summarize(results)
        md = markdown(results, s)
        print(md)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(md)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"results": results, "summary": s}, f, indent=1)
        if args.plot:
            plot(results, s, args.plot)
        return 0 if all(r.get("ok") for runs in results["runs"].values() for r in runs) else 1
    except KeyboardInterrupt:
        print("bench.py: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        reg.cleanup()


if __name__ == "__main__":
    sys.exit(main())
