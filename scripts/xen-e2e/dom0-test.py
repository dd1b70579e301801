#!/usr/bin/env python3
"""The end-to-end test, run inside dom0 (real Xen, under QEMU/TCG).

For each run listed in /job/job.json — Debian's QEMU with a vfb variant
(headless or VNC), or xenvfb with one of the example configurations in
configs/ (its guest's kernel, ramdisk, memory and name replaced by the test's)
— it starts a PV guest with `xl create` and `device_model_override`, and
checks:
  package     (once) xenvfb's Debian package is installed and /usr/bin/xenvfb
              --version prints its version;
  recommends  (before the SDL example) what apt installed for the package's
              Recommends (install.sh, in a chroot of dom0's root filesystem)
              is unpacked over / and libSDL2 is then installed: the runs
              before it had only what its Depends brought;
  create      `xl create` succeeds;
  dm-spawned  the process in image/device-model-pid is the device model
              under test (argv[0] is device_model_override's path, for the
              examples the installed /usr/bin/xenvfb);
  connected   vfb and vkbd reach state 4 (Connected) on both ends;
  guest-fb    the guest drew the pattern: its /dev/fb0 read back matches it;
  vnc         (VNC variant) libxl published console/vnc-port and an RFB
              server answers there;
  screenshot  a screenshot taken through the device model equals the pattern
              (QMP screendump, or the PNG display's latest file);
  input       (when the run asks for it) a key sent through QMP `send-key`
              reaches the guest's evdev as KEY_A press and release;
  guest-fb-2, on that key the guest redraws lines 100-299 with a second
  update      pattern: its read-back and a new screenshot must show it;
  vnc-capture (VNC variant) a capture by vncdotool, a VNC client run here,
              equals what the guest last drew;
  vnc-input   (VNC variant) vncdotool's `key a` and `click 1` reach the
              guest's evdev as KEY_A and BTN_LEFT press and release;
  png-display (runs that pass --display png:... in device_model_args) the
              PNG display's latest.png (or .ppm) shows the guest's last screen;
  sdl-window  (SDL example, on an Xvfb display started here) the SDL window
              on the X screen shows the guest's last screen;
  destroy     `xl destroy` leaves no device-model process and no
              /local/domain/0/device-model/<domid> node.
Then, when the job has one, the vdispl guest (vdispl_test.py): a KMS screen
served by xenvfb, checked over QMP, VNC and the PNG display across page flips.
The "restrict" run (dm_restrict=1, for which libxl passes
-xen-domid-restrict) checks that xenvfb refuses it: `xl create` fails
(refused), the device model's log says why (says-why), and no domain or
device-model process is left (cleaned-up).
It records time to Connected, the device model's CPU time and peak RSS, and
writes /job/out/results.json plus per-run logs and screenshots.
Then, when the job asks for it, the performance part (perf_test.py): N guests
at once with each device model, the same animation watched by a Raw and a
Tight viewer, and key-to-screen latency.
Progress goes to /dev/console as "E2E-MARK ..." lines that the host prints.
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
import time

JOB = "/job"
OUT = "/job/out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
T_START = time.monotonic()


def mark(text):
    line = "E2E-MARK %s (dom0 +%.1fs)\n" % (text, time.monotonic() - T_START)
    sys.stdout.write(line)
    sys.stdout.flush()
    try:
        with open("/dev/console", "w") as console:
            console.write(line)
    except OSError:
        pass


def run(argv, timeout=60, env=None):
    """Runs a command; returns (exit status, combined output). Never raises."""
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, stdin=subprocess.DEVNULL,
                           env=dict(os.environ, **env) if env else None)
        return p.returncode, p.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        return 124, (e.stdout or b"").decode(errors="replace") + "\n[timed out after %ss]" % timeout
    except OSError as e:
        return 127, str(e)


def xs_read(path):
    rc, out = run(["xenstore-read", path], timeout=20)
    return out.strip() if rc == 0 else None


def xs_exists(path):
    rc, _ = run(["xenstore-exists", path], timeout=20)
    return rc == 0


def wait_for(what, timeout, poll, fn):
    """Calls fn until it returns a true value or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)


