"""The vdispl part of the real-Xen test, run in dom0 by dom0-test.py (which
passes itself as `t`, for its helpers).

A PV guest with a vfb (and the vkbd xl adds with it) and a vdispl device
(one 800x600 connector) is created with `xl create`; libxl starts xenvfb for
the vfb, waits for it to run, then adds the vdispl device and waits 10 s
for InitWait. The connector is console 1. The guest loads drm/xen-front and
runs kms-flip: pattern A shown with SETCRTC, then, on KEY_A sent through
QMP, 21 page flips ending on pattern B. Checks:
  create, dm-spawned  as for the vfb runs (xl create succeeding means the
                      vdispl backend reached InitWait within libxl's 10 s);
  connected           vdispl, vfb and vkbd at state 4 on both ends;
  kms-setcrtc         the guest's KMS program showed pattern A;
  screendump-a        QMP screendump device=vdispl-0 head=0 equals A;
  flips               after send-key a, all 21 flips completed (each flip's
                      event came: the guest times them);
  screendump-b, vnc-capture-b, png-display
                      the connector's screen over QMP, vncdotool's capture
                      of console 1's VNC server (id console1 in
                      query-vnc-servers) and the PNG display
                      (DIR/console-1) is B;
  destroy             as for the vfb runs.

With job["vdispl"]["standalone"] (XEN_E2E_VDISPL_STANDALONE=1 for run.sh) a
second guest has only the vdispl device: libxl starts no device model for
it, so `xenvfb --domain NAME --vdispl-only ...` is started by hand before
`xl create` (the route xenvfb(1) documents). Its connector is console 0,
the guest has no keyboard (kms-flip flips 20 s after SETCRTC), and the
hand-started xenvfb must exit by itself, status 0, after `xl destroy`.
"""
import os
import subprocess
import time

FLIPS = 21


