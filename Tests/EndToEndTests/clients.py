#!/usr/bin/env python3
"""Real VNC clients at their default settings against the device model over a
simulated machine (device_model.py's harness: `xenvfb --domid N --sim-host DIR`
with `xenvfb-testtool sim-guest` as the guest process). Every picture a client
shows is compared, pixel for pixel, with the guest's own framebuffer dump (its
many-colour start-up pattern); typed text and clicks must reach the guest as
exactly those evdev keys and buttons; a guest resize must be followed.

Clients (none written by this project):
- noVNC 1.3.0 (Debian `novnc`) in headless Chromium driven by selenium, over
  ws:// straight to xenvfb's WebSocket listener and over wss:// with the test
  CA in Chromium's NSS database; the canvas is read with toDataURL;
- TigerVNC's viewer (Debian `tigervnc-viewer`) under Xvfb, screenshotted with
  xwd, driven with xdotool; plain and VeNCrypt (X509None, X509Vnc);
- gtk-vnc's gvnccapture, plain and VeNCrypt;
- clients that must be refused: gvnccapture and Chromium without the CA, a
  TLS client without a certificate when verify-peer=on.

Each scenario prints `observed: CLIENT pixel format / encodings` lines from the
device model's debug log (the README's client table comes from them).

Usage: clients.py SCENARIO XENVFB MACHINE_DIR DOM0_SOCKET GUEST_SOCKET DOMID
"""
import asyncio
import base64
import functools
import http.server
import io
import math
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import device_model as dm  # noqa: E402  (the harness: Machine, check, qmp_connect, ppm_body)
from device_model import check, ppm_body, qmp_connect  # noqa: E402

# Debian's python3-selenium (and what it needs) for the venv's interpreter,
# after the venv's own packages.
DEBIAN_PYTHON = "/usr/lib/python3/dist-packages"
if DEBIAN_PYTHON not in sys.path:
    sys.path.append(DEBIAN_PYTHON)

TIMEOUT = 30
NOVNC = "/usr/share/novnc"
TYPED = "xenvfb 42"
# The evdev codes a US keyboard makes for TYPED.
TYPED_CODES = [45, 18, 49, 47, 33, 48, 57, 5, 3]


def rgb_of_png_bytes(data):
    from PIL import Image
    im = Image.open(io.BytesIO(data))
    im.load()
    return im.size, im.convert("RGB").tobytes()


def difference(a, b):
    """How many pixels differ between two RGB byte strings, and by how much at most."""
    n = min(len(a), len(b)) // 3
    bad, worst = 0, 0
    for i in range(n):
        d = max(abs(a[3 * i + k] - b[3 * i + k]) for k in range(3))
        if d:
            bad += 1
            worst = max(worst, d)
    return bad, worst


def wait_picture(m, grab, what, timeout=TIMEOUT, reduce=None):
    """Waits until `grab()` (-> (w, h, rgb) or None) shows exactly the guest's
    framebuffer (reduced by `reduce`, for a client in fewer colours)."""
    gw, gh, body = ppm_body(m.guest_frame())
    if reduce:
        body = reduce(body)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        got = grab()
        if got is not None:
            w, h, rgb = got
            if (w, h) == (gw, gh) and rgb == body:
                return
            last = (w, h, rgb)
        if time.monotonic() > deadline:
            if last is None:
                raise AssertionError(f"{what}: no picture from the client")
            w, h, rgb = last
            if (w, h) != (gw, gh):
                raise AssertionError(f"{what}: the client shows {w}x{h}, the guest is {gw}x{gh}")
            bad, worst = difference(rgb, body)
            raise AssertionError(f"{what}: {bad} of {gw * gh} pixels differ from the guest (max {worst})")
        time.sleep(0.3)


def dm_text(m):
    """The device model's log so far (read without moving the offset it writes at)."""
    fd = m.log.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")


def observed(m, client):
    """Prints what the client asked for, from the device model's debug log."""
    text = dm_text(m)
    lines = []
    for kind in ("client pixel format", "client encodings", "client update encoding", "VNC client TLS established"):
        values = []
        for line in text.splitlines():
            match = re.search(kind + r":? (.*?)(?: (?:client|listen)=\S+)*$", line)
            if match and match.group(1) not in values:
                values.append(match.group(1))
        if values:
            lines.append(f"observed: {client}: {kind}: " + " | ".join(values))
    for line in lines or [f"observed: {client}: server pixel format (none set)"]:
        print(line)


def key_codes(events):
    """The key lines of the guest's input (down and up), without buttons."""
    return [e for e in events if e.startswith("key ") and int(e.split()[1]) < 256]


def check_typed(m, before, what):
    expected = []
    for c in TYPED_CODES:
        expected += [f"key {c} 1", f"key {c} 0"]
    m.wait_for(lambda: len(key_codes(m.inputs()[before:])) >= len(expected), f"{what}: the typed keys")
    got = key_codes(m.inputs()[before:])
    check(got == expected, f"{what}: the guest got {got}, want {expected}")


def check_click(m, before, x, y, what):
    def clicked():
        return "key 272 0" in m.inputs()[before:]
    m.wait_for(clicked, f"{what}: the click")
    got = m.inputs()[before:]
    down = got.index("key 272 1")
    positions = [e for e in got[:down] if e.startswith("pos ")]
    check(positions and positions[-1] == f"pos {x} {y} 0",
          f"{what}: the button went down at {positions[-1] if positions else 'no position'}, want ({x}, {y}): {got}")
    check("key 272 0" in got[down:], f"{what}: no button release: {got}")


# --- certificates --------------------------------------------------------------

