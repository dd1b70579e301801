#!/usr/bin/env python3
"""Convergence property of the xenvfb device model: whatever a guest writes
(and reports with UPDATE events), once it stops and a coalescing tick has
passed, every display shows exactly the guest's framebuffer.

Each trial has the guest (`xenvfb-testtool sim-guest`, GuestKit's frontend) make a
random number of random writes (`scribble SEED COUNT`: fills, patterns,
single pixels; reported exactly, over-reported, merged or past the edge),
then compares, byte for byte, its framebuffer (`dump`) with:
- a VNC capture by vncdo (a client this project did not write),
- the PNG display's latest.png, decoded by Pillow,
- a QMP screendump (PPM).
A mismatch is retried for up to 5 s (a loaded machine may delay the tick)
and counted as late; one that never converges fails the run.

Usage: convergence.py TRIALS XENVFB MACHINE_DIR DOM0_SOCKET GUEST_SOCKET DOMID
Prints "convergence: N trials ..." on success. SEED in the environment
(XENVFB_CONVERGENCE_SEED) repeats a run.
"""
import asyncio
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from device_model import Machine, check, qmp_connect, rgb_of_png, ppm_body, TIMEOUT  # noqa: E402

TICK_MS = 20


def first_difference(a, b, width):
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            p = i // 3
            return f"pixel ({p % width}, {p // width}): {a[p*3:p*3+3].hex()} vs {b[p*3:p*3+3].hex()}"
    return f"lengths {len(a)} vs {len(b)}"


async def run(m, trials, seed):
    png_dir = os.path.join(m.dir, "png")
    os.mkdir(png_dir)
    m.start_dm("--vnc", "127.0.0.1:40,to=99", "--update-interval", str(TICK_MS),
               "--display", f"png:dir={png_dir},interval=0")
    m.start_guest()
    m.wait_connected()
    q = await qmp_connect(m)
    vncdo = os.path.join(os.path.dirname(sys.executable), "vncdo")
    rng = random.Random(seed)
    late = 0
    writes = 0
    try:
        port = int((await q.execute("query-vnc"))["service"])
        for t in range(trials):
            n = rng.randint(1, 60)
            writes += n
            s = rng.randrange(1 << 30)
            m.tell(f"scribble {s} {n}", f"scribbled {s}")
            time.sleep(0.15)  # several ticks of 20 ms
            gw, gh, guest = ppm_body(m.guest_frame())

            async def views():
                shot = os.path.join(m.dir, "vnc.png")
                r = subprocess.run([vncdo, "-s", f"127.0.0.1::{port}", "capture", shot], capture_output=True, timeout=TIMEOUT)
                check(r.returncode == 0, f"vncdo: {r.stderr.decode()}")
                (w, h), _, vnc = rgb_of_png(shot)
                check((w, h) == (gw, gh), f"VNC size {w}x{h}")
                (w, h), _, png = rgb_of_png(os.path.join(png_dir, "latest.png"))
                check((w, h) == (gw, gh), f"PNG size {w}x{h}")
                dump = os.path.join(m.dir, "dump.ppm")
                await q.execute("screendump", {"filename": dump, "format": "ppm"})
                with open(dump, "rb") as f:
                    _, _, qmp = ppm_body(f.read())
                return {"vnc": vnc, "png": png, "screendump": qmp}

            deadline = time.monotonic() + 5
            first = True
            while True:
                got = await views()
                wrong = [k for k, v in got.items() if v != guest]
                if not wrong:
                    break
                if time.monotonic() > deadline:
                    details = "; ".join(f"{k}: {first_difference(got[k], guest, gw)}" for k in wrong)
                    check(False, f"trial {t} (scribble {s} {n}, seed {seed}): {wrong} never matched the guest: {details}")
                if first:
                    late += 1
                    first = False
                time.sleep(0.2)
    finally:
        await q.disconnect()
    return f"{trials} trials, {writes} random writes, seed {seed}: VNC (vncdo), PNG and screendump equal to the guest framebuffer byte for byte; {late} needed a retry"


def main():
    trials, binary, directory, dom0, guest, domid = sys.argv[1:7]
    seed = int(os.environ.get("XENVFB_CONVERGENCE_SEED", random.randrange(1 << 30)))
    m = Machine(binary, directory, dom0, guest, domid)
    try:
        summary = asyncio.run(asyncio.wait_for(run(m, int(trials), seed), 600))
    except Exception as e:  # noqa: BLE001 - report everything
        print(f"convergence: FAILED (seed {seed}): {type(e).__name__}: {e}")
        print(m.dm_log())
        return 1
    finally:
        m.stop()
    print(f"convergence: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
