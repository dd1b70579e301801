#!/usr/bin/env python3
"""Peak memory of the device model for an 800x600 guest, without Xen.

Runs `xenvfb xenstored` (the embedded xenstored), writes the toolstack's
vfb/vkbd entries with Debian's xenstore-* tools, starts the device model
(`xenvfb --domid 7 --sim-host DIR ...`) and a simulated guest
(`xenvfb-testtool sim-guest`, built next to it), lets the guest draw, and (with --vnc) keeps one vncdo
client connected while it does. Then prints VmHWM/VmRSS from
/proc/PID/status and the largest mappings of /proc/PID/smaps (Rss and
Private_Dirty), and exits 1 if VmHWM is above --limit-kb.

Usage: memory.py [--vnc | --png] [--limit-kb N] [--smaps] XENVFB
(--png: headless with the PNG display writing every change, as the real-Xen
test's headless-png guest.)
With MEMORY_PAUSE=1 in the environment it waits for a line on stdin at the
peak (printing the device model's pid) so /proc/PID can be inspected.
Run with .build-tools/venv/bin/python3 (vncdo). Build XENVFB as shipped:
swift build -c release --static-swift-stdlib.

Under SimHost the guest's 2 MiB framebuffer is a shared file mapping
(dom7.mem) that the device model maps; under Xen it is a foreign mapping.
Either way its pages count in VmRSS/VmHWM once touched, so the number here
includes it, as the real-Xen one does.
"""
import os
import subprocess
import sys
import tempfile
import time

DOMID = 7
TIMEOUT = 30


