"""DMTCP and CRIU for bench.py: build each from a source checkout the user points to (never
fetched or committed by us), then launch / checkpoint / kill / restart a workload with it.

A build goes to <peer-build-dir>/<tool>/ (default: <system temp dir>/ckpt-bench-peers) and
is reused by later runs when its stamp file names the same source directory and revision.
"""

import os
import shutil
import subprocess
import time

STAMP = ".ckpt-bench-stamp"


class Unavailable(Exception):
    """The peer cannot be built or run here; the message says exactly why."""


def _revision(src):
    try:
        return subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _stamp(src):
    return f"{os.path.realpath(src)}\n{_revision(src)}\n"


def _tail(path, n=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _run_logged(cmd, cwd, log, env=None):
    with open(log, "ab") as f:
        f.write(("\n$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        try:
            return subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                  stdin=subprocess.DEVNULL).returncode
        except OSError as e:  # e.g. no ./configure: not a source checkout of this peer
            f.write(f"cannot run {cmd[0]}: {e}\n".encode())
            return 127


def _copy_source(src, dst):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)


def _build(name, src, build_dir, product, steps, say):
    """Copies src to <build_dir>/<name>-src and runs steps there, unless a stamped build of
    the same source revision exists. Returns (product path, revision)."""
    src = os.path.abspath(src)
    if not os.path.isdir(src):
        raise Unavailable(f"{name} source {src} is not a directory")
    os.makedirs(build_dir, exist_ok=True)
    work = os.path.join(build_dir, f"{name}-src")
    stamp = os.path.join(build_dir, f"{name}{STAMP}")
    want = _stamp(src)
    path = product(work)
    try:
        if os.access(path, os.X_OK) and open(stamp).read() == want:
            say(f"{name}: reusing the build in {work} ({want.split()[1][:12]})")
            return path, want.split("\n")[1]
    except OSError:
        pass
    log = os.path.join(build_dir, f"{name}-build.log")
    say(f"{name}: building {src} in {work} (log: {log}); this takes minutes")
    try:
        os.unlink(stamp)
    except OSError:
        pass
    open(log, "w").close()
    _copy_source(src, work)
    for cmd in steps(work):
        rc = _run_logged(cmd, work, log)
        if rc != 0:
            raise Unavailable(f"{name} build failed: `{' '.join(cmd)}` exited with status "
                              f"{rc} (log {log}):\n{_tail(log)}")
    if not os.access(path, os.X_OK):
        raise Unavailable(f"{name} build produced no {path} (log {log})")
    with open(stamp, "w") as f:
        f.write(want)
    return path, want.split("\n")[1]


# ----------------------------------------------------------------------------------------


def sessions_pids(sids):
    """Pids of the processes whose session id is in sids."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) in sids:  # zombies too: kill_pid reaps them (pids must be free)
            out.append(int(d))
    return out


def kill_sessions(sids, kill_pid, timeout=10):
    """SIGKILLs every process of the given sessions (ours: each was started with setsid)
    and waits until they are gone (and reaped: we are a child subreaper)."""
    sids = {s for s in sids if s and s != os.getsid(0)}
    deadline = time.monotonic() + timeout
    while True:
        pids = sessions_pids(sids)
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            kill_pid(pid, timeout=1)


class Peer:
    name = "?"
    label = "?"

    def __init__(self):
        self.helpers = []  # pids of the tool's own long-lived processes (coordinators)

    def image_bytes(self):
        tot = 0
        for root, _, files in os.walk(self.image_dir):
            for f in files:
                if self.is_image(f):
                    tot += os.stat(os.path.join(root, f)).st_size
        return tot


class Dmtcp(Peer):
    """dmtcp_launch / dmtcp_command -bc / dmtcp_restart, each job with its own coordinator
    on a private port (the kernel picks it; --port-file), images uncompressed."""
    name, label = "DMTCP", "dmtcp"

    @staticmethod
    def build(src, build_dir, say):
        prefix = os.path.join(build_dir, "dmtcp")

        def steps(work):
            return [["./configure", f"--prefix={prefix}"],
                    ["nice", "-n", "19", "make", "-j2"],
                    ["make", "install"]]
        # the product is the installed launcher; the stamp is written after `make install`
        path, rev = _build("dmtcp", src, build_dir,
                           lambda work: os.path.join(prefix, "bin", "dmtcp_launch"), steps, say)
        return os.path.dirname(path), rev

    def __init__(self, bindir, rundir, reg, gzip=False):
        super().__init__()
        self.bin = bindir
        self.rundir = rundir
        self.image_dir = os.path.join(rundir, "images")
        os.makedirs(self.image_dir)
        os.makedirs(os.path.join(rundir, "tmp"))
        self.reg = reg
        self.gzip = gzip
        self.env = dict(os.environ, DMTCP_TMPDIR=os.path.join(rundir, "tmp"))
        self.port = None

    def is_image(self, f):
        return f.endswith(".dmtcp")

    def _cmd(self, tool):
        return [os.path.join(self.bin, tool), "-h", "127.0.0.1", "-p", str(self.port)]

    def start_coordinator(self, timeout):
        pf = os.path.join(self.rundir, "coord.port")
        try:
            os.unlink(pf)  # the previous coordinator's port
        except FileNotFoundError:
            pass
        log = open(os.path.join(self.rundir, "coordinator.log"), "ab")
        c = self.reg.popen([os.path.join(self.bin, "dmtcp_coordinator"), "-q", "-q", "-p", "0",
                            "--port-file", pf, "--ckptdir", self.image_dir],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = open(pf).read().strip()
                if port:
                    self.port = int(port)
                    self.helpers = [c.pid]
                    return c
            except (OSError, ValueError):
                pass
            if c.poll() is not None:
                raise RuntimeError(f"dmtcp_coordinator exited with status {c.returncode}: "
                                   + _tail(os.path.join(self.rundir, "coordinator.log")))
            time.sleep(0.01)
        raise RuntimeError("dmtcp_coordinator wrote no port file")

    def launch(self, argv, out, env):
        self.env = dict(env, DMTCP_TMPDIR=os.path.join(self.rundir, "tmp"))
        self.start_coordinator(30)
        cmd = self._cmd("dmtcp_launch") + ["-j", "--ckptdir", self.image_dir] + \
            (["--gzip"] if self.gzip else ["--no-gzip"]) + argv
        self.launch_cmd = " ".join(cmd)
        return self.reg.popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              env=self.env)

    def status(self):
        c = subprocess.run(self._cmd("dmtcp_command") + ["-s"], capture_output=True, text=True,
                           env=self.env, timeout=30)
        kv = {}
        for l in c.stdout.splitlines():
            k, _, v = l.strip().partition("=")
            kv[k] = v
        return kv

    def wait_joined(self, nprocs, timeout):
        """Until the coordinator has nprocs peers, all running (as a harness waits for
        NUM_PEERS)."""
        deadline = time.monotonic() + timeout
        kv = {}
        while time.monotonic() < deadline:
            kv = self.status()
            if kv.get("NUM_PEERS") == str(nprocs) and kv.get("RUNNING") == "yes":
                return
            time.sleep(0.02)
        raise RuntimeError(f"DMTCP coordinator never reported {nprocs} running peers: {kv}")

    def checkpoint(self, timeout):
        """Blocking checkpoint (the program is resumed when it returns)."""
        cmd = self._cmd("dmtcp_command") + ["-bc"]
        c = subprocess.run(cmd, capture_output=True, env=self.env, timeout=timeout)
        return cmd, c

    def prepare_restart(self, kill_pid):
        """A fresh coordinator for every restart (not timed), on a new private port."""
        for pid in self.helpers:
            kill_pid(pid)
        self.start_coordinator(30)

    def restart(self, out):
        imgs = sorted(os.path.join(self.image_dir, f) for f in os.listdir(self.image_dir)
                      if f.endswith(".dmtcp"))
        cmd = self._cmd("dmtcp_restart") + ["-j"] + imgs
        self.restart_cmd = " ".join(cmd)
        return self.reg.popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              env=self.env)

    def logs(self):
        return _tail(os.path.join(self.rundir, "coordinator.log"), 10)


class Criu(Peer):
    """criu dump (which ends the tree) / criu restore -d, as root. The workload is started
    in its own session with stdio on files, so --shell-job is not needed; TCP workloads add
    --tcp-established. Images go to the same file system as ckpt's."""
    name, label = "CRIU", "criu"

    @staticmethod
    def build(src, build_dir, say):
        def steps(work):
            return [["nice", "-n", "19", "make", "-j2", "criu"]]
        path, rev = _build("criu", src, build_dir,
                           lambda work: os.path.join(work, "criu", "criu"), steps, say)
        if os.geteuid() != 0:
            raise Unavailable("CRIU needs root to dump and restore; the bench runs as uid "
                              f"{os.geteuid()}")
        c = subprocess.run([path, "check"], capture_output=True, text=True)
        if c.returncode != 0:
            raise Unavailable(f"`criu check` failed on this kernel (status {c.returncode}):\n"
                              + (c.stdout + c.stderr)[-2000:])
        return path, rev

    def __init__(self, binary, rundir, reg, tcp):
        super().__init__()
        self.criu = binary
        self.rundir = rundir
        self.image_dir = os.path.join(rundir, "images")
        os.makedirs(self.image_dir)
        self.reg = reg
        self.tcp = ["--tcp-established"] if tcp else []
        self.pid = None

    def is_image(self, f):
        return f.endswith(".img")

    def launch(self, argv, out, env):
        self.launch_cmd = " ".join(argv)
        p = self.reg.popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                           env=env)
        self.pid = p.pid
        return p

    def wait_joined(self, nprocs, timeout):
        pass

    def prepare_restart(self, kill_pid):
        pass

    def checkpoint(self, timeout):
        cmd = [self.criu, "dump", "-t", str(self.pid), "-D", self.image_dir, "-o", "dump.log",
               "-v2"] + self.tcp
        c = subprocess.run(cmd, capture_output=True, timeout=timeout, close_fds=True,
                           stdin=subprocess.DEVNULL)
        return cmd, c

    def restart(self, out):
        try:
            os.unlink(os.path.join(self.rundir, "restored.pid"))  # criu refuses to replace it
        except FileNotFoundError:
            pass
        cmd = [self.criu, "restore", "-D", self.image_dir, "-d", "-o", "restore.log", "-v2",
               "--pidfile", os.path.join(self.rundir, "restored.pid")] + self.tcp
        self.restart_cmd = " ".join(cmd)
        return self.reg.popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def logs(self):
        return ("[dump.log] " + _tail(os.path.join(self.image_dir, "dump.log"), 8) +
                "\n[restore.log] " + _tail(os.path.join(self.image_dir, "restore.log"), 8))
