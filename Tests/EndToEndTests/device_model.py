#!/usr/bin/env python3
"""Drives the xenvfb device model (`xenvfb --domid N --sim-host DIR`) over a
simulated machine, as libxl and CI tools would: the guest is
`xenvfb-testtool sim-guest` (GuestKit's frontends) in a process of its own, xenstore is the
embedded xenstored the Swift test runs, and the clients are ones this project
did not write: Debian's xenstore-* tools, QEMU's qemu.qmp, vncdotool, Pillow.

Usage: device_model.py SCENARIO XENVFB MACHINE_DIR DOM0_SOCKET GUEST_SOCKET DOMID
Exits 0 when every check of the scenario holds; prints what failed otherwise.
"""
import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from qemu.qmp import QMPClient, ExecuteError

TIMEOUT = 30


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Machine:
    def __init__(self, binary, directory, dom0_socket, guest_socket, domid):
        self.binary = binary
        self.dir = directory
        self.dom0_socket = dom0_socket
        self.guest_socket = guest_socket
        self.domid = int(domid)
        self.env = dict(os.environ, XENSTORED_PATH=dom0_socket)
        self.qmp_path = os.path.join(directory, "qmp")
        self.dm = None
        self.guest = None

    # xenstore, through Debian's tools
    def xs_read(self, path):
        r = subprocess.run(["xenstore-read", path], env=self.env, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    def xs_exists(self, path):
        return subprocess.run(["xenstore-exists", path], env=self.env, capture_output=True).returncode == 0

    def wait_for(self, cond, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not cond():
            if self.dm and self.dm.poll() is not None:
                raise AssertionError(f"device model exited ({self.dm.returncode}) while waiting for {what}:\n{self.dm_log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\nguest said: {self.guest_lines[-20:] if self.guest else []}\n{self.dm_log()}")
            time.sleep(0.02)

    # the device model
    def start_dm(self, *extra, domid=True):
        self.log = tempfile.TemporaryFile()
        args = [self.binary] + (["--domid", str(self.domid)] if domid else []) + [
            "--name", "simguest", "--sim-host", self.dir, "--qmp", "unix:" + self.qmp_path] + list(extra)
        self.dm = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        self.wait_for(lambda: os.path.exists(self.qmp_path), "the QMP socket")

    def dm_log(self):
        if not self.dm:
            return ""
        self.log.seek(0)
        return "device model log:\n" + self.log.read().decode(errors="replace")[-6000:]

    # the guest
    def start_guest(self, *extra):
        self.guest = subprocess.Popen(
            [os.path.join(os.path.dirname(self.binary), "xenvfb-testtool"), "sim-guest", "--machine", self.dir, "--xenstore", self.guest_socket,
             "--domid", str(self.domid), "--commands"] + list(extra),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.guest_lines = []
        self.lock = threading.Lock()

        def reader():
            for raw in self.guest.stdout:
                with self.lock:
                    self.guest_lines.append(raw.decode().strip())
        threading.Thread(target=reader, daemon=True).start()

    def said(self, line):
        with self.lock:
            return line in self.guest_lines

    def tell(self, line, answer, timeout=TIMEOUT):
        self.guest.stdin.write((line + "\n").encode())
        self.guest.stdin.flush()
        self.wait_for(lambda: self.said(answer), f"guest answer '{answer}'", timeout)

    def inputs(self):
        with self.lock:
            return [l for l in self.guest_lines if l.split(" ")[0] in ("key", "pos", "motion")]

    def start_guest_when_ready(self, *extra, kinds=("vfb", "vkbd")):
        """Starts the guest once the backends wait for it (InitWait), as libxl
        unpauses a domain only after its device model is ready."""
        self.wait_for(lambda: self.xs_read(f"/local/domain/0/device-model/{self.domid}/state") == "running",
                      "device-model state = running")
        for t in kinds:
            self.wait_for(lambda: self.xs_read(f"/local/domain/0/backend/{t}/{self.domid}/0/state") == "2",
                          f"{t} backend InitWait")
        self.start_guest(*extra)

    def wait_connected(self):
        self.wait_for(lambda: self.xs_read(f"/local/domain/0/device-model/{self.domid}/state") == "running",
                      "device-model state = running")
        for t in ("vfb", "vkbd"):
            self.wait_for(lambda: self.xs_read(f"/local/domain/0/backend/{t}/{self.domid}/0/state") == "4",
                          f"{t} backend Connected")
        self.wait_for(lambda: self.said("drawn"), "the guest's first picture")

    def guest_frame(self):
        self.dumps = getattr(self, "dumps", 0) + 1
        path = os.path.join(self.dir, f"guest{self.dumps}.ppm")
        self.tell("dump " + path, "dumped " + path)
        with open(path, "rb") as f:
            return f.read()

    def vdispl_frame(self):
        """Connector 0's shown buffer, as the guest dumps it (PPM)."""
        self.dumps = getattr(self, "dumps", 0) + 1
        path = os.path.join(self.dir, f"vdispl{self.dumps}.ppm")
        self.tell("vdump " + path, "vdumped " + path)
        with open(path, "rb") as f:
            return f.read()

    def stop(self):
        for p in (self.guest, self.dm):
            if p and p.poll() is None:
                p.kill()
                p.wait()


def rgb_of_png(path):
    from PIL import Image
    im = Image.open(path)
    im.load()
    return im.size, im.mode, im.convert("RGB").tobytes()


def ppm_body(data):
    """Width, height and pixel bytes of a binary PPM with the usual header."""
    parts = data.split(b"\n", 3)
    check(parts[0] == b"P6" and parts[2] == b"255", f"not a P6 PPM: {data[:20]!r}")
    w, h = map(int, parts[1].split())
    return w, h, parts[3]


async def qmp_connect(m):
    qmp = QMPClient("xenvfb-test")
    await qmp.connect(m.qmp_path)
    return qmp


# ---------------------------------------------------------------------------

async def lifecycle(m):
    """state=running, both devices Connected, SIGHUP: Closing then Closed, exit 0,
    and nothing left of what the device model wrote for libxl."""
    m.start_dm()
    m.start_guest_when_ready()
    m.wait_connected()
    check(m.xs_exists(f"/local/domain/0/device-model/{m.domid}/backends/vfb"), "backends/vfb registered")
    check(m.xs_exists(f"/local/domain/0/device-model/{m.domid}/backends/vkbd"), "backends/vkbd registered")
    m.dm.send_signal(signal.SIGHUP)
    status = m.dm.wait(TIMEOUT)
    log = m.dm_log()
    check(status == 0, f"exit status {status} after SIGHUP\n{log}")
    for t in ("vfb", "vkbd"):
        st = m.xs_read(f"/local/domain/0/backend/{t}/{m.domid}/0/state")
        check(st == "6", f"{t} backend state {st} after shutdown, want 6 (Closed)")
        check(f"{t}: backend Connected -> Closing" in log and f"{t}: backend Closing -> Closed" in log,
              f"{t}: no Connected -> Closing -> Closed in the log\n{log}")
    check(not m.xs_exists(f"/local/domain/0/device-model/{m.domid}/state"), "device-model state left behind")
    check(not m.xs_exists(f"/local/domain/0/device-model/{m.domid}"), "device-model directory left behind")
    check(not os.path.exists(m.qmp_path), "QMP socket left behind")


async def qmp(m):
    """screendump fresh (even with a 5 s coalescing tick) and byte-identical to
    the guest in PPM and PNG; send-key and input-send-event arrive in order."""
    m.start_dm("--update-interval", "5000")
    m.start_guest_when_ready()
    m.wait_connected()
    q = await qmp_connect(m)
    try:
        # Freshness: the guest changes its picture, and the dump at once shows it.
        for seed, fmt in ((1, "ppm"), (2, "png"), (3, None)):
            m.tell(f"draw {seed}", f"drawn {seed}")
            out = os.path.join(m.dir, f"shot{seed}")
            args = {"filename": out}
            if fmt:
                args["format"] = fmt
            await q.execute("screendump", args)
            guest = m.guest_frame()
            if fmt == "png":
                (w, h), mode, rgb = rgb_of_png(out)
                gw, gh, body = ppm_body(guest)
                check((w, h) == (gw, gh) and mode == "RGB", f"PNG is {w}x{h} {mode}")
                check(rgb == body, f"draw {seed}: the PNG differs from the guest framebuffer")
            else:
                with open(out, "rb") as f:
                    data = f.read()
                check(data == guest, f"draw {seed}: the {fmt or 'default (ppm)'} dump differs from the guest framebuffer")
        try:
            await q.execute("screendump", {"filename": os.path.join(m.dir, "x"), "format": "bmp"})
            check(False, "format bmp accepted")
        except ExecuteError as e:
            check("format" in str(e), f"unexpected error {e}")

        # Input: one queue, in order, across commands.
        before = len(m.inputs())
        await q.execute("send-key", {"keys": [{"type": "qcode", "data": "shift"}, {"type": "qcode", "data": "a"}],
                                     "hold-time": 20})
        await q.execute("input-send-event", {"events": [
            {"type": "key", "data": {"down": True, "key": {"type": "qcode", "data": "b"}}},
            {"type": "key", "data": {"down": False, "key": {"type": "number", "data": 0x30}}},
            {"type": "abs", "data": {"axis": "x", "value": 16384}},
            {"type": "abs", "data": {"axis": "y", "value": 16384}},
            {"type": "btn", "data": {"down": True, "button": "left"}},
            {"type": "btn", "data": {"down": False, "button": "left"}},
            {"type": "abs", "data": {"axis": "x", "value": 0x7fff}},
        ]})
        await q.execute("send-key", {"keys": [{"type": "qcode", "data": "ret"}]})
        expected = ["key 42 1", "key 30 1", "key 30 0", "key 42 0",
                    "key 48 1", "key 48 0", "pos 399 299 0", "key 272 1", "key 272 0", "pos 799 299 0",
                    "key 28 1", "key 28 0"]
        m.wait_for(lambda: len(m.inputs()) >= before + len(expected), "the guest to receive the input")
        got = m.inputs()[before:]
        check(got == expected, f"guest received {got}, want {expected}")
        for bad in ({"keys": [{"type": "qcode", "data": "nosuchkey"}]}, {"keys": []}):
            try:
                await q.execute("send-key", bad)
                check(False, f"send-key {bad} accepted")
            except ExecuteError:
                pass
        # The probe libxl makes, and the frame counter.
        opts = await q.execute("query-command-line-options")
        check(any(o["option"] == "vnc" for o in opts), f"query-command-line-options: {opts}")
        f1 = await q.execute("x-xenvfb-query-frame")
        m.tell("draw 9", "drawn 9")
        f2 = await q.execute("x-xenvfb-query-frame")
        check(f2["changes"] > f1["changes"] and f2["width"] == 800 and f2["height"] == 600, f"frame {f1} -> {f2}")
        vnc = await q.execute("query-vnc")
        check(vnc == {"enabled": False}, f"query-vnc without VNC: {vnc}")
    finally:
        await q.disconnect()


def rfb_hold(port):
    """A minimal RFB client (handshake only) that stays connected."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    version = s.recv(12)
    check(version.startswith(b"RFB 003."), f"server version {version!r}")
    s.sendall(b"RFB 003.008\n")
    n = s.recv(1)[0]
    types = s.recv(n)
    check(1 in types, f"security types {list(types)}")
    s.sendall(b"\x01")
    check(s.recv(4) == b"\0\0\0\0", "security result")
    s.sendall(b"\x01")  # shared
    s.recv(24)
    return s


async def vnc(m):
    """query-vnc and query-vnc-servers tell the truth; a vncdo client shows in
    the clients while it is connected; its capture matches the guest."""
    m.start_dm("--vnc", "127.0.0.1:20,to=99")
    m.start_guest_when_ready()
    m.wait_connected()
    q = await qmp_connect(m)
    try:
        info = await q.execute("query-vnc")
        check(info["enabled"] is True and info["host"] == "127.0.0.1" and info["family"] == "ipv4"
              and info["auth"] == "none" and info["clients"] == [], f"query-vnc: {info}")
        port = int(info["service"])
        check(5920 <= port <= 5999, f"port {port}")
        probe = socket.create_connection(("127.0.0.1", port), timeout=5)
        check(probe.recv(12).startswith(b"RFB"), "something else answers on the reported port")
        probe.close()
        servers = await q.execute("query-vnc-servers")
        check(len(servers) == 1 and servers[0]["server"][0]["service"] == str(port), f"query-vnc-servers: {servers}")

        vncdo = os.path.join(os.path.dirname(sys.executable), "vncdo")
        shot = os.path.join(m.dir, "vncdo.png")
        client = subprocess.Popen([vncdo, "-s", f"127.0.0.1::{port}", "capture", shot, "pause", "3"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + TIMEOUT
        seen = None
        while time.monotonic() < deadline and client.poll() is None:
            info = await q.execute("query-vnc")
            if info["clients"]:
                seen = info["clients"]
                break
            await asyncio.sleep(0.05)
        check(seen is not None and len(seen) == 1 and seen[0]["host"] == "127.0.0.1" and seen[0]["family"] == "ipv4",
              f"vncdo never showed in query-vnc clients: {seen}")
        held = rfb_hold(port)
        info = await q.execute("query-vnc")
        services = {c["service"] for c in info["clients"]}
        check(str(held.getsockname()[1]) in services and len(info["clients"]) == 2, f"clients {info['clients']}")
        check(client.wait(TIMEOUT) == 0, f"vncdo failed: {client.stderr.read().decode()}")
        (w, h), _, rgb = rgb_of_png(shot)
        gw, gh, body = ppm_body(m.guest_frame())
        check((w, h) == (gw, gh) and rgb == body, "the vncdo capture differs from the guest framebuffer")
        held.close()
        deadline = time.monotonic() + TIMEOUT
        while (await q.execute("query-vnc"))["clients"]:
            check(time.monotonic() < deadline, "clients did not go away")
            await asyncio.sleep(0.05)
        try:
            await q.execute("change-vnc-password", {"password": "secret"})
            check(False, "a password was accepted by a server without password=on")
        except ExecuteError:
            pass
    finally:
        await q.disconnect()


async def vnc_password(m):
    """With password=on, set_password lets a client in; expire_password now locks it out."""
    m.start_dm("--vnc", "127.0.0.1:20,to=99,password=on")
    m.start_guest_when_ready()
    m.wait_connected()
    q = await qmp_connect(m)
    try:
        info = await q.execute("query-vnc")
        check(info["auth"] == "vnc", f"query-vnc auth: {info}")
        port = int(info["service"])
        vncdo = os.path.join(os.path.dirname(sys.executable), "vncdo")
        shot = os.path.join(m.dir, "pw.png")
        await q.execute("set_password", {"protocol": "vnc", "password": "s3cret"})
        r = subprocess.run([vncdo, "-s", f"127.0.0.1::{port}", "-p", "s3cret", "capture", shot],
                           capture_output=True, timeout=TIMEOUT)
        check(r.returncode == 0 and os.path.exists(shot), f"vncdo with the password failed: {r.stderr.decode()}")
        await q.execute("expire_password", {"protocol": "vnc", "time": "now"})
        r = subprocess.run([vncdo, "-s", f"127.0.0.1::{port}", "-p", "s3cret", "capture", shot + "2"],
                           capture_output=True, timeout=TIMEOUT)
        check(r.returncode != 0, "vncdo got in after the password expired")
    finally:
        await q.disconnect()


async def screenshot(m):
    """`xenvfb screenshot` writes the guest's current picture (PNG and PPM),
    and with --wait-still waits for a still screen or gives up at --timeout."""
    m.start_dm("--update-interval", "5000")
    m.start_guest_when_ready()
    m.wait_connected()
    m.tell("draw 4", "drawn 4")
    png = os.path.join(m.dir, "shot.png")
    r = subprocess.run([m.binary, "screenshot", "--qmp", m.qmp_path, "-o", png], capture_output=True, timeout=TIMEOUT)
    check(r.returncode == 0, f"screenshot failed: {r.stderr.decode()}")
    (w, h), mode, rgb = rgb_of_png(png)
    gw, gh, body = ppm_body(m.guest_frame())
    check((w, h) == (gw, gh) and rgb == body, "the screenshot PNG differs from the guest framebuffer")
    ppm = os.path.join(m.dir, "shot.pic")
    m.tell("draw 5", "drawn 5")
    r = subprocess.run([m.binary, "screenshot", "--qmp", m.qmp_path, "-o", ppm, "--format", "ppm"],
                       capture_output=True, timeout=TIMEOUT)
    check(r.returncode == 0, f"screenshot --format ppm failed: {r.stderr.decode()}")
    with open(ppm, "rb") as f:
        check(f.read() == m.guest_frame(), "the screenshot PPM differs from the guest framebuffer")
    leftovers = [n for n in os.listdir(m.dir) if ".tmp-" in n or ".still-" in n]
    check(not leftovers, f"temporary files left: {leftovers}")

    # A guest that keeps drawing: --wait-still gives up at the timeout, and writes nothing.
    busy = os.path.join(m.dir, "busy.png")
    stop = threading.Event()

    def animate():
        seed = 100
        while not stop.is_set():
            seed += 1
            m.tell(f"draw {seed}", f"drawn {seed}")
            time.sleep(0.02)
    t = threading.Thread(target=animate)
    t.start()
    try:
        r = subprocess.run([m.binary, "screenshot", "--qmp", m.qmp_path, "-o", busy, "--wait-still", "1500",
                            "--timeout", "4"], capture_output=True, timeout=TIMEOUT)
    finally:
        stop.set()
        t.join()
    check(r.returncode == 1 and b"still" in r.stderr, f"--wait-still on a busy screen: {r.returncode} {r.stderr.decode()}")
    check(not os.path.exists(busy), "a picture was written although the screen never was still")
    # Once it stops, --wait-still returns the final picture.
    r = subprocess.run([m.binary, "screenshot", "--qmp", m.qmp_path, "-o", busy, "--wait-still", "300",
                        "--timeout", "20"], capture_output=True, timeout=TIMEOUT)
    check(r.returncode == 0, f"--wait-still on a still screen: {r.stderr.decode()}")
    (w, h), mode, rgb = rgb_of_png(busy)
    check(rgb == ppm_body(m.guest_frame())[2], "the --wait-still picture is not the guest's last frame")


LETTERS = {c: code for row, first in (("qwertyuiop", 16), ("asdfghjkl", 30), ("zxcvbnm", 44))
           for code, c in enumerate(row, first)}


async def burst(m):
    """10,000 keys typed through VNC by vncdo arrive in the guest complete and
    in order, although the guest's ring holds 51 events."""
    m.start_dm("--vnc", "127.0.0.1:20,to=99")
    m.start_guest_when_ready()
    m.wait_connected()
    q = await qmp_connect(m)
    try:
        port = int((await q.execute("query-vnc"))["service"])
    finally:
        await q.disconnect()
    letters = sorted(LETTERS)
    text = "".join(letters[(i * 7 + i // 26) % 26] for i in range(10000))
    expected = []
    for c in text:
        expected += [f"key {LETTERS[c]} 1", f"key {LETTERS[c]} 0"]
    before = len(m.inputs())
    vncdo = os.path.join(os.path.dirname(sys.executable), "vncdo")
    # --delay 0: no pause between keys (vncdo waits 10 ms by default), a real
    # burst; the final pause lets vncdo's event loop send what it queued
    # before it disconnects.
    r = subprocess.run([vncdo, "-s", f"127.0.0.1::{port}", "--delay", "0", "type", text, "pause", "3"],
                       capture_output=True, timeout=300)
    check(r.returncode == 0, f"vncdo type failed: {r.stderr.decode()}")
    try:
        m.wait_for(lambda: len(m.inputs()) >= before + len(expected), "all 20,000 key events", timeout=120)
    except AssertionError:
        got = m.inputs()[before:]
        first_bad = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
        raise AssertionError(f"{len(got)} of {len(expected)} key events arrived; first difference at {first_bad}; "
                             f"vncdo said {r.stderr.decode()[-500:]!r}")
    got = m.inputs()[before:]
    check(len(got) == len(expected), f"{len(got)} events, want {len(expected)}")
    first_bad = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
    check(first_bad is None, f"event {first_bad}: got {got[first_bad] if first_bad is not None else ''}, want {expected[first_bad] if first_bad is not None else ''}")


async def paced(m, *dm_args):
    """With --input-pace, a burst through QMP arrives complete, in order, and
    no faster than the pace."""
    m.start_dm(*(dm_args or ("--input-pace", "3")))
    m.start_guest_when_ready()
    m.wait_connected()
    q = await qmp_connect(m)
    try:
        events, expected = [], []
        for i in range(200):
            code = LETTERS["a"] + i % 9
            events.append({"type": "key", "data": {"down": i % 2 == 0, "key": {"type": "number", "data": code}}})
            expected.append(f"key {code} {1 if i % 2 == 0 else 0}")
        before = len(m.inputs())
        start = time.monotonic()
        await q.execute("input-send-event", {"events": events})
        m.wait_for(lambda: len(m.inputs()) >= before + len(expected), "the paced events")
        elapsed = time.monotonic() - start
        check(m.inputs()[before:] == expected, "paced events out of order or missing")
        check(elapsed >= 199 * 0.003, f"200 events paced at 3 ms arrived in {elapsed:.3f} s")
    finally:
        await q.disconnect()


async def paced_vnc_option(m):
    """QEMU's -vnc ...,key-delay-ms=N paces like --input-pace N."""
    await paced(m, "-vnc", "127.0.0.1:20,to=99,key-delay-ms=3")


class XkbKeyboard:
    """A real keyboard of one layout, as libxkbcommon compiles it from
    xkeyboard-config: the oracle for the keymap scenarios, independent of
    xenvfb's generated tables (and of scripts/keymaps)."""
    SHIFT = 42
    ALTGR = 100
    # The typing block of a 105/106-key PC keyboard (not the keypad): the
    # rows of digits and letters, space, the 102nd key, and JIS's ro and yen.
    TYPING_KEYS = [k for k in range(2, 54) if k not in (14, 15, 28, 29, 42)] + [57, 86, 89, 124]

    def __init__(self, layout, variant, model):
        import ctypes
        self.ctypes = ctypes
        lib = ctypes.CDLL("libxkbcommon.so.0")
        p = ctypes.c_void_p
        for fn, res, argtypes in (("xkb_context_new", p, [ctypes.c_int]),
                                  ("xkb_keymap_new_from_names", p, [p, p, ctypes.c_int]),
                                  ("xkb_state_new", p, [p]), ("xkb_state_unref", None, [p]),
                                  ("xkb_state_update_key", ctypes.c_int, [p, ctypes.c_uint32, ctypes.c_int]),
                                  ("xkb_state_key_get_utf32", ctypes.c_uint32, [p, ctypes.c_uint32]),
                                  ("xkb_state_key_get_one_sym", ctypes.c_uint32, [p, ctypes.c_uint32])):
            getattr(lib, fn).restype, getattr(lib, fn).argtypes = res, argtypes
        self.lib = lib
        names = (ctypes.c_char_p * 5)(b"evdev", model.encode(), layout.encode(),
                                      variant.encode() if variant else None, None)
        self.keymap = lib.xkb_keymap_new_from_names(lib.xkb_context_new(0), ctypes.cast(names, p), 0)
        check(self.keymap, f"libxkbcommon cannot compile {layout}({variant})")
        state = lib.xkb_state_new(self.keymap)
        self.has_altgr = lib.xkb_state_key_get_one_sym(state, self.ALTGR + 8) == 0xFE03  # ISO_Level3_Shift
        lib.xkb_state_unref(state)

    def _char(self, held, key):
        state = self.lib.xkb_state_new(self.keymap)
        for k in held:
            self.lib.xkb_state_update_key(state, k + 8, 1)
        cp = self.lib.xkb_state_key_get_utf32(state, key + 8)
        self.lib.xkb_state_unref(state)
        return cp

    def keys_for(self, text):
        """The evdev events a typist makes for `text`: for each character the
        key and the fewest modifiers (then the lowest level, then the lowest
        key code) that type it, modifiers pressed first, released last."""
        levels = [(), (self.SHIFT,)] + ([(self.ALTGR,), (self.SHIFT, self.ALTGR)] if self.has_altgr else [])
        events = []
        for ch in text:
            options = [(len(mods), n, key, mods) for n, mods in enumerate(levels)
                       for key in self.TYPING_KEYS if self._char(mods, key) == ord(ch)]
            check(options, f"no key types {ch!r} on this layout")
            _, _, key, mods = min(options)
            events += [f"key {m} 1" for m in mods] + [f"key {key} 1", f"key {key} 0"]
            events += [f"key {m} 0" for m in reversed(mods)]
        return events

    def typed(self, events):
        """What a guest of this layout types for these evdev events."""
        state = self.lib.xkb_state_new(self.keymap)
        out = ""
        for line in events:
            _, code, value = line.split()
            code, down = int(code), value == "1"
            cp = self.lib.xkb_state_key_get_utf32(state, code + 8) if down else 0
            if cp >= 0x20:
                out += chr(cp)
            self.lib.xkb_state_update_key(state, code + 8, 1 if down else 0)
        self.lib.xkb_state_unref(state)
        return out


# -k name -> (xkb layout, variant, model), as QEMU defines the name, and a text
# with characters that need Shift and AltGr on that layout (no dead keys).
KEYMAP_TEXTS = {
    "en-us": (("us", None, "pc105"), "Hello, World! @#$%^&*()_+{}|:\"<>?~`-=[]\\;',./ 1234567890"),
    "en-gb": (("gb", None, "pc105"), "Cost: \u00a35 @home #1 ~/x \\|\u00ac \u20ac2 \"hi\" {a} [b] <c>?"),
    "de": (("de", "nodeadkeys", "pc105"), "Gr\u00fc\u00dfe aus K\u00f6ln: 20\u20ac @ [x|y] {\u00df} ~ \\ <>? \"Zitat\" 1+1=2 \u00b5\u00b2"),
    "fr": (("fr", "nodeadkeys", "pc105"), "D\u00e9j\u00e0 vu: o\u00f9 est l'\u00e9t\u00e9? 1234 \u20ac@#{[|`\\^]} \u00e0\u00e7 \u00b5 \u00a7 AZERTY"),
    "sv": (("se", None, "pc105"), "Sm\u00f6rg\u00e5sbord p\u00e5 \u00c5land: 100\u20ac @ {x} [y] |\\ $\u00a3 \u00a7\u00bd <>?"),
    "ja": (("jp", None, "jp106"), "Hello @[]{}:*+;_\\|^ 123 !\"#$%&'()=-"),
}


async def keymap(m, name):
    """-k NAME: a keysym-only VNC client (vncdo type, which sends no Shift or
    AltGr of its own) types a text; the guest gets the keys a real keyboard
    of that layout produces, and they type the text on such a guest."""
    (layout, variant, model), text = KEYMAP_TEXTS[name]
    kbd = XkbKeyboard(layout, variant, model)
    expected = kbd.keys_for(text)
    check(kbd.typed(expected) == text, f"oracle: {kbd.typed(expected)!r} != {text!r}")
    m.start_dm("-k", name, "--vnc", "127.0.0.1:20,to=99")
    m.start_guest_when_ready()
    m.wait_connected()
    q = await qmp_connect(m)
    try:
        port = int((await q.execute("query-vnc"))["service"])
    finally:
        await q.disconnect()
    before = len(m.inputs())
    vncdo = os.path.join(os.path.dirname(sys.executable), "vncdo")
    r = subprocess.run([vncdo, "-s", f"127.0.0.1::{port}", "type", text, "pause", "1"],
                       capture_output=True, timeout=120)
    check(r.returncode == 0, f"vncdo type failed: {r.stderr.decode()}")
    try:
        m.wait_for(lambda: len(m.inputs()) >= before + len(expected), f"{len(expected)} key events", timeout=60)
    except AssertionError:
        pass
    got = m.inputs()[before:]
    first_bad = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
    check(got == expected, f"-k {name}: {len(got)} events, want {len(expected)}; first difference at "
                           f"{first_bad}: got {got[first_bad:first_bad + 6] if first_bad is not None else got[len(expected):]}, "
                           f"want {expected[first_bad:first_bad + 6] if first_bad is not None else []}; "
                           f"the guest would type {kbd.typed(got)!r}")
    check(kbd.typed(got) == text, f"the guest types {kbd.typed(got)!r}, want {text!r}")
    check("has no key" not in m.dm_log(), f"a keysym was dropped:\n{m.dm_log()}")


def keymap_scenario(name):
    async def scenario(m):
        await keymap(m, name)
    scenario.__name__ = "keymap_" + name.replace("-", "_")
    return scenario


async def keymap_unknown(m):
    """-k with a name QEMU does not have is an error at start-up that lists the names."""
    r = subprocess.run([m.binary, "--domid", str(m.domid), "--sim-host", m.dir, "-k", "xx", "--vnc", "127.0.0.1:20,to=99"],
                       env=m.env, capture_output=True, text=True, timeout=TIMEOUT)
    check(r.returncode != 0 and "unknown keymap" in r.stderr and "en-gb" in r.stderr and "sv" in r.stderr,
          f"-k xx: exit {r.returncode}, {r.stderr!r}")


def add_vdispl(m):
    """Adds vdispl device 0 (one 320x200 connector) as libxl does after
    `running` (and `xl vdispl-attach` at any time): the frontend's keys, then
    the backend directory, with libxl's permissions; libxl then waits 10 s
    for InitWait."""
    fe, be = f"/local/domain/{m.domid}/device/vdispl/0", f"/local/domain/0/backend/vdispl/{m.domid}/0"
    xs = lambda *a: subprocess.run(list(a), env=m.env, check=True, capture_output=True)
    xs("xenstore-write", f"{fe}/backend", be, f"{fe}/backend-id", "0", f"{fe}/state", "1", f"{fe}/be-alloc", "0",
       f"{fe}/0/resolution", "320x200", f"{fe}/0/unique-id", "id0")
    xs("xenstore-chmod", "-r", fe, f"n{m.domid}", "r0")
    t0 = time.monotonic()
    xs("xenstore-write", f"{be}/frontend", fe, f"{be}/frontend-id", str(m.domid), f"{be}/online", "1", f"{be}/state", "1")
    xs("xenstore-chmod", "-r", be, "n0", f"r{m.domid}")
    m.wait_for(lambda: m.xs_read(f"{be}/state") == "2", "vdispl backend InitWait", timeout=10)
    print(f"vdispl: backend InitWait {1000 * (time.monotonic() - t0):.0f} ms after the device appeared (libxl waits 10 s)")


async def vdispl_only(m):
    """A guest whose only screen is vdispl, served by `xenvfb --domain NAME
    --vdispl-only` started by hand before the guest exists: it waits for the
    name, serves only vdispl (no running state: that node is libxl's), shows
    the connector as console 0 (VNC, PNG, screendump), and exits by itself,
    cleaning up, once the domain is gone."""
    png = os.path.join(m.dir, "png")
    m.start_dm("--domain", "later-guest", "--vdispl-only", "--vnc", "127.0.0.1:40,to=99",
               "--display", f"png:dir={png},format=ppm,interval=100", domid=False)
    time.sleep(1.5)
    check(m.dm.poll() is None and b"waiting for domain later-guest" in (m.log.seek(0) or m.log.read()),
          f"not waiting for the domain\n{m.dm_log()}")
    subprocess.run(["xenstore-write", f"/local/domain/{m.domid}/name", "later-guest"], env=m.env, check=True)
    m.wait_for(lambda: m.xs_exists(f"/local/domain/0/device-model/{m.domid}/backends/vdispl"), "backends/vdispl registered")
    check(not m.xs_exists(f"/local/domain/0/device-model/{m.domid}/state"), "a --vdispl-only model wrote device-model state")
    check(not m.xs_exists(f"/local/domain/0/device-model/{m.domid}/backends/vfb"), "a --vdispl-only model registered vfb")
    add_vdispl(m)
    m.start_guest("--vdispl-only")
    m.wait_for(lambda: m.said("vdispl-shown"), "the guest's first vdispl picture")
    q = await qmp_connect(m)
    try:
        port = int((await q.execute("query-vnc"))["service"])
        vncdo = os.path.join(os.path.dirname(sys.executable), "vncdo")
        for seed in (None, 3):
            if seed is not None:
                m.tell(f"vflip {seed}", f"vflipped {seed}")
            want = m.vdispl_frame()
            out = os.path.join(m.dir, f"only{seed}.ppm")
            await q.execute("screendump", {"filename": out})
            with open(out, "rb") as f:
                check(f.read() == want, f"vflip {seed}: console 0 is not the connector's picture")
            shot = os.path.join(m.dir, f"only{seed}.png")
            r = subprocess.run([vncdo, "-s", f"127.0.0.1::{port}", "capture", shot], capture_output=True, timeout=TIMEOUT)
            check(r.returncode == 0, f"vncdo: {r.stderr.decode()}")
            check(rgb_of_png(shot)[2] == ppm_body(want)[2], f"vflip {seed}: the VNC capture differs from the guest's buffer")

            def png_matches():
                try:
                    with open(os.path.join(png, "latest.ppm"), "rb") as f:
                        return f.read() == want
                except OSError:
                    return False
            m.wait_for(png_matches, f"vflip {seed}: the PNG display to show the guest's buffer")
    finally:
        await q.disconnect()
    # The domain goes (libxl removes its nodes): the model stops by itself.
    m.guest.kill()
    subprocess.run(["xenstore-rm", f"/local/domain/0/backend/vdispl/{m.domid}"], env=m.env, check=True)
    subprocess.run(["xenstore-rm", f"/local/domain/{m.domid}"], env=m.env, check=True)
    status = m.dm.wait(TIMEOUT)
    log = m.dm_log()
    check(status == 0 and f"domain {m.domid} is gone" in log, f"exit status {status} after the domain went\n{log}")
    check(not m.xs_exists(f"/local/domain/0/device-model/{m.domid}"), "device-model directory left behind")


async def vdispl(m):
    """A vdispl device added once the model runs reaches InitWait within
    libxl's 10 s. Its connector is console 1 (the vfb keeps console 0): it
    gets a VNC server of its own, whose capture by vncdo is what the guest
    shows; the PNG display's DIR/console-1; QMP screendump by device and
    head, as QEMU names consoles. A page flip completes and reaches all
    three, and keys typed on console 1's VNC reach the guest's one keyboard."""
    png = os.path.join(m.dir, "png")
    m.start_dm("--vnc", "127.0.0.1:30,to=99", "--display", f"png:dir={png},format=ppm,interval=100")
    m.wait_for(lambda: m.xs_read(f"/local/domain/0/device-model/{m.domid}/state") == "running", "device-model state = running")
    add_vdispl(m)
    m.start_guest_when_ready("--vdispl", kinds=("vfb", "vkbd", "vdispl"))
    m.wait_connected()
    m.wait_for(lambda: m.xs_read(f"/local/domain/0/backend/vdispl/{m.domid}/0/state") == "4", "vdispl backend Connected")
    m.wait_for(lambda: m.said("vdispl-shown"), "the guest's first vdispl picture")
    vncdo = os.path.join(os.path.dirname(sys.executable), "vncdo")
    q = await qmp_connect(m)
    try:
        servers = await q.execute("query-vnc-servers")
        check(sorted(s["id"] for s in servers) == ["console1", "default"], f"query-vnc-servers: {servers}")
        port0 = int((await q.execute("query-vnc"))["service"])
        port1 = int(next(s for s in servers if s["id"] == "console1")["server"][0]["service"])
        check(5930 <= port0 < port1 <= 6030, f"ports {port0}, {port1}")

        for seed in (None, 7):
            if seed is not None:
                m.tell(f"vflip {seed}", f"vflipped {seed}")
            want = m.vdispl_frame()
            ww, wh, wbody = ppm_body(want)
            check((ww, wh) == (320, 200), f"guest buffer {ww}x{wh}")
            out = os.path.join(m.dir, f"head{seed}.ppm")
            await q.execute("screendump", {"filename": out, "device": "vdispl-0", "head": 0})
            with open(out, "rb") as f:
                check(f.read() == want, f"vflip {seed}: screendump of vdispl-0 head 0 differs from the guest's buffer")
            out0 = os.path.join(m.dir, f"console0-{seed}.ppm")
            await q.execute("screendump", {"filename": out0})
            with open(out0, "rb") as f:
                check(f.read() == m.guest_frame(), "console 0 is not the vfb's picture")
            shot = os.path.join(m.dir, f"vnc1-{seed}.png")
            r = subprocess.run([vncdo, "-s", f"127.0.0.1::{port1}", "capture", shot], capture_output=True, timeout=TIMEOUT)
            check(r.returncode == 0, f"vncdo on console 1: {r.stderr.decode()}")
            (w, h), _, rgb = rgb_of_png(shot)
            check((w, h) == (320, 200) and rgb == wbody, f"vflip {seed}: console 1's VNC capture differs from the guest's buffer")
            latest = os.path.join(png, "console-1", "latest.ppm")

            def png_matches():
                try:
                    with open(latest, "rb") as f:
                        return ppm_body(f.read())[2] == wbody
                except (OSError, AssertionError, ValueError):
                    return False
            m.wait_for(png_matches, f"vflip {seed}: {latest} to show the guest's buffer")

        for args, text in (({"head": 0}, "'head' must be specified together with 'device'"),
                           ({"device": "nope"}, "Device 'nope' not found"),
                           ({"device": "vdispl-0", "head": 1}, "Device vdispl-0 (head 1) is not bound to a QemuConsole")):
            try:
                await q.execute("screendump", dict(args, filename=os.path.join(m.dir, "bad.ppm")))
                check(False, f"screendump {args} accepted")
            except ExecuteError as e:
                check(text in str(e), f"screendump {args}: {e}")

        before = len(m.inputs())
        r = subprocess.run([vncdo, "-s", f"127.0.0.1::{port1}", "key", "a"], capture_output=True, timeout=TIMEOUT)
        check(r.returncode == 0, f"vncdo key on console 1: {r.stderr.decode()}")
        m.wait_for(lambda: m.inputs()[before:] == ["key 30 1", "key 30 0"], "the key typed on console 1 to reach the guest")

        # Both screens still, a VNC server per console, the PNG display and QMP
        # connected: nothing wakes but the loop's compare of the shown vdispl
        # buffer (drm/xen-front reports no damage for drawing without a
        # flip), which backs off from 50 to 800 ms while it finds nothing.
        # 1 s first for the PNG display's last write, then 3 s watched; every
        # thread's context switches.
        def switches():
            counts = {}
            for t in os.listdir(f"/proc/{m.dm.pid}/task"):
                try:
                    with open(f"/proc/{m.dm.pid}/task/{t}/comm") as f:
                        name = f"{f.read().strip()}/{t}"
                    with open(f"/proc/{m.dm.pid}/task/{t}/status") as f:
                        counts[name] = sum(int(line.split()[1]) for line in f
                                           if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
                except OSError:
                    pass
            return counts
        time.sleep(1)
        before = switches()
        time.sleep(3)
        after = switches()
        woke = {t: n - before.get(t, 0) for t, n in after.items() if n != before.get(t, 0)}
        loop = f"xenvfb/{m.dm.pid}"
        # (Two wake-ups elsewhere are let through: a PNG write or a client's
        # last frame running late on a busy host; a timer would make dozens.)
        others = sum(n for t, n in woke.items() if t != loop)
        check(woke.get(loop, 0) <= 5 and others <= 2,
              f"woke in 3 s with vfb and vdispl screens still (the loop may poll every 800 ms): {woke}")
    finally:
        await q.disconnect()


SCENARIOS = {f.__name__: f for f in (lifecycle, qmp, vnc, vnc_password, screenshot, burst, paced, paced_vnc_option, vdispl, vdispl_only,
                                     keymap_unknown, *(keymap_scenario(n) for n in KEYMAP_TEXTS))}


def main():
    name, binary, directory, dom0, guest, domid = sys.argv[1:7]
    m = Machine(binary, directory, dom0, guest, domid)
    try:
        asyncio.run(asyncio.wait_for(SCENARIOS[name](m), 150))
    except Exception as e:  # noqa: BLE001 - report everything
        print(f"{name}: FAILED: {type(e).__name__}: {e}")
        print(m.dm_log())
        return 1
    finally:
        m.stop()
    print(f"{name}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