class QMP:
    """A minimal QMP client: greeting, qmp_capabilities, then commands."""

    def __init__(self, path, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.greeting = self._message()
        if "QMP" not in self.greeting:
            raise RuntimeError("no QMP greeting: %r" % self.greeting)
        self.execute("qmp_capabilities")

    def _message(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command, arguments=None):
        msg = {"execute": command, "id": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\r\n")
        while True:
            reply = self._message()
            if "event" in reply:
                continue
            if "error" in reply:
                raise RuntimeError("QMP %s: %s" % (command, reply["error"]))
            return reply.get("return")

    def close(self):
        self.sock.close()


def read_ppm(path):
    """Reads a binary PPM (P6, maxval 255): returns (width, height, RGB bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    fields = []
    pos = 0
    while len(fields) < 4:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            while pos < len(data) and data[pos:pos + 1] != b"\n":
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace():
            pos += 1
        fields.append(data[start:pos])
    if fields[0] != b"P6" or fields[3] != b"255":
        raise ValueError("not a P6/255 PPM: %r" % fields)
    width, height = int(fields[1]), int(fields[2])
    pixels = data[pos + 1:pos + 1 + width * height * 3]
    if len(pixels) != width * height * 3:
        raise ValueError("short PPM: %d bytes of pixels" % len(pixels))
    return width, height, pixels


def compare_rgb(shot, expected_rgb, width, height):
    """Returns (differing pixel count, first differing (x, y) or None)."""
    w, h, rgb = shot
    if (w, h) != (width, height):
        return width * height, ("size %dx%d" % (w, h))
    if rgb == expected_rgb:
        return 0, None
    diff = 0
    first = None
    for i in range(0, len(rgb), 3):
        if rgb[i:i + 3] != expected_rgb[i:i + 3]:
            diff += 1
            if first is None:
                first = ((i // 3) % width, (i // 3) // width)
    return diff, first


def proc_stats(pid):
    """CPU seconds (user + system, and each alone) and VmHWM/VmRSS in KiB of a live process."""
    stats = {}
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # After the comm field: state is fields[0], utime fields[11], stime fields[12].
        stats["state"] = fields[0]
        stats["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        stats["user_seconds"] = int(fields[11]) / CLK_TCK
        stats["system_seconds"] = int(fields[12]) / CLK_TCK
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    stats[key] = int(value.split()[0])
    except (OSError, IndexError, ValueError) as e:
        stats["error"] = str(e)
    return stats


def process_gone(pid):
    """True when pid has exited (no /proc entry, or a zombie not yet reaped by
    our shell init, which holds no resources)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def console_lines(name):
    try:
        with open("/var/log/xen/console/guest-%s.log" % name, errors="replace") as f:
            return [l.strip() for l in f if "E2E-GUEST" in l]
    except OSError:
        return []


def guest_marker(name, word):
    for line in console_lines(name):
        parts = line.split("E2E-GUEST", 1)[1].split()
        if parts and parts[0] == word:
            return parts[1:]
    return None


def guest_key_events(name):
    """(code, value) of every EV_KEY event the guest reported."""
    events = []
    for line in console_lines(name):
        parts = line.split("E2E-GUEST", 1)[1].split()
        if len(parts) == 3 and parts[0] == "event" and len(parts[2]) == 48:
            raw = bytes.fromhex(parts[2])
            etype = int.from_bytes(raw[16:18], "little")
            code = int.from_bytes(raw[18:20], "little")
            value = int.from_bytes(raw[20:24], "little", signed=True)
            if etype == 1:
                events.append((code, value))
    return events


# The settings the test gives every guest, in place of an example's.
GUEST_KEYS = ("name", "kernel", "ramdisk", "extra", "memory", "on_crash")


def quoted(text):
    """The strings between single or double quotes in text, in order."""
    out, quote, current = [], None, ""
    for ch in text:
        if quote:
            if ch == quote:
                out.append(current)
                quote, current = None, ""
            else:
                current += ch
        elif ch in "'\"":
            quote = ch
    return out


def example_settings(path):
    """What the test needs to know of an example configuration: its
    device_model_override, the vfb's vnc/sdl keys, and the PNG display's
    folder and format when device_model_args adds one."""
    settings = {"override": None, "vnc": False, "sdl": False, "pngdir": None, "pngformat": "png"}
    with open(path) as f:
        for line in f:
            key, _, value = line.split("#", 1)[0].partition("=")
            key = key.strip()
            if key == "device_model_override":
                settings["override"] = quoted(value)[0]
            elif key == "vfb":
                keys = dict(kv.partition("=")[::2] for kv in quoted(value)[0].split(","))
                settings["vnc"] = keys.get("vnc", "1") == "1"  # xl's default: vnc=1
                settings["sdl"] = keys.get("sdl", "0") == "1"
            elif key == "device_model_args":
                for arg in quoted(value):
                    if arg.startswith("png:"):
                        opts = dict(kv.partition("=")[::2] for kv in arg[4:].split(","))
                        settings["pngdir"] = opts.get("dir")
                        settings["pngformat"] = opts.get("format", "png")
    return settings


def write_config(cfg_path, name, spec, job):
    if spec.get("config"):
        # The example as it is, but for the guest's own settings.
        with open(spec["config"]) as f:
            kept = [l.rstrip("\n") for l in f
                    if l.split("=", 1)[0].strip() not in GUEST_KEYS]
        kept += [
            'name = "%s"' % name,
            'kernel = "%s"' % job["kernel"],
            'ramdisk = "%s"' % job["ramdisk"],
            'extra = "console=hvc0"',
            'memory = 256',
            'on_crash = "preserve"',
        ]
        with open(cfg_path, "w") as f:
            f.write("\n".join(kept) + "\n")
        return
    vfb = {
        "vnc0": "vnc=0,sdl=0",
        "vnc1": "vnc=1,vnclisten=127.0.0.1,vncdisplay=0",
        "restrict": "vnc=0,sdl=0",
    }[spec["variant"]]
    lines = [
        'name = "%s"' % name,
        'type = "pv"',
        'kernel = "%s"' % job["kernel"],
        'ramdisk = "%s"' % job["ramdisk"],
        'extra = "console=hvc0"',
        'memory = 256',
        'vcpus = 1',
        'on_crash = "preserve"',
        "vfb = [ '%s' ]" % vfb,
        'device_model_override = "%s"' % spec["path"],
    ]
    if spec.get("args"):
        lines.append("device_model_args = [ %s ]" % ", ".join("'%s'" % a for a in spec["args"]))
    if spec["variant"] == "restrict":
        lines.append("dm_restrict = 1")
    with open(cfg_path, "w") as f:
        f.write("\n".join(lines) + "\n")


def take_screenshot(domid, dest):
    """Takes one screenshot through the device model's QMP screendump (PPM)."""
    qmp = QMP("/var/run/xen/qmp-libxl-%d" % domid)
    try:
        qmp.execute("screendump", {"filename": dest})
    finally:
        qmp.close()
    return read_ppm(dest)


def copy_latest(directory, fmt, dest, pylib):
    """Copies the PNG display's latest.png or latest.ppm (replaced
    atomically) to dest as PPM; Pillow (from pylib) converts a PNG."""
    with open(os.path.join(directory, "latest." + fmt), "rb") as f:
        data = f.read()
    if fmt == "ppm":
        with open(dest, "wb") as f:
            f.write(data)
        return read_ppm(dest)
    png = dest + ".png"
    with open(png, "wb") as f:
        f.write(data)
    rc, out = run(["python3", "-c", TO_PPM, png, dest], timeout=60, env={"PYTHONPATH": pylib or ""})
    if rc != 0:
        raise RuntimeError("converting latest.png to PPM failed: %s" % out.strip()[-300:])
    return read_ppm(dest)


TO_PPM = "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2], format='PPM')"
XVFB_DIR = "/tmp/xvfb"


def start_xvfb():
    """An X display (:0) for the SDL example: Xvfb, whose screen is also the
    XWD file XVFB_DIR/Xvfb_screen0. Returns (process or None, note)."""
    os.makedirs(XVFB_DIR, exist_ok=True)
    try:
        p = subprocess.Popen(["Xvfb", ":0", "-screen", "0", "1024x768x24", "-fbdir", XVFB_DIR, "-nolisten", "tcp"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(OUT, "xvfb.log"), "w"))
    except OSError as e:
        return None, "cannot start Xvfb: %s" % e
    ok = wait_for("xvfb", 30, 0.2, lambda: os.path.exists("/tmp/.X11-unix/X0") or p.poll() is not None)
    if p.poll() is not None or not ok:
        return None, "Xvfb did not start (exit %s; xvfb.log)" % p.poll()
    return p, "Xvfb :0 running"


def sdl_window_shows(expected, width, height):
    """Looks for the guest's screen (expected RGB, width x height) at 1:1 on
    Xvfb's screen. Returns (found, note)."""
    import struct
    with open(os.path.join(XVFB_DIR, "Xvfb_screen0"), "rb") as f:
        data = f.read()
    (header_size, _version, _format, _depth, sw, sh, _xoff, byte_order, _unit, _bit_order, _pad, bpp,
     bytes_per_line, _vclass, _rm, _gm, _bm, _bits, _centries, ncolors) = struct.unpack_from(">20I", data, 0)
    if bpp != 32 or byte_order != 0:
        return False, "Xvfb screen is %d bpp, byte order %d: expected 32, LSBFirst" % (bpp, byte_order)
    base = header_size + ncolors * 12
    rows = []
    for y in range(sh):
        row = data[base + y * bytes_per_line: base + y * bytes_per_line + sw * 4]
        rgb = bytearray(sw * 3)
        rgb[0::3], rgb[1::3], rgb[2::3] = row[2::4], row[1::4], row[0::4]
        rows.append(bytes(rgb))
    first = expected[:width * 3]
    for y in range(sh - height + 1):
        x3 = rows[y].find(first)
        while x3 >= 0:
            if x3 % 3 == 0 and all(rows[y + i][x3:x3 + width * 3] == expected[i * width * 3:(i + 1) * width * 3]
                                   for i in range(height)):
                return True, "the guest's screen is at (%d, %d) of the %dx%d X screen" % (x3 // 3, y, sw, sh)
            x3 = rows[y].find(first, x3 + 1)
    return False, "the guest's screen is nowhere on the %dx%d X screen" % (sw, sh)


def restrict_run(spec, job):
    """dm_restrict=1: xenvfb must refuse -xen-domid-restrict and say why."""
    name = "e2e-%s-restrict" % spec["dm"]
    outdir = os.path.join(OUT, "%s-restrict" % spec["dm"])
    os.makedirs(outdir, exist_ok=True)
    result = {"dm": spec["dm"], "variant": "restrict", "checks": {}, "notes": []}

    def check(key, ok, note=None):
        result["checks"][key] = bool(ok)
        if note:
            result["notes"].append("%s: %s" % (key, note))
        mark("%s/restrict %s %s%s" % (spec["dm"], key, "ok" if ok else "FAILED", (" (%s)" % note) if note else ""))

    # libxl refuses dm_restrict without a user to run device models as.
    run(["useradd", "--system", "--no-create-home", "xen-qemuuser-shared"], timeout=20)
    cfg = os.path.join(outdir, "xl.cfg")
    write_config(cfg, name, spec, job)
    t0 = time.monotonic()
    rc, out = run(["xl", "-vvv", "create", cfg], timeout=120)
    result["create_seconds"] = round(time.monotonic() - t0, 2)
    with open(os.path.join(outdir, "xl-create.log"), "w") as f:
        f.write(out)
    collect_logs(name, outdir)
    check("refused", rc != 0, "xl create exit %d after %.1fs" % (rc, result["create_seconds"]))
    try:
        with open(os.path.join(outdir, "device-model.log")) as f:
            log = f.read()
    except OSError:
        log = ""
    check("says-why", "-xen-domid-restrict (libxl's dm_restrict=1) is not supported" in log,
          None if log else "no device-model log")
    if rc == 0:
        run(["xl", "destroy", name], timeout=60)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if f.read().split(b"\0")[0] == spec["path"].encode():
                    left.append(pid)
        except OSError:
            pass
    listed = run(["xl", "domid", name], timeout=20)[0] == 0
    check("cleaned-up", not left and not listed,
          None if not left and not listed else "device model pids %s, domain listed: %s" % (left, listed))
    return result


def one_run(spec, job, images):
    dm, variant = spec["dm"], spec["variant"]
    label = "%s/%s" % (dm, variant)
    name = "e2e-%s-%s" % (dm, variant)
    outdir = os.path.join(OUT, "%s-%s" % (dm, variant))
    os.makedirs(outdir, exist_ok=True)
    result = {"dm": dm, "variant": variant, "checks": {}, "notes": []}
    checks = result["checks"]

    def check(key, ok, note=None):
        checks[key] = bool(ok)
        if note:
            result["notes"].append("%s: %s" % (key, note))
        mark("%s %s %s%s" % (label, key, "ok" if ok else "FAILED", (" (%s)" % note) if note else ""))
        return ok

    if spec.get("config"):
        settings = example_settings(spec["config"])
        if settings["override"] != spec["path"]:
            result["notes"].append("config: device_model_override is %s, the package installs %s"
                                   % (settings["override"], spec["path"]))
    else:
        settings = {"override": spec["path"], "vnc": variant == "vnc1", "sdl": False, "pngdir": None}
    result["vnc"], result["sdl"] = settings["vnc"], settings["sdl"]
    env = dict(spec.get("env") or {})
    if settings["sdl"]:
        # libxl passes xl's DISPLAY (and XAUTHORITY) to the device model.
        env["DISPLAY"] = ":0"
    if settings["pngdir"]:
        # As the example's comment says: the folder must exist.
        os.makedirs(settings["pngdir"], exist_ok=True)
    cfg = os.path.join(outdir, "xl.cfg")
    write_config(cfg, name, spec, job)
    mark("%s xl create" % label)
    t0 = time.monotonic()
    # libxl gives the device model xl's environment (XENVFB_LOG, DISPLAY).
    rc, out = run(["xl", "-vvv", "create", cfg], timeout=120, env=env or None)
    result["create_seconds"] = round(time.monotonic() - t0, 2)
    with open(os.path.join(outdir, "xl-create.log"), "w") as f:
        f.write(out)
    domid = None
    if rc == 0:
        d_rc, d_out = run(["xl", "domid", name], timeout=20)
        domid = int(d_out.strip()) if d_rc == 0 and d_out.strip().isdigit() else None
    if not check("create", rc == 0 and domid is not None,
                 "exit %d in %.1fs, domid %s" % (rc, result["create_seconds"], domid)):
        collect_logs(name, outdir)
        run(["xl", "destroy", name], timeout=60)
        return result
    result["domid"] = domid

    paths = {}
    for kind in ("vfb", "vkbd"):
        paths["%s backend" % kind] = "/local/domain/0/backend/%s/%d/0/state" % (kind, domid)
        paths["%s frontend" % kind] = "/local/domain/%d/device/%s/0/state" % (domid, kind)
    states = {}

    def all_connected():
        for key, path in paths.items():
            states[key] = xs_read(path)
        return all(v == "4" for v in states.values())

    ok = wait_for("connected", 150, 0.2, all_connected)
    result["connected_seconds"] = round(time.monotonic() - t0, 2) if ok else None
    check("connected", ok, "%s after %s s" % (
        ", ".join("%s=%s" % kv for kv in sorted(states.items())), result["connected_seconds"]))

    pid_text = xs_read("/local/domain/%d/image/device-model-pid" % domid)
    pid = int(pid_text) if pid_text and pid_text.isdigit() else None
    result["dm_pid"] = pid
    # The process libxl spawned must be the device model under test.
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except (OSError, TypeError):
        argv = []
    with open(os.path.join(outdir, "dm-argv.txt"), "w") as f:
        f.write("\n".join(argv) + "\n")
    check("dm-spawned", argv[:1] == [spec["path"]] and settings["override"] == spec["path"],
          "pid %s runs %s (its argv is in dm-argv.txt)" % (pid, argv[0] if argv else "nothing: no such process"))

    drawn = wait_for("drawn", 60, 0.5, lambda: guest_marker(name, "drawn"))
    guest_md5 = None
    if drawn:
        for field in drawn:
            if field.startswith("md5="):
                guest_md5 = field[4:]
    check("guest-fb", guest_md5 == images["first"]["md5"],
          "guest read back md5 %s, expected %s" % (guest_md5, images["first"]["md5"]))

    if settings["vnc"]:
        port = xs_read("/local/domain/%d/console/vnc-port" % domid)
        listen = xs_read("/local/domain/%d/console/vnc-listen" % domid)
        banner = b""
        try:
            with socket.create_connection((listen or "127.0.0.1", int(port)), timeout=10) as s:
                while len(banner) < 12:
                    chunk = s.recv(12 - len(banner))
                    if not chunk:
                        break
                    banner += chunk
        except (OSError, TypeError, ValueError) as e:
            banner = repr(e).encode()
        check("vnc", banner.startswith(b"RFB "), "vnc-listen=%s vnc-port=%s banner=%r" % (listen, port, banner))

    def screenshot_check(key, image, filename, take=lambda dest: take_screenshot(domid, dest)):
        # The device model may show an update a little later than the guest's
        # write returned: take screenshots until one matches, for up to 15 s.
        shot_path = os.path.join(outdir, filename)
        last = {"note": "no screenshot taken"}

        def screenshot_matches():
            if last.get("hung"):
                return False
            try:
                shot = take(shot_path)
            except socket.timeout:
                # No answer in 10 s: the device model is hung, asking again
                # only spends the time budget.
                last["note"] = "screenshot failed: no QMP answer in 10 s"
                last["hung"] = True
                return False
            except Exception as e:  # report whatever went wrong, keep polling
                last["note"] = "screenshot failed: %s" % e
                return False
            diff, first = compare_rgb(shot, image["rgb"], job["width"], job["height"])
            last["note"] = "%dx%d, %d pixels differ from what the guest drew%s" % (
                shot[0], shot[1], diff, (", first at %s" % (first,)) if first else "")
            return diff == 0

        t_shot = time.monotonic()
        ok = wait_for(key, 15, 1.0, lambda: screenshot_matches() or ("stop" if last.get("hung") else None))
        ok = ok is True
        result["%s_seconds" % key] = round(time.monotonic() - t_shot, 2)
        return check(key, ok, last["note"])

    screenshot_check("screenshot", images["first"], "screenshot.ppm")

    if pid:
        # CPU the device model uses while the guest shows a still screen,
        # from 2 s after the screenshot on: a PNG display (interval=1000)
        # writes its file for the last change up to 1 s later, and that
        # write is not idle work (one run measured 1.6% over the 5 s when
        # the window began at once; on the simulated host the same display
        # then makes 0 context switches in 5 s).
        time.sleep(2)
        before = proc_stats(pid).get("cpu_seconds")
        time.sleep(5)
        after = proc_stats(pid).get("cpu_seconds")
        if before is not None and after is not None:
            result["idle_cpu_percent"] = round((after - before) / 5 * 100, 1)

    if spec.get("input"):
        note = ""
        # evdev drops events while no reader has the device open: wait for the
        # guest to say its readers are listening.
        if not wait_for("ready", 30, 0.5, lambda: guest_marker(name, "ready") is not None):
            note = "the guest never reported ready; "
        try:
            qmp = QMP("/var/run/xen/qmp-libxl-%d" % domid)
            try:
                qmp.execute("send-key", {"keys": [{"type": "qcode", "data": "a"}]})
            finally:
                qmp.close()
        except Exception as e:
            note = "send-key failed: %s; " % e
        got = "failed" not in note and wait_for(
            "key", 15, 0.5, lambda: (30, 1) in guest_key_events(name) and (30, 0) in guest_key_events(name))
        check("input", got, note + "guest saw EV_KEY events %s" % guest_key_events(name))
    if spec.get("input") and checks.get("input"):
        # The key press made the guest redraw lines 100-299 with the second
        # pattern: the device model must pass that partial update on.
        drawn2 = wait_for("drawn2", 30, 0.5, lambda: guest_marker(name, "drawn2"))
        md5 = drawn2[0][4:] if drawn2 and drawn2[0].startswith("md5=") else None
        if check("guest-fb-2", md5 == images["second"]["md5"],
                 "guest read back md5 %s, expected %s" % (md5, images["second"]["md5"])):
            screenshot_check("update", images["second"], "screenshot-2.ppm")

    last_image = images["second"] if checks.get("guest-fb-2") else images["first"]
    if settings["pngdir"]:
        # The PNG display (device_model_args) must have saved the last screen.
        screenshot_check("png-display", last_image, "png-display-latest.ppm",
                         take=lambda dest: copy_latest(settings["pngdir"], settings["pngformat"], dest, job.get("pylib")))

    if settings["sdl"]:
        found, note = False, "no look at the X screen"
        for _ in range(15):
            try:
                found, note = sdl_window_shows(last_image["rgb"], job["width"], job["height"])
            except Exception as e:  # report whatever went wrong, keep polling
                note = "reading Xvfb's screen failed: %r" % e
            if found:
                break
            time.sleep(1)
        check("sdl-window", found, note)

    if settings["vnc"]:
        # A VNC client the project did not write (vncdotool, from /job/pylib)
        # must see what the guest drew and deliver key and mouse to its evdev.
        last_image = images["second"] if checks.get("guest-fb-2") else images["first"]
        vnc_checks(check, result, job, domid, name, outdir, last_image, baseline=dm == "qemu")

    if pid:
        result["dm_stats"] = proc_stats(pid)
        save_threads(pid, os.path.join(outdir, "dm-threads.txt"))
    mark("%s xl destroy" % label)
    rc, out = run(["xl", "destroy", name], timeout=60)
    gone = wait_for("dm gone", 15, 0.5, lambda: (pid is None or process_gone(pid))
                    and not xs_exists("/local/domain/0/device-model/%d" % domid))
    check("destroy", rc == 0 and gone and pid is not None,
          "xl destroy exit %d, dm pid %s %s, device-model node %s" % (
              rc, pid, "gone" if pid and process_gone(pid) else "STILL RUNNING",
              "present" if xs_exists("/local/domain/0/device-model/%d" % domid) else "gone"))
    if pid and not process_gone(pid):
        # Leave a clean dom0 for the next run (the failure is recorded).
        save_threads(pid, os.path.join(outdir, "dm-threads-after-destroy.txt"))
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    collect_logs(name, outdir)
    return result


def vncdo(job, port, args, timeout=90):
    """Runs vncdotool (installed on the host into /job/pylib) against the
    device model's VNC server; returns (exit status, output). Under TCG its
    start-up (Twisted, Pillow) alone takes seconds, hence the generous limits."""
    pylib = job.get("pylib")
    if not pylib or not os.path.isdir(pylib):
        return 127, "vncdotool missing: no %s on the job disk" % pylib
    return run(["python3", "-m", "vncdotool.command", "-s", "127.0.0.1::%d" % port,
                "--timeout", str(timeout - 15)] + args,
               timeout=timeout, env={"PYTHONPATH": pylib})


def vnc_checks(check, result, job, domid, name, outdir, expected, baseline=False):
    """vnc-capture: a vncdotool capture equals what the guest last drew;
    vnc-input: a key ("a") and a left click typed through VNC reach the
    guest's evdev as KEY_A and BTN_LEFT press and release. For the baseline
    (QEMU) the input is typed a second time if the first did not all
    arrive: under host load QEMU once lost the click, and the baseline's
    flake must not fail the test of xenvfb (which gets one try)."""
    port_text = xs_read("/local/domain/%d/console/vnc-port" % domid)
    if not port_text or not port_text.isdigit():
        check("vnc-capture", False, "no console/vnc-port (%r)" % port_text)
        check("vnc-input", False, "no console/vnc-port (%r)" % port_text)
        return
    port = int(port_text)
    # vncdotool saves PNG; Pillow (from the same folder) turns it into the
    # PPM read_ppm reads.
    png = os.path.join(outdir, "vnc-capture.png")
    shot = os.path.join(outdir, "vnc-capture.ppm")
    to_ppm = "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2], format='PPM')"
    note = "no capture taken"
    t0 = time.monotonic()
    # An update may reach the VNC server a little after the guest wrote it:
    # capture again (up to 3 tries, within 60 s) until it matches.
    for attempt in range(3):
        for old in (png, shot):
            try:
                os.unlink(old)
            except OSError:
                pass
        rc, out = vncdo(job, port, ["capture", png])
        if rc == 0:
            rc, out = run(["python3", "-c", to_ppm, png, shot], timeout=60,
                          env={"PYTHONPATH": job.get("pylib") or ""})
            if rc != 0:
                note = "converting vncdotool's PNG to PPM failed: %s" % out.strip()[-300:]
        else:
            note = "vncdotool capture exit %d: %s" % (rc, out.strip()[-300:])
        if rc == 0:
            try:
                got = read_ppm(shot)
                diff, first = compare_rgb(got, expected["rgb"], job["width"], job["height"])
                note = "%dx%d, %d pixels differ from what the guest drew%s" % (
                    got[0], got[1], diff, (", first at %s" % (first,)) if first else "")
                if diff == 0:
                    break
            except Exception as e:
                note = "reading vncdotool's capture failed: %s" % e
        if time.monotonic() - t0 > 60:
            break
        time.sleep(1)
    result["vnc-capture_seconds"] = round(time.monotonic() - t0, 2)
    check("vnc-capture", note.startswith("%dx%d, 0 pixels" % (job["width"], job["height"])),
          "%s (attempt %d)" % (note, attempt + 1))

    note = ""
    if not wait_for("ready", 30, 0.5, lambda: guest_marker(name, "ready") is not None):
        note = "the guest never reported ready; "
    before = len(guest_key_events(name))
    x, y = job["width"] // 2, job["height"] // 2
    rc, out = vncdo(job, port, ["key", "a", "move", str(x), str(y), "click", "1"])
    if rc != 0:
        note += "vncdotool exit %d: %s; " % (rc, out.strip()[-300:])
    want = [(30, 1), (30, 0), (272, 1), (272, 0)]

    def arrived():
        new = guest_key_events(name)[before:]
        return all(w in new for w in want)

    got = rc == 0 and wait_for("vnc input", 20, 0.5, arrived)
    if not got and baseline:
        note += "first try saw %s, typed again; " % (guest_key_events(name)[before:],)
        before = len(guest_key_events(name))
        rc, out = vncdo(job, port, ["key", "a", "move", str(x), str(y), "click", "1"])
        got = rc == 0 and wait_for("vnc input", 20, 0.5, arrived)
    check("vnc-input", got, note + "guest saw new EV_KEY events %s, expected %s" % (
        guest_key_events(name)[before:], want))


def save_threads(pid, path):
    """Where each thread of the device model is (state, kernel wait channel,
    current system call): what a hang looks like from outside."""
    lines = []
    try:
        for tid in sorted(os.listdir("/proc/%d/task" % pid), key=int):
            base = "/proc/%d/task/%s/" % (pid, tid)
            fields = []
            for name in ("comm", "wchan", "syscall"):
                try:
                    with open(base + name) as f:
                        fields.append("%s=%s" % (name, f.read().strip()))
                except OSError as e:
                    fields.append("%s=?(%s)" % (name, e.strerror))
            try:
                with open(base + "stat") as f:
                    fields.insert(0, "state=" + f.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass
            lines.append("tid %s %s" % (tid, " ".join(fields)))
    except OSError as e:
        lines.append("no threads: %s" % e)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def collect_logs(name, outdir):
    for src, dst in (("/var/log/xen/console/guest-%s.log" % name, "guest-console.log"),
                     ("/var/log/xen/qemu-dm-%s.log" % name, "device-model.log"),
                     ("/var/log/xen/xl-%s.log" % name, "xl.log")):
        try:
            with open(src, "rb") as f, open(os.path.join(outdir, dst), "wb") as g:
                g.write(f.read())
        except OSError:
            pass


def image(raw, job):
    """The md5 of framebuffer bytes (B, G, R, X per pixel) and their RGB."""
    rgb = bytearray(job["width"] * job["height"] * 3)
    rgb[0::3] = raw[2::4]
    rgb[1::3] = raw[1::4]
    rgb[2::3] = raw[0::4]
    return {"md5": hashlib.md5(raw).hexdigest(), "rgb": bytes(rgb)}


def package_check():
    """xenvfb's package as install.sh left it: installed, and the binary's
    version is the package's. Also lists dom0's packages (dom0-packages.txt)."""
    rc, listing = run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"], timeout=60)
    with open(os.path.join(OUT, "dom0-packages.txt"), "w") as f:
        f.write(listing)
    rc, version = run(["dpkg-query", "-W", "-f", "${Version}", "xenvfb"], timeout=30)
    vrc, said = run(["/usr/bin/xenvfb", "--version"], timeout=30)
    ok = rc == 0 and vrc == 0 and said.strip() == "xenvfb " + version.strip()
    note = "dpkg: xenvfb %s; /usr/bin/xenvfb --version: %s" % (version.strip() if rc == 0 else "NOT INSTALLED", said.strip())
    mark("package %s (%s)" % ("ok" if ok else "FAILED", note))
    return {"package": ok, "package_note": note}


def install_recommends(job):
    """Adds what apt installed for the package's Recommends (install.sh made
    the layer with apt in a chroot of this root filesystem): unpacked over /."""
    layer = os.path.join(JOB, "recommends.tar")
    if not os.path.exists(layer):
        ok, note = False, "no %s: install.sh found no Recommends" % layer
    else:
        rc, out = run(["tar", "-C", "/", "-xpf", layer], timeout=300)
        prc, state = run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\\n", "libsdl2-2.0-0"], timeout=60)
        ok = rc == 0 and prc == 0 and state.split()[1:2] == ["ii"]
        note = "tar exit %d%s; dpkg: %s" % (rc, (": " + out.strip()[-300:]) if rc else "", state.strip() or "libsdl2-2.0-0 unknown")
    mark("recommends %s (%s)" % ("ok" if ok else "FAILED", note))
    return {"recommends": ok, "recommends_note": note}


def vdispl_run(job, images, pattern2, budget_end, standalone):
    """A vdispl guest (vdispl_test.py, on the job disk), within the budget."""
    variant = "vdispl-standalone" if standalone else "vdispl"
    if time.monotonic() > budget_end - job.get("run_reserve_seconds", 90):
        mark("xenvfb/%s not run: the time budget is spent" % variant)
        return {"dm": "xenvfb", "variant": variant, "checks": {"harness": False}, "notes": ["harness: not run, time budget spent"]}
    try:
        sys.path.insert(0, JOB)
        import vdispl_test
        return vdispl_test.one_run(job, dict(images, **{"vdispl-b": image(pattern2, job)}), sys.modules[__name__], standalone)
    except Exception as e:
        mark("xenvfb/%s crashed: %r" % (variant, e))
        run(["xl", "destroy", "e2e-xenvfb-" + variant], timeout=60)
        return {"dm": "xenvfb", "variant": variant, "checks": {"harness": False}, "notes": ["harness error: %r" % e]}


def perf_run(job, budget_end):
    """The performance part (perf_test.py, on the job disk): many guests at
    once, one animation watched by each kind of viewer, key-to-screen; for
    each device model. Returns (results, whether its checks passed)."""
    try:
        sys.path.insert(0, JOB)
        import perf_test
        perf = perf_test.run_all(sys.modules[__name__], job, budget_end)
        perf["checks"] = perf_test.checks(perf)
        for name, ok in perf["checks"].items():
            mark("perf check %s: %s" % (name, "ok" if ok else "FAILED"))
        return perf, all(perf["checks"].values())
    except Exception as e:  # report, and fail the run
        mark("perf crashed: %r" % e)
        return {"error": repr(e)}, False


def main():
    with open(os.path.join(JOB, "job.json")) as f:
        job = json.load(f)
    with open(job["pattern"], "rb") as f:
        pattern = f.read()
    with open(job["pattern2"], "rb") as f:
        pattern2 = f.read()
    stride = job["width"] * 4
    # What the guest's framebuffer holds: first the whole pattern, then (after
    # the key press) lines 100-299 from the second one (see guest-init).
    images = {"first": image(pattern, job),
              "second": image(pattern[:100 * stride] + pattern2[100 * stride:300 * stride]
                              + pattern[300 * stride:], job)}
    os.makedirs(OUT, exist_ok=True)
    # The example configurations in configs/ must at least parse: xl create -n
    # (dry run) reads and checks a config without creating anything.
    configs = {}
    for cfg in job.get("configs", []):
        rc, out = run(["xl", "create", "-n", cfg], timeout=60)
        configs[os.path.basename(cfg)] = rc == 0
        mark("config %s %s" % (os.path.basename(cfg), "parses" if rc == 0 else "FAILED: " + out.strip()[-300:]))
    results = []
    package = {}
    if any(spec["dm"] == "xenvfb" for spec in job["runs"]):
        package = package_check()
    xvfb = None
    budget_end = T_START + job.get("budget_seconds", 3600)
    for spec in job["runs"]:
        if time.monotonic() > budget_end - job.get("run_reserve_seconds", 90):
            mark("%s/%s not run: the time budget is spent" % (spec["dm"], spec["variant"]))
            results.append({"dm": spec["dm"], "variant": spec["variant"],
                            "checks": {"harness": False}, "notes": ["harness: not run, time budget spent"]})
            continue
        if spec.get("config") and example_settings(spec["config"])["sdl"]:
            package.update(install_recommends(job))
            if xvfb is None:
                xvfb, note = start_xvfb()
                mark("xvfb: %s" % note)
        try:
            if spec["variant"] == "restrict":
                results.append(restrict_run(spec, job))
            else:
                results.append(one_run(spec, job, images))
        except Exception as e:
            mark("%s/%s crashed: %r" % (spec["dm"], spec["variant"], e))
            results.append({"dm": spec["dm"], "variant": spec["variant"],
                            "checks": {"harness": False}, "notes": ["harness error: %r" % e]})
            run(["xl", "destroy", "e2e-%s-%s" % (spec["dm"], spec["variant"])], timeout=60)
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump({"runs": results, "configs": configs, "package": package}, f, indent=1)
        # The host may have to stop the VM; what is on disk must be complete.
        os.sync()
    if xvfb is not None:
        xvfb.terminate()
    for standalone in (False, True) if job.get("vdispl") else ():
        if standalone and not job["vdispl"].get("standalone"):
            continue
        results.append(vdispl_run(job, images, pattern2, budget_end, standalone))
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump({"runs": results, "configs": configs, "package": package}, f, indent=1)
        os.sync()
    perf_ok = True
    if job.get("perf"):
        perf, perf_ok = perf_run(job, budget_end)
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump({"runs": results, "configs": configs, "package": package, "perf": perf}, f, indent=1)
        os.sync()
    run_list = run(["xl", "list"], timeout=20)[1]
    with open(os.path.join(OUT, "xl-list-at-end.txt"), "w") as f:
        f.write(run_list)
    passed = all(all(r["checks"].values()) and r["checks"] for r in results) and all(configs.values()) \
        and all(v for k, v in package.items() if k in ("package", "recommends")) and perf_ok
    mark("all runs done: %s" % ("PASS" if passed else "FAIL"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