def wait_for(cond, what, procs=()):
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        for p in procs:
            if p.poll() is not None:
                sys.exit(f"memory.py: {p.args[1] if len(p.args) > 1 else p.args[0]} exited ({p.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            sys.exit(f"memory.py: timed out waiting for {what}")
        time.sleep(0.02)


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
                out[k] = int(v.split()[0])
    return out


def smaps(pid):
    """(name, Rss kB, Private_Dirty kB) per mapping name, largest Rss first."""
    by_name = {}
    name = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:
                name = fields[5] if len(fields) > 5 else "[anon]"
                name = os.path.basename(name) if name.startswith("/") else name
                by_name.setdefault(name, [0, 0])
            elif fields[0] == "Rss:":
                by_name[name][0] += int(fields[1])
            elif fields[0] == "Private_Dirty:":
                by_name[name][1] += int(fields[1])
    return sorted(((n, r, d) for n, (r, d) in by_name.items()), key=lambda t: -t[1])


def main():
    args = sys.argv[1:]
    vnc = "--vnc" in args
    png = "--png" in args
    show_smaps = "--smaps" in args
    limit = None
    if "--limit-kb" in args:
        limit = int(args[args.index("--limit-kb") + 1])
    binary = os.path.abspath(args[-1])
    machine = tempfile.mkdtemp(prefix="xenvfb-mem-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    os.mkdir(os.path.join(machine, "evtchn"))
    xs_sock = os.path.join(machine, "xenstored")
    guest_sock = os.path.join(machine, f"xenstored-dom{DOMID}")
    env = dict(os.environ, XENSTORED_PATH=xs_sock)
    procs = []

    def spawn(argv, **kw):
        p = subprocess.Popen(argv, env=env, stdin=kw.pop("stdin", subprocess.DEVNULL),
                             stderr=kw.pop("stderr", subprocess.DEVNULL), **kw)
        procs.append(p)
        return p

    def xs(*cmd):
        subprocess.run(list(cmd), env=env, check=True, capture_output=True)

    def xs_read(path):
        r = subprocess.run(["xenstore-read", path], env=env, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        spawn([binary, "xenstored", "--socket", xs_sock, "--domain-socket", f"{DOMID}:{guest_sock}"])
        wait_for(lambda: os.path.exists(guest_sock), "xenstored", procs)
        # What Toolstack.addFramebuffer (libxl) writes, with its permissions.
        xs("xenstore-write", f"/local/domain/{DOMID}/name", "simguest")
        for t, extra in (("vfb", ["vnc", "0", "sdl", "0"]), ("vkbd", [])):
            be = f"/local/domain/0/backend/{t}/{DOMID}/0"
            fe = f"/local/domain/{DOMID}/device/{t}/0"
            xs("xenstore-write", f"{fe}/backend", be, f"{fe}/backend-id", "0", f"{fe}/state", "1")
            xs("xenstore-chmod", "-r", fe, f"n{DOMID}", "r0")
            xs("xenstore-write", f"{be}/frontend", fe, f"{be}/frontend-id", str(DOMID), f"{be}/online", "1",
               *[f"{be}/{k}" if i % 2 == 0 else k for i, k in enumerate(extra)], f"{be}/state", "1")
            xs("xenstore-chmod", "-r", be, "n0", f"r{DOMID}")

        port = None
        dm_args = [binary, "--domid", str(DOMID), "--name", "simguest", "--sim-host", machine,
                   "--qmp", "unix:" + os.path.join(machine, "qmp")]
        if vnc:
            # A free display number: the first port 5900+N nobody listens on.
            import socket
            for n in range(50, 99):
                s = socket.socket()
                try:
                    s.bind(("127.0.0.1", 5900 + n))
                    port = 5900 + n
                    break
                except OSError:
                    continue
                finally:
                    s.close()
            dm_args += ["-vnc", f"127.0.0.1:{port - 5900}"]
        else:
            dm_args += ["-vnc", "none", "-display", "none", "-nographic"]
        if png:
            dm_args += ["--display", f"png:dir={os.path.join(machine, 'png')},interval=0"]
        dm = spawn(dm_args)
        wait_for(lambda: xs_read(f"/local/domain/0/device-model/{DOMID}/state") == "running", "device-model state", procs)
        for t in ("vfb", "vkbd"):
            wait_for(lambda: xs_read(f"/local/domain/0/backend/{t}/{DOMID}/0/state") == "2", f"{t} InitWait", procs)

        guest = spawn([os.path.join(os.path.dirname(binary), "xenvfb-testtool"), "sim-guest", "--machine", machine, "--xenstore", guest_sock,
                       "--domid", str(DOMID), "--commands"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        lines = []

        def tell(line, answer):
            guest.stdin.write((line + "\n").encode())
            guest.stdin.flush()
            while True:
                got = guest.stdout.readline().decode().strip()
                if not got:
                    sys.exit(f"memory.py: the guest ended waiting for '{answer}'")
                lines.append(got)
                if got == answer:
                    return

        while "drawn" not in lines:
            got = guest.stdout.readline().decode().strip()
            if not got:
                sys.exit("memory.py: the guest ended before its first picture")
            lines.append(got)
        for t in ("vfb", "vkbd"):
            wait_for(lambda: xs_read(f"/local/domain/0/backend/{t}/{DOMID}/0/state") == "4", f"{t} Connected", procs)

        client = None
        if vnc:
            vncdo = os.path.join(os.path.dirname(sys.executable), "vncdo")
            shot = os.path.join(machine, "vnc.png")
            client = subprocess.Popen([vncdo, "-s", f"127.0.0.1::{port}", "capture", shot, "pause", "3", "capture", shot],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
        # The guest changes its whole picture, then many small parts of it.
        for seed in range(1, 6):
            tell(f"draw {seed}", f"drawn {seed}")
            time.sleep(0.1)
        if client:
            if client.wait(TIMEOUT) != 0:
                sys.exit(f"memory.py: vncdo failed: {client.stderr.read().decode()}")
        time.sleep(0.3)

        if os.environ.get("MEMORY_PAUSE"): input(f"pid {dm.pid}; enter to end ")
        if os.environ.get("MEMORY_DETAIL"): subprocess.run([os.environ["MEMORY_DETAIL"], str(dm.pid)])
        s = status(dm.pid)
        mode = "VNC (one vncdo client)" if vnc else "headless, PNG display" if png else "headless"
        print(f"memory: {mode}: VmHWM {s['VmHWM']} kB ({s['VmHWM'] / 1024:.1f} MiB), VmRSS {s['VmRSS']} kB "
              f"(anon {s['RssAnon']}, file {s['RssFile']}, shmem {s['RssShmem']}), threads {s['Threads']}")
        if show_smaps:
            print(f"  {'mapping':40} {'Rss kB':>8} {'Priv_Dirty':>10}")
            for n, r, d in smaps(dm.pid):
                if r >= 64:
                    print(f"  {n[:40]:40} {r:8} {d:10}")
        if limit is not None and s["VmHWM"] > limit:
            print(f"memory: VmHWM {s['VmHWM']} kB is above the limit of {limit} kB")
            return 1
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["rm", "-rf", machine])


if __name__ == "__main__":
    sys.exit(main())