def make_pki(directory, client=False):
    """A CA, a server certificate for localhost/127.0.0.1 signed by it (QEMU's
    file names), and with `client` a client certificate too."""
    os.makedirs(directory, exist_ok=True)

    def run(*argv):
        r = subprocess.run(argv, capture_output=True, text=True)
        check(r.returncode == 0, f"{' '.join(argv)}: {r.stderr}")

    ca_key, ca = os.path.join(directory, "ca-key.pem"), os.path.join(directory, "ca-cert.pem")
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=xenvfb test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, subject, ext in (("server", "/CN=localhost",
                                "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                               ("client", "/CN=xenvfb test client", "extendedKeyUsage=clientAuth\n")):
        if name == "client" and not client:
            continue
        key, csr = os.path.join(directory, f"{name}-key.pem"), os.path.join(directory, f"{name}.csr")
        extfile = os.path.join(directory, f"{name}.ext")
        with open(extfile, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n" + ext)
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", subject)
        run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", os.path.join(directory, f"{name}-cert.pem"), "-days", "2", "-extfile", extfile)
    return ca


def tls_args(pki, verify_peer=False):
    return ["-object", f"tls-creds-x509,id=tls0,dir={pki},endpoint=server,verify-peer={'on' if verify_peer else 'off'}"]


async def start(m, vnc, *extra):
    """The device model with VNC `vnc` (debug log: the client's formats), the
    guest, and the VNC (and WebSocket) ports from query-vnc-servers."""
    m.start_dm("--log-level", "debug", "--vnc", vnc, *extra)
    m.start_guest_when_ready()
    m.wait_connected()
    q = await qmp_connect(m)
    try:
        servers = await q.execute("query-vnc-servers")
        vnc_info = await q.execute("query-vnc")
    finally:
        await q.disconnect()
    ports = {s["websocket"]: int(s["service"]) for s in servers[0]["server"]}
    return ports[False], ports.get(True), servers[0], vnc_info


# --- noVNC in Chromium ------------------------------------------------------------

class NoVNCPages(http.server.ThreadingHTTPServer):
    """Serves Debian's noVNC files on a loopback port (Chromium does not load
    ES modules from file:// URLs)."""

    def __init__(self):
        handler = functools.partial(QuietHandler, directory=NOVNC)
        super().__init__(("127.0.0.1", 0), handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self):
        return self.server_address[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Chromium:
    """Headless Chromium through Debian's chromedriver and python3-selenium;
    `home` holds its profile and NSS database (a CA may be trusted there)."""

    def __init__(self, home):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  f"--user-data-dir={home}/profile", "--window-size=1200,900", "--no-first-run"):
            options.add_argument(a)
        env = dict(os.environ, HOME=home)
        service = Service(executable_path="/usr/bin/chromedriver", env=env)
        old_home = os.environ.get("HOME")
        os.environ["HOME"] = home  # Chromium's NSS database is $HOME/.pki/nssdb
        try:
            self.driver = webdriver.Chrome(service=service, options=options)
        finally:
            if old_home is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = old_home

    def quit(self):
        try:
            self.driver.quit()
        except Exception:  # noqa: BLE001 - best effort at the end
            pass

    def open_novnc(self, page_port, ws_port, encrypt):
        url = (f"http://127.0.0.1:{page_port}/vnc.html?host=127.0.0.1&port={ws_port}&autoconnect=true"
               f"&encrypt={1 if encrypt else 0}&path=websockify")
        self.driver.get(url)

    def state(self):
        return self.driver.execute_script(
            "const s = document.getElementById('noVNC_status'); return s ? s.textContent : '';")

    def canvas_picture(self):
        data = self.driver.execute_script("""
            const c = document.querySelector('#noVNC_container canvas');
            if (!c || c.width === 0) return null;
            return [c.width, c.height, c.toDataURL('image/png')];""")
        if not data:
            return None
        w, h, url = data
        (pw, ph), rgb = rgb_of_png_bytes(base64.b64decode(url.split(",", 1)[1]))
        return pw, ph, rgb

    def canvas(self):
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.CSS_SELECTOR, "#noVNC_container canvas")

    def click(self, x, y):
        """A left click at framebuffer (x, y) (the canvas is not scaled)."""
        from selenium.webdriver.common.actions.action_builder import ActionBuilder
        # The canvas may sit at a fractional position: pick the viewport pixel
        # whose offset into the canvas is (x, y) once truncated.
        left, top = self.driver.execute_script("""
            const r = document.querySelector('#noVNC_container canvas').getBoundingClientRect();
            return [r.left, r.top];""")
        actions = ActionBuilder(self.driver)
        actions.pointer_action.move_to_location(math.ceil(left + x), math.ceil(top + y)).click()
        actions.perform()

    def type(self, text):
        from selenium.webdriver.common.action_chains import ActionChains
        ActionChains(self.driver).send_keys(text).perform()


def trust_ca_in_nss(home, ca):
    """Puts the CA into $HOME/.pki/nssdb, where Chromium on Linux looks."""
    db = os.path.join(home, ".pki", "nssdb")
    os.makedirs(db, exist_ok=True)
    for argv in (["certutil", "-N", "-d", f"sql:{db}", "--empty-password"],
                 ["certutil", "-A", "-d", f"sql:{db}", "-n", "xenvfb test CA", "-t", "C,,", "-i", ca]):
        r = subprocess.run(argv, capture_output=True, text=True)
        check(r.returncode == 0, f"{' '.join(argv)}: {r.stderr}")


async def novnc(m, tls):
    home = tempfile.mkdtemp(prefix="novnc-", dir=m.dir)
    extra = []
    if tls:
        ca = make_pki(os.path.join(m.dir, "pki"))
        trust_ca_in_nss(home, ca)
        extra = tls_args(os.path.join(m.dir, "pki"))
    vnc = "127.0.0.1:20,to=99,websocket=on" + (",tls-creds=tls0" if tls else "")
    vnc_port, ws_port, servers, _ = await start(m, vnc, *extra)
    ws = next(s for s in servers["server"] if s["websocket"])
    check(ws["auth"] == "none" and (servers.get("vencrypt") == "x509-none") == tls, f"query-vnc-servers: {servers}")
    check(5720 <= ws_port <= 5799, f"websocket=on with 127.0.0.1:20,to=99: port {ws_port}, want 5700 + 20…99")
    pages = NoVNCPages()
    browser = Chromium(home)
    name = "noVNC over " + ("wss://" if tls else "ws://")
    try:
        browser.open_novnc(pages.port, ws_port, tls)
        m.wait_for(lambda: "Connected" in (browser.state() or "") or browser.canvas_picture() is not None,
                   f"{name}: noVNC to connect")
        wait_picture(m, browser.canvas_picture, name)
        q = await qmp_connect(m)
        try:
            clients = (await q.execute("query-vnc"))["clients"]
        finally:
            await q.disconnect()
        check(len(clients) == 1 and clients[0]["websocket"] is True, f"query-vnc clients: {clients}")
        before = len(m.inputs())
        browser.click(123, 45)
        check_click(m, before, 123, 45, name)
        before = len(m.inputs())
        browser.type(TYPED)
        check_typed(m, before, name)
        m.tell("resize 640 480", "resized 640 480")
        wait_picture(m, browser.canvas_picture, name + " after a resize to 640x480")
        observed(m, name)
    finally:
        browser.quit()
        pages.shutdown()


async def novnc_ws(m):
    """noVNC 1.3.0 in headless Chromium over ws:// straight to websocket=on:
    exact pictures, clicks, typed keys, a resize followed."""
    await novnc(m, tls=False)


async def novnc_wss(m):
    """The same over wss:// (tls-creds=), the test CA trusted in Chromium's NSS database."""
    await novnc(m, tls=True)


async def novnc_wss_without_ca(m):
    """Chromium without the CA cannot connect over wss:// (and sees no picture)."""
    make_pki(os.path.join(m.dir, "pki"))
    _, ws_port, _, _ = await start(m, "127.0.0.1:20,to=99,websocket=on,tls-creds=tls0", *tls_args(os.path.join(m.dir, "pki")))
    home = tempfile.mkdtemp(prefix="novnc-", dir=m.dir)
    pages = NoVNCPages()
    browser = Chromium(home)
    try:
        browser.open_novnc(pages.port, ws_port, True)
        # The browser gets as far as the server's certificate and gives up there.
        m.wait_for(lambda: "disconnected: TLS handshake" in dm_text(m), "the browser to abandon the TLS handshake")
        check(browser.canvas_picture() is None or "Connected" not in (browser.state() or ""),
              f"noVNC connected over wss:// without the CA: {browser.state()!r}")
        check("TLS established" not in dm_text(m), "a TLS session was established with a browser that lacks the CA")
    finally:
        browser.quit()
        pages.shutdown()


# --- TigerVNC under Xvfb -------------------------------------------------------------

class Xvfb:
    """An X server of the test's own, on a random free display number from 100
    up (as SDLUnderXvfbTests does), never :0 or the low numbers a desktop or a
    killed earlier Xvfb may hold; ready once its socket exists. Its output is
    kept in `directory`/xvfb.log for a failure's message."""

    def __init__(self, directory):
        self.log_path = os.path.join(directory, "xvfb.log")
        for _ in range(20):
            n = random.randint(100, 2000)
            if os.path.exists(f"/tmp/.X11-unix/X{n}") or os.path.exists(f"/tmp/.X{n}-lock"):
                continue
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                                             stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None and not os.path.exists(f"/tmp/.X11-unix/X{n}"):
                time.sleep(0.02)
            if self.proc.poll() is None and os.path.exists(f"/tmp/.X11-unix/X{n}"):
                self.display = f":{n}"
                break
            self.stop()
        else:
            check(False, f"could not start Xvfb on a free display: {self.log()}")
        self.env = dict(os.environ, DISPLAY=self.display, HOME=directory)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def run(self, *argv, check_ok=True):
        r = subprocess.run(argv, env=self.env, capture_output=True, timeout=TIMEOUT)
        if check_ok:
            check(r.returncode == 0, f"{' '.join(argv)}: {r.stderr.decode()}")
        return r.stdout

    def window_geometry(self, wid):
        out = self.run("xwininfo", "-id", wid).decode()
        get = lambda k: int(re.search(k + r":\s+(-?\d+)", out).group(1))  # noqa: E731
        return get("Absolute upper-left X"), get("Absolute upper-left Y"), get("Width"), get("Height")

    def screenshot(self, x, y, w, h):
        """The screen's pixels in (x, y, w, h), through xwd (as the SDL test)."""
        from PIL import Image
        xwd = self.run("xwd", "-root", "-silent")
        png = subprocess.run(["convert", "xwd:-", "png:-"], input=xwd, capture_output=True, timeout=TIMEOUT).stdout
        im = Image.open(io.BytesIO(png)).convert("RGB").crop((x, y, x + w, y + h))
        return im.size[0], im.size[1], im.tobytes()

    def stop(self):
        # SIGTERM: Xvfb removes its lock file and socket on the way out.
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class TigerVNC:
    """xtigervncviewer at its defaults (AutoSelect, full colour) in Xvfb."""

    def __init__(self, x, port, *options):
        self.x = x
        argv = ["xtigervncviewer", *options, f"127.0.0.1::{port}"]
        self.proc = subprocess.Popen(argv, env=x.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # On the development machine the viewer sometimes could not open the
        # display an Xvfb -displayfd had just reported ("Can't open display:
        # :0"; cause not found; Xvfb now runs on a random high display, see
        # Xvfb): that is the X side, before any VNC, so the viewer gets one
        # more start on the same Xvfb.
        self.early = ""
        if self._exited_within(1.0):
            self.early = self.proc.stdout.read().decode(errors="replace")
            if "Can't open display" in self.early:
                time.sleep(0.5)
                self.proc = subprocess.Popen(argv, env=x.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                self.early = "(the first start could not open the display; started again) "
        deadline = time.monotonic() + TIMEOUT
        self.wid = None
        while time.monotonic() < deadline and self.proc.poll() is None:
            out = subprocess.run(["xdotool", "search", "--name", "TigerVNC"], env=x.env, capture_output=True,
                                 text=True).stdout.split()
            if out:
                self.wid = out[0]
                break
            time.sleep(0.2)
        check(self.wid is not None, f"no TigerVNC window: {self.stderr()}; Xvfb {x.display}: {x.log()}")

    def _exited_within(self, seconds):
        try:
            self.proc.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stderr(self):
        if self.proc.poll() is None:
            return self.early + "(running)"
        return (self.early + self.proc.stdout.read().decode(errors="replace"))[-2000:]

    def picture(self, width, height):
        def grab():
            if self.proc.poll() is not None:
                raise AssertionError(f"TigerVNC exited: {self.stderr()}")
            x, y, w, h = self.x.window_geometry(self.wid)
            if (w, h) != (width(), height()):
                return w, h, b""
            return self.x.screenshot(x, y, w, h)
        return grab

    def click(self, fx, fy):
        self.x.run("xdotool", "mousemove", "--window", self.wid, str(fx), str(fy), "click", "1")

    def type(self, text):
        self.x.run("xdotool", "windowfocus", "--sync", self.wid)
        self.x.run("xdotool", "type", "--delay", "40", text)

    def quit(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


async def tigervnc_run(m, vnc, extra_dm=(), viewer_options=(), name="TigerVNC"):
    vnc_port, _, servers, _ = await start(m, vnc, *extra_dm)
    x = Xvfb(tempfile.mkdtemp(prefix="tigervnc-", dir=m.dir))
    viewer = None
    try:
        viewer = TigerVNC(x, vnc_port, *viewer_options)
        size = {"w": 800, "h": 600}
        grab = viewer.picture(lambda: size["w"], lambda: size["h"])
        wait_picture(m, grab, name)
        before = len(m.inputs())
        viewer.click(210, 77)
        check_click(m, before, 210, 77, name)
        before = len(m.inputs())
        viewer.type(TYPED)
        check_typed(m, before, name)
        m.tell("resize 640 480", "resized 640 480")
        size.update(w=640, h=480)
        wait_picture(m, grab, name + " after a resize to 640x480")
        observed(m, name)
        return servers
    finally:
        if viewer:
            viewer.quit()
        x.stop()


async def tigervnc(m):
    """TigerVNC at its defaults: exact pictures, a click, typed keys, a resize."""
    await tigervnc_run(m, "127.0.0.1:20,to=99")


async def tigervnc_x509none(m):
    """TigerVNC with the CA over VeNCrypt X509None (tls-creds=): exact pictures;
    query-vnc-servers says vencrypt / x509-none as QEMU."""
    pki = os.path.join(m.dir, "pki")
    ca = make_pki(pki)
    servers = await tigervnc_run(m, "127.0.0.1:20,to=99,tls-creds=tls0", tls_args(pki), ("-X509CA", ca),
                                 "TigerVNC VeNCrypt X509None")
    check(servers["auth"] == "vencrypt" and servers["vencrypt"] == "x509-none", f"query-vnc-servers: {servers}")
    check("VNC client TLS established" in dm_text(m), "no TLS session in the log")


async def tigervnc_x509vnc(m):
    """TigerVNC with the CA and the password over VeNCrypt X509Vnc (tls-creds=, password=on)."""
    pki = os.path.join(m.dir, "pki")
    ca = make_pki(pki)
    m.start_dm("--log-level", "debug", "--vnc", "127.0.0.1:20,to=99,tls-creds=tls0,password=on", *tls_args(pki))
    q = await qmp_connect(m)
    try:
        await q.execute("change-vnc-password", {"password": "s3cret"})
        info = await q.execute("query-vnc")
        check(info["auth"] == "vencrypt+x509+vnc", f"query-vnc: {info}")
    finally:
        await q.disconnect()
    # TigerVNC's password file: the password DES-encrypted with VNC's fixed key.
    passwd = os.path.join(m.dir, "passwd")
    r = subprocess.run(["openssl", "enc", "-des-ecb", "-nopad", "-K", "e84ad660c4721ae0", "-provider", "legacy",
                        "-provider", "default"], input=b"s3cret\0\0", capture_output=True)
    check(r.returncode == 0 and len(r.stdout) == 8, f"openssl: {r.stderr.decode()}")
    with open(passwd, "wb") as f:
        f.write(r.stdout)
    m.start_guest_when_ready()
    m.wait_connected()
    q = await qmp_connect(m)
    try:
        port = int((await q.execute("query-vnc"))["service"])
    finally:
        await q.disconnect()
    x = Xvfb(tempfile.mkdtemp(prefix="tigervnc-", dir=m.dir))
    viewer = None
    try:
        viewer = TigerVNC(x, port, "-X509CA", ca, "-passwd", passwd)
        wait_picture(m, viewer.picture(lambda: 800, lambda: 600), "TigerVNC VeNCrypt X509Vnc")
        observed(m, "TigerVNC VeNCrypt X509Vnc")
    finally:
        if viewer:
            viewer.quit()
        x.stop()


async def tigervnc_lowcolour(m):
    """TigerVNC's other pixel formats (-FullColor=0 -LowColorLevel=0, 1, 2:
    8 bpp true colour with 1, 2 and 3/3/2 bits per channel): every pixel is
    exact in that format."""
    port, _, _, _ = await start(m, "127.0.0.1:20,to=99")
    for level, bits in ((0, (1, 1, 1)), (1, (2, 2, 2)), (2, (3, 3, 2))):
        x = Xvfb(tempfile.mkdtemp(prefix="tigervnc-", dir=m.dir))
        viewer = None
        try:
            viewer = TigerVNC(x, port, "-FullColor=0", f"-LowColorLevel={level}")
            wait_mapped(m, viewer.picture(lambda: 800, lambda: 600), bits, f"TigerVNC LowColorLevel={level}")
        finally:
            if viewer:
                viewer.quit()
            x.stop()
    observed(m, "TigerVNC -FullColor=0 -LowColorLevel=0,1,2")


async def tigervnc_format_switch(m):
    """TigerVNC starting in 8 colours with AutoSelect on switches to full colour
    once it has measured the link, while the guest keeps drawing: it must not
    lose its place in the stream (it did when pseudo-rectangles went in extra
    updates: every update must answer one request), and ends with the exact
    full-colour picture."""
    port, _, _, _ = await start(m, "127.0.0.1:20,to=99")
    x = Xvfb(tempfile.mkdtemp(prefix="tigervnc-", dir=m.dir))
    viewer = None
    try:
        viewer = TigerVNC(x, port, "-FullColor=0", "-LowColorLevel=0", "-AutoSelect=1")
        deadline = time.monotonic() + TIMEOUT
        seed = 0
        while "client pixel format 32bpp" not in dm_text(m):
            check(time.monotonic() < deadline, "TigerVNC never switched to full colour")
            check(viewer.proc.poll() is None, f"TigerVNC exited: {viewer.stderr()}")
            seed += 1
            m.tell(f"draw {seed}", f"drawn {seed}")
            time.sleep(0.05)
        for more in range(seed + 1, seed + 20):  # updates keep coming across the switch
            m.tell(f"draw {more}", f"drawn {more}")
        check(viewer.proc.poll() is None, f"TigerVNC exited after the switch: {viewer.stderr()}")
        wait_picture(m, viewer.picture(lambda: 800, lambda: 600), "TigerVNC after switching to full colour")
        observed(m, "TigerVNC AutoSelect from 8 colours")
    finally:
        if viewer:
            viewer.quit()
        x.stop()


# --- gtk-vnc ----------------------------------------------------------------------

def gvnccapture(m, port, out, home=None):
    """gvnccapture (gtk-vnc). With `home`, gtk-vnc finds its CA at
    HOME/.pki/CA/cacert.pem: GLib takes the home directory from the password
    database, so `home` is bind-mounted over it in a mount namespace of its own."""
    argv = ["gvnccapture", f"127.0.0.1:{port - 5900}", out]
    if home:
        script = 'mount --bind "$1" "$2" || exit 101; shift 2; exec "$@"'
        userns = [] if os.geteuid() == 0 else ["--map-root-user"]
        argv = ["unshare", *userns, "--mount", "sh", "-c", script, "sh", home, os.path.expanduser("~root")] + argv
    return subprocess.run(argv, capture_output=True, timeout=TIMEOUT)


async def gvnc(m):
    """gvnccapture at its defaults: an exact capture."""
    port, _, _, _ = await start(m, "127.0.0.1:20,to=99")
    out = os.path.join(m.dir, "gvnc.png")
    r = gvnccapture(m, port, out)
    check(r.returncode == 0, f"gvnccapture: {r.stderr.decode()}")
    with open(out, "rb") as f:
        (w, h), rgb = rgb_of_png_bytes(f.read())
    wait_picture(m, lambda: (w, h, rgb), "gvnccapture", timeout=0)
    observed(m, "gvnccapture")


async def gvnc_x509none(m):
    """gvnccapture with the CA over VeNCrypt X509None: an exact capture; without
    the CA gtk-vnc refuses the server's certificate and captures nothing."""
    pki = os.path.join(m.dir, "pki")
    ca = make_pki(pki)
    port, _, _, _ = await start(m, "127.0.0.1:20,to=99,tls-creds=tls0", *tls_args(pki))
    home = os.path.join(m.dir, "gvnc-home")
    os.makedirs(os.path.join(home, ".pki", "CA"))
    shutil.copy(ca, os.path.join(home, ".pki", "CA", "cacert.pem"))
    out = os.path.join(m.dir, "gvnc.png")
    r = gvnccapture(m, port, out, home)
    check(r.returncode not in (100, 101), f"could not give gvnccapture its CA: {r.stderr.decode()}")
    check(r.returncode == 0, f"gvnccapture with the CA: {r.stderr.decode()}")
    with open(out, "rb") as f:
        (w, h), rgb = rgb_of_png_bytes(f.read())
    wait_picture(m, lambda: (w, h, rgb), "gvnccapture VeNCrypt X509None", timeout=0)
    observed(m, "gvnccapture VeNCrypt X509None")
    empty = os.path.join(m.dir, "empty-home")
    os.makedirs(empty)
    out2 = os.path.join(m.dir, "gvnc-noca.png")
    r = gvnccapture(m, port, out2, empty)
    check(r.returncode != 0 and not os.path.exists(out2), f"gvnccapture without the CA got a picture: {r.stderr.decode()}")


def vencrypt_to_tls(port):
    """RFB 3.8 + VeNCrypt 0.2 X509None up to the TLS handshake, by hand."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    check(s.recv(12) == b"RFB 003.008\n", "version")
    s.sendall(b"RFB 003.008\n")
    n = s.recv(1)[0]
    check(list(s.recv(n)) == [19], "security types: want VeNCrypt (19) only")
    s.sendall(b"\x13")
    check(s.recv(2) == b"\x00\x02", "VeNCrypt version")
    s.sendall(b"\x00\x02")
    check(s.recv(1) == b"\x00", "VeNCrypt version ack")
    count = s.recv(1)[0]
    subtypes = [int.from_bytes(s.recv(4), "big") for _ in range(count)]
    check(subtypes == [260], f"VeNCrypt subtypes {subtypes}, want [260] (X509None)")
    s.sendall((260).to_bytes(4, "big"))
    check(s.recv(1) == b"\x01", "subtype ack")
    return s


async def tls_verify_peer(m):
    """verify-peer=on: a TLS client without a certificate is refused during the
    handshake; one with a certificate from the CA gets the security result and
    the ServerInit; a client that trusts another CA refuses the server."""
    pki = os.path.join(m.dir, "pki")
    ca = make_pki(pki, client=True)
    port, _, _, _ = await start(m, "127.0.0.1:20,to=99,tls-creds=tls0", *tls_args(pki, verify_peer=True))
    context = ssl.create_default_context(cafile=ca)
    s = vencrypt_to_tls(port)
    try:
        t = context.wrap_socket(s, server_hostname="localhost")
        # TLS 1.3: the server's verdict on the (missing) certificate comes with the first read.
        data = t.recv(4)
        check(data == b"", f"a client without a certificate got {data!r}")
    except (ssl.SSLError, ConnectionError, OSError):
        pass
    # Clients that stall inside the TLS handshake (half a ClientHello) hold
    # nobody else: the next client's whole handshake still takes well under a second.
    stalled = []
    for _ in range(5):
        st = vencrypt_to_tls(port)
        st.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00]) + b"\x01" * 40)
        stalled.append(st)
    context.load_cert_chain(os.path.join(pki, "client-cert.pem"), os.path.join(pki, "client-key.pem"))
    started = time.monotonic()
    t = context.wrap_socket(vencrypt_to_tls(port), server_hostname="localhost")
    check(t.recv(4) == b"\0\0\0\0", "security result after TLS")
    t.sendall(b"\x01")
    init = b""
    while len(init) < 24:
        init += t.recv(24 - len(init))
    check(init[:4] == (800).to_bytes(2, "big") + (600).to_bytes(2, "big"), f"ServerInit {init!r}")
    check(init[4:8] == bytes([32, 24, 0, 1]), f"ServerInit pixel format {init[4:20].hex()}: want 32 bpp depth 24 LE true colour")
    elapsed = time.monotonic() - started
    check(elapsed < 1.0, f"with 5 stalled TLS handshakes, a client's handshake to ServerInit took {elapsed:.3f} s")
    print(f"observed: TLS client with certificate: ServerInit {elapsed * 1000:.1f} ms after connecting, 5 handshakes stalled")
    t.close()
    for st in stalled:
        st.close()
    other = make_pki(os.path.join(m.dir, "other"))
    try:
        ssl.create_default_context(cafile=other).wrap_socket(vencrypt_to_tls(port), server_hostname="localhost")
        check(False, "a client trusting another CA accepted the server")
    except ssl.SSLCertVerificationError:
        pass
    refusals = [l for l in dm_text(m).splitlines() if "VNC client disconnected" in l and "certificate" in l.lower()]
    check(refusals, f"no refusal for the missing client certificate in the log:\n{dm_text(m)[-3000:]}")


# --- openQA's os-autoinst -----------------------------------------------------------

OPENQA_MAIN = """use strict;
use warnings;
use testapi;
use autotest;
autotest::loadtest 'tests/xenvfb.pm';
1;
"""

# The test openQA runs: a needle, a click, typed text, then (the harness
# resizes the guest to 640x480 and draws on it when it sees the text) the
# needle of the new screen.
OPENQA_TEST = """use Mojo::Base 'basetest';
use testapi;

sub run {
    assert_screen 'xenvfb-pattern', 60;
    mouse_set(123, 45);
    mouse_click;
    type_string 'xenvfb 42';
    assert_screen 'xenvfb-resized', 60;
}

sub test_flags { return {fatal => 1}; }

1;
"""

# os-autoinst's own scaling (tinycv, OpenCV), which every screenshot goes through.
TINYCV_SCALE = 'use lib "/usr/lib/os-autoinst"; use cv; cv::init(); require tinycv; ' \
               'tinycv::read($ARGV[0])->scale($ARGV[1], $ARGV[2])->write($ARGV[3]) or die "write";'


# os-autoinst's consoles::VNC on its own at a given depth (8: colour map,
# 16: 5-5-5, 24: XRGB), writing its framebuffer as it holds it.
OPENQA_VNC_CAPTURE = r"""
use lib '/usr/lib/os-autoinst';
use Mojo::Base -strict, -signatures;
use cv;
cv::init();
require tinycv;
use bmwqemu;
use consoles::VNC;
my ($port, $depth, $out) = @ARGV;
my $vnc = consoles::VNC->new(hostname => '127.0.0.1', port => $port, depth => $depth, description => 'xenvfb');
$vnc->login;
$vnc->send_update_request(0);
my $deadline = time + 20;
$vnc->update_framebuffer() until ($vnc->_framebuffer && $vnc->_last_update_received) || time > $deadline;
$vnc->send_update_request(1);
$vnc->update_framebuffer() for 1 .. 5;
$vnc->_framebuffer->write($out) or die 'cannot write';
"""


def tinycv_scale(rgb, size, to, directory, name):
    """`rgb` (size) scaled to `to` by os-autoinst's tinycv, as RGB bytes."""
    from PIL import Image
    src, dst = os.path.join(directory, name + "-in.png"), os.path.join(directory, name + "-out.png")
    Image.frombytes("RGB", size, rgb).save(src)
    r = subprocess.run(["perl", "-e", TINYCV_SCALE, src, str(to[0]), str(to[1]), dst], capture_output=True, text=True)
    check(r.returncode == 0, f"tinycv scale: {r.stderr}")
    return Image.open(dst).convert("RGB").tobytes()


def sim_guest_picture(width, height, draws=()):
    """What the sim guest shows: its start-up pattern, then `draw SEED` rectangles
    (SimGuestCommand.pattern), computed here independently of the guest."""
    out = bytearray(width * height * 3)
    for y in range(height):
        for x in range(width):
            i = 3 * (y * width + x)
            out[i:i + 3] = bytes(((x * 7) & 255, (y * 3) & 255, (x ^ y) & 255))
    for seed in draws:
        for y in range(50, min(200, height)):
            for x in range(100, min(300, width)):
                i = 3 * (y * width + x)
                out[i:i + 3] = bytes(((x * 3 + seed * 41) & 255, (y * 5 + seed * 13) & 255, (x + y + seed) & 255))
    return bytes(out)


def openqa_needle(directory, tag, rgb, size, area):
    import json
    from PIL import Image
    Image.frombytes("RGB", size, rgb).save(os.path.join(directory, tag + ".png"))
    with open(os.path.join(directory, tag + ".json"), "w") as f:
        json.dump({"tags": [tag], "area": [{"xpos": area[0], "ypos": area[1], "width": area[2], "height": area[3],
                                            "type": "match"}]}, f)


def client_format_mapping(shot_rgb, guest_rgb, bits, what):
    """The client shows each channel with `bits` bits (a number, or one per
    channel): every pixel's shown value must be one function of the guest's
    value reduced to those bits (the top bits, as QEMU sends them), the same
    for every pixel, strictly increasing. Returns that function per channel."""
    bits = bits if isinstance(bits, tuple) else (bits, bits, bits)
    check(len(shot_rgb) == len(guest_rgb), f"{what}: sizes differ")
    shown = [{} for _ in range(3)]
    for i in range(len(guest_rgb)):
        channel = i % 3
        reduced = guest_rgb[i] >> (8 - bits[channel])
        seen = shown[channel].setdefault(reduced, shot_rgb[i])
        if seen != shot_rgb[i]:
            raise AssertionError(f"{what}: pixel {i // 3} channel {channel}: {shot_rgb[i]}, elsewhere {seen} for the same "
                                 f"{bits[channel]}-bit value {reduced}")
    for channel in range(3):
        values = [shown[channel][k] for k in sorted(shown[channel])]
        check(len(values) == 1 << bits[channel] and values == sorted(set(values)),
              f"{what}: channel {channel} does not show the {1 << bits[channel]} values in order: {values}")
    return shown


def wait_mapped(m, grab, bits, what, timeout=TIMEOUT):
    """Waits until `grab()` shows the guest's framebuffer exactly in a client
    format of `bits` per channel (see client_format_mapping)."""
    gw, gh, body = ppm_body(m.guest_frame())
    deadline = time.monotonic() + timeout
    while True:
        got = grab()
        problem = "no picture"
        if got is not None:
            w, h, rgb = got
            if (w, h) != (gw, gh):
                problem = f"the client shows {w}x{h}, the guest is {gw}x{gh}"
            else:
                try:
                    return client_format_mapping(rgb, body, bits, what)
                except AssertionError as e:
                    problem = str(e)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {problem}")
        time.sleep(0.3)


async def openqa_generalhw(m):
    """openQA's os-autoinst (Debian's isotovideo) with its generalhw backend
    (15-bit colour, ZRLE): the job passes a needle, a click, typed text and a
    resize followed; its screenshots are exact: at 800x600 every pixel is one
    function of the guest's 5-bit value, and after the resize to 640x480 the
    screenshot is that picture scaled by os-autoinst's own tinycv, byte for byte."""
    isotovideo = shutil.which("isotovideo")
    check(isotovideo is not None, "isotovideo is missing: run scripts/deps.sh openqa")
    port, _, _, _ = await start(m, "127.0.0.1:20,to=99")
    import json
    from PIL import Image
    gw, gh, guest = ppm_body(m.guest_frame())
    check(guest == sim_guest_picture(gw, gh), "the guest's picture is not the pattern this test computes")
    work = os.path.join(m.dir, "openqa")
    distri = os.path.join(work, "distri")
    needles = os.path.join(distri, "needles")
    cmds = os.path.join(work, "cmds")
    for d in (os.path.join(distri, "tests"), needles, cmds):
        os.makedirs(d)
    with open(os.path.join(distri, "main.pm"), "w") as f:
        f.write(OPENQA_MAIN)
    with open(os.path.join(distri, "tests", "xenvfb.pm"), "w") as f:
        f.write(OPENQA_TEST)
    openqa_needle(needles, "xenvfb-pattern", guest, (gw, gh), (100, 50, 300, 200))
    resized = sim_guest_picture(640, 480, draws=(7,))
    openqa_needle(needles, "xenvfb-resized", tinycv_scale(resized, (640, 480), (gw, gh), work, "needle"), (gw, gh),
                  (125, 63, 250, 187))
    for name in ("poweron", "poweroff"):
        path = os.path.join(cmds, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(path, 0o755)
    with open(os.path.join(work, "vars.json"), "w") as f:
        json.dump({"BACKEND": "generalhw", "WORKER_HOSTNAME": "127.0.0.1", "CASEDIR": distri, "PRODUCTDIR": distri,
                   "NEEDLES_DIR": needles, "DISTRI": "xenvfb", "VERSION": "1", "ARCH": "x86_64", "TEST": "xenvfb",
                   "GENERAL_HW_CMD_DIR": cmds, "GENERAL_HW_POWERON_CMD": "poweron", "GENERAL_HW_POWEROFF_CMD": "poweroff",
                   "GENERAL_HW_VNC_IP": "127.0.0.1", "GENERAL_HW_VNC_PORT": port, "GENERAL_HW_NO_SERIAL": 1,
                   "NOVIDEO": 1, "XRES": gw, "YRES": gh}, f)
    log_path = os.path.join(work, "isotovideo.log")

    def job_log():
        with open(log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]
    before = len(m.inputs())
    with open(log_path, "wb") as log:
        job = subprocess.Popen([isotovideo, "-d"], cwd=work, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        expected = []
        for c in TYPED_CODES:
            expected += [f"key {c} 1", f"key {c} 0"]
        deadline = time.monotonic() + 120
        while len(key_codes(m.inputs()[before:])) < len(expected):
            check(job.poll() is None, f"isotovideo exited ({job.returncode}) before typing:\n{job_log()}")
            check(time.monotonic() < deadline, f"openQA never typed:\n{job_log()}")
            time.sleep(0.1)
        check(key_codes(m.inputs()[before:]) == expected, f"openQA typed {key_codes(m.inputs()[before:])}, want {expected}")
        check_click(m, before, 123, 45, "openQA")
        m.tell("resize 640 480", "resized 640 480")
        m.tell("draw 7", "drawn 7")
        status = job.wait(150)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, 9)
            job.wait()
    results = os.path.join(work, "testresults")
    with open(os.path.join(results, "result-xenvfb.json")) as f:
        result = json.load(f)
    check(status == 0 and result["result"] == "ok", f"openQA job: exit {status}, result {result['result']}:\n{job_log()}")
    matched = [d for d in result["details"] if d.get("result") == "ok" and d.get("needle")]
    check([d["needle"] for d in matched] == ["xenvfb-pattern", "xenvfb-resized"],
          f"needles matched: {[(d.get('needle'), d.get('result')) for d in result['details']]}")
    first = Image.open(os.path.join(results, matched[0]["screenshot"])).convert("RGB")
    check(first.size == (gw, gh), f"first screenshot is {first.size}")
    mapping = client_format_mapping(first.tobytes(), guest, 5, f"openQA screenshot {matched[0]['screenshot']}")
    sw, sh, now = ppm_body(m.guest_frame())
    check((sw, sh) == (640, 480) and now == resized, "the guest's picture after the resize is not the one computed")
    shown = bytes(mapping[i % 3][v >> 3] for i, v in enumerate(now))
    want = tinycv_scale(shown, (640, 480), (gw, gh), work, "expected")
    last = Image.open(os.path.join(results, matched[1]["screenshot"])).convert("RGB").tobytes()
    bad, worst = difference(last, want)
    check(bad == 0, f"openQA screenshot {matched[1]['screenshot']} after the resize: {bad} pixels differ from the "
                    f"640x480 picture scaled by tinycv (max {worst})")
    observed(m, "os-autoinst generalhw")
    # consoles::VNC at the other depths os-autoinst knows: 8 (colour map,
    # BGR233: 3/3/2 bits), 15 (5-5-5), 24 (the server's format: exact values)
    # and 32 (32 bpp saying depth 32: no ZRLE there, CPIXEL is defined only up
    # to depth 24, so the server falls back to Raw).
    for depth, bits in ((8, (3, 3, 2)), (15, 5), (24, 8), (32, 8)):
        out = os.path.join(work, f"depth{depth}.png")
        r = subprocess.run(["perl", "-e", OPENQA_VNC_CAPTURE, str(port), str(depth), out], capture_output=True,
                           timeout=TIMEOUT)
        check(r.returncode == 0, f"consoles::VNC depth {depth}: {r.stdout.decode()[-1500:]} {r.stderr.decode()[-1500:]}")
        im = Image.open(out).convert("RGB")
        check(im.size == (640, 480), f"consoles::VNC depth {depth}: {im.size}")
        if bits == 8:
            bad, worst = difference(im.tobytes(), now)
            check(bad == 0, f"consoles::VNC depth {depth}: {bad} pixels differ (max {worst})")
        else:
            client_format_mapping(im.tobytes(), now, bits, f"consoles::VNC depth {depth}")
    observed(m, "os-autoinst consoles::VNC depth 8, 15, 16 (generalhw), 24, 32")


SCENARIOS = {f.__name__: f for f in (novnc_ws, novnc_wss, novnc_wss_without_ca, tigervnc, tigervnc_x509none,
                                     tigervnc_x509vnc, tigervnc_lowcolour, tigervnc_format_switch, gvnc, gvnc_x509none, tls_verify_peer,
                                     openqa_generalhw)}


def main():
    name, binary, directory, dom0, guest, domid = sys.argv[1:7]
    m = dm.Machine(binary, directory, dom0, guest, domid)
    try:
        asyncio.run(asyncio.wait_for(SCENARIOS[name](m), 280 if name.startswith('openqa') else 160))
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