def write_config(path, name, job, xenvfb, pngdir, standalone):
    lines = [
        'name = "%s"' % name,
        'type = "pv"',
        'kernel = "%s"' % job["kernel"],
        'ramdisk = "%s"' % job["vdispl"]["ramdisk"],
        'extra = "console=hvc0"',
        'memory = 256',
        'vcpus = 1',
        'on_crash = "preserve"',
        "vdispl = [ 'backend=0,be-alloc=0,connectors=id0:800x600' ]",
    ]
    if not standalone:
        lines += [
            "vfb = [ 'vnc=1,vnclisten=127.0.0.1,vncdisplay=0' ]",
            'device_model_override = "%s"' % xenvfb,
            "device_model_args = [ '--display', 'png:dir=%s,format=ppm,interval=200,keep=4' ]" % pngdir,
        ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def one_run(job, images, t, standalone=False):
    variant = "vdispl-standalone" if standalone else "vdispl"
    label = "xenvfb/" + variant
    name = "e2e-xenvfb-" + variant
    outdir = os.path.join(t.OUT, "xenvfb-" + variant)
    os.makedirs(outdir, exist_ok=True)
    result = {"dm": "xenvfb", "variant": variant, "checks": {}, "notes": []}
    checks = result["checks"]
    xenvfb = job["vdispl"]["xenvfb"]
    pngdir = "/tmp/xenvfb-%s-png" % variant
    qmp_path = "/tmp/xenvfb-standalone.qmp" if standalone else None
    # Console 0 when the connector is the only screen, else console 1.
    console = 0 if standalone else 1
    pngsub = pngdir if standalone else os.path.join(pngdir, "console-1")

    def check(key, ok, note=None):
        checks[key] = bool(ok)
        if note:
            result["notes"].append("%s: %s" % (key, note))
        t.mark("%s %s %s%s" % (label, key, "ok" if ok else "FAILED", (" (%s)" % note) if note else ""))
        return ok

    cfg = os.path.join(outdir, "xl.cfg")
    write_config(cfg, name, job, xenvfb, pngdir, standalone)
    hand = None
    if standalone:
        # Started by hand, by name, before the domain exists.
        log = open(os.path.join(outdir, "device-model.log"), "w")
        hand = subprocess.Popen([xenvfb, "--domain", name, "--vdispl-only", "--vnc", "127.0.0.1:10,to=99",
                                 "--qmp", "unix:" + qmp_path,
                                 "--display", "png:dir=%s,format=ppm,interval=200,keep=4" % pngdir],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        t.wait_for("qmp socket", 30, 0.2, lambda: os.path.exists(qmp_path))
    t.mark("%s xl create" % label)
    t0 = time.monotonic()
    rc, out = t.run(["xl", "-vvv", "create", cfg], timeout=120)
    result["create_seconds"] = round(time.monotonic() - t0, 2)
    with open(os.path.join(outdir, "xl-create.log"), "w") as f:
        f.write(out)
    domid = None
    if rc == 0:
        d_rc, d_out = t.run(["xl", "domid", name], timeout=20)
        domid = int(d_out.strip()) if d_rc == 0 and d_out.strip().isdigit() else None
    if not check("create", rc == 0 and domid is not None, "exit %d in %.1fs, domid %s" % (rc, result["create_seconds"], domid)):
        t.collect_logs(name, outdir)
        t.run(["xl", "destroy", name], timeout=60)
        if hand:
            hand.kill()
        return result
    result["domid"] = domid

    paths = {}
    for kind in ("vdispl",) if standalone else ("vdispl", "vfb", "vkbd"):
        paths["%s backend" % kind] = "/local/domain/0/backend/%s/%d/0/state" % (kind, domid)
        paths["%s frontend" % kind] = "/local/domain/%d/device/%s/0/state" % (domid, kind)
    states = {}

    def all_connected():
        for key, path in paths.items():
            states[key] = t.xs_read(path)
        return all(v == "4" for v in states.values())

    ok = t.wait_for("connected", 150, 0.2, all_connected)
    result["connected_seconds"] = round(time.monotonic() - t0, 2) if ok else None
    check("connected", ok, "%s after %s s" % (", ".join("%s=%s" % kv for kv in sorted(states.items())), result["connected_seconds"]))

    if standalone:
        pid = hand.pid
        check("no-dm", t.xs_read("/local/domain/%d/image/device-model-pid" % domid) is None
              and not t.xs_exists("/local/domain/0/device-model/%d/state" % domid),
              "libxl started no device model; the hand-started xenvfb wrote no device-model state")
    else:
        pid_text = t.xs_read("/local/domain/%d/image/device-model-pid" % domid)
        pid = int(pid_text) if pid_text and pid_text.isdigit() else None
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
        except (OSError, TypeError):
            argv = []
        with open(os.path.join(outdir, "dm-argv.txt"), "w") as f:
            f.write("\n".join(argv) + "\n")
        check("dm-spawned", argv[:1] == [xenvfb], "pid %s runs %s" % (pid, argv[0] if argv else "nothing"))
    result["dm_pid"] = pid
    qmp_path = qmp_path or "/var/run/xen/qmp-libxl-%d" % domid

    shown = t.wait_for("kms-shown-a", 90, 0.5, lambda: t.guest_marker(name, "kms-shown-a"))
    mode = t.guest_marker(name, "kms-mode")
    check("kms-setcrtc", shown is not None, "guest: kms-mode %s, kms-shown-a %s, errors %s" % (
        mode, shown, t.guest_marker(name, "kms-error")))

    def qmp_dump(dest, args):
        qmp = t.QMP(qmp_path)
        try:
            qmp.execute("screendump", dict(args, filename=dest))
        finally:
            qmp.close()
        return t.read_ppm(dest)

    def matches(key, image, take, tries=15):
        last = {"note": "nothing taken"}

        def attempt():
            try:
                shot = take()
            except Exception as e:  # report whatever went wrong, keep polling
                last["note"] = "failed: %s" % e
                return False
            diff, first = t.compare_rgb(shot, image["rgb"], job["width"], job["height"])
            last["note"] = "%dx%d, %d pixels differ%s" % (shot[0], shot[1], diff, (", first at %s" % (first,)) if first else "")
            return diff == 0

        ok = t.wait_for(key, tries, 1.0, attempt)
        return check(key, ok, last["note"])

    def vnc_capture(tag):
        qmp = t.QMP(qmp_path)
        try:
            servers = qmp.execute("query-vnc-servers")
        finally:
            qmp.close()
        sid = "console%d" % console if console else "default"
        port = int(next(s for s in servers if s["id"] == sid)["server"][0]["service"])
        png = os.path.join(outdir, "vnc-%s.png" % tag)
        ppm = os.path.join(outdir, "vnc-%s.ppm" % tag)
        rc, out = t.vncdo(job, port, ["capture", png])
        if rc != 0:
            raise RuntimeError("vncdotool exit %d: %s" % (rc, out.strip()[-200:]))
        to_ppm = "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2], format='PPM')"
        rc, out = t.run(["python3", "-c", to_ppm, png, ppm], timeout=60, env={"PYTHONPATH": job.get("pylib") or ""})
        if rc != 0:
            raise RuntimeError("PNG to PPM: %s" % out.strip()[-200:])
        return t.read_ppm(ppm)

    a, b = images["first"], images["vdispl-b"]
    head = {} if standalone else {"device": "vdispl-0", "head": 0}
    matches("screendump-a", a, lambda: qmp_dump(os.path.join(outdir, "screendump-a.ppm"), head))

    if pid:
        # Idle from 1 s after the screendump: the PNG display (interval=200)
        # may still write its file for picture A, which is not idle work.
        time.sleep(1)
        before = t.proc_stats(pid).get("cpu_seconds")
        time.sleep(5)
        after = t.proc_stats(pid).get("cpu_seconds")
        if before is not None and after is not None:
            result["idle_cpu_percent"] = round((after - before) / 5 * 100, 1)

    note = ""
    if not standalone:
        try:
            qmp = t.QMP(qmp_path)
            try:
                qmp.execute("send-key", {"keys": [{"type": "qcode", "data": "a"}]})
            finally:
                qmp.close()
        except Exception as e:
            note = "send-key failed: %s; " % e
    flips = t.wait_for("flips", 60, 0.5, lambda: t.guest_marker(name, "kms-flips"))
    fields = dict(f.split("=", 1) for f in (flips or []) if "=" in f)
    for key in ("avg_us", "max_us"):
        if key in fields:
            result["flip_%s" % key] = int(float(fields[key]))
    check("flips", fields.get("done") == str(FLIPS), note + "guest: kms-flips %s, no-key %s" % (
        flips, t.guest_marker(name, "kms-no-key") is not None))

    matches("screendump-b", b, lambda: qmp_dump(os.path.join(outdir, "screendump-b.ppm"), head))
    matches("vnc-capture-b", b, lambda: vnc_capture("b"), tries=60)

    def png_latest():
        dest = os.path.join(outdir, "png-display-latest.ppm")
        with open(os.path.join(pngsub, "latest.ppm"), "rb") as f, open(dest, "wb") as g:
            g.write(f.read())
        return t.read_ppm(dest)
    matches("png-display", b, png_latest)

    if pid:
        result["dm_stats"] = t.proc_stats(pid)
    t.mark("%s xl destroy" % label)
    rc, out = t.run(["xl", "destroy", name], timeout=60)
    if standalone:
        # Nobody signals it: it must see the domain go and exit by itself.
        try:
            status = hand.wait(30)
        except subprocess.TimeoutExpired:
            status = None
        gone = status == 0 and not t.xs_exists("/local/domain/0/device-model/%d" % domid)
        check("destroy", rc == 0 and gone, "xl destroy exit %d, hand-started xenvfb exit status %s" % (rc, status))
    else:
        gone = t.wait_for("dm gone", 15, 0.5, lambda: (pid is None or t.process_gone(pid))
                          and not t.xs_exists("/local/domain/0/device-model/%d" % domid))
        check("destroy", rc == 0 and gone and pid is not None, "xl destroy exit %d, dm pid %s %s" % (
            rc, pid, "gone" if pid and t.process_gone(pid) else "STILL RUNNING"))
    if pid and not t.process_gone(pid):
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    t.collect_logs(name, outdir)
    return result
