#!/usr/bin/env python3
"""Prints the end-to-end results side by side (one column per device model and
variant) and writes them to RESULTS_DIR/results.md.
Usage: report.py RESULTS_DIR   (exits 1 when a check failed or nothing ran)
"""
import json
import os
import sys

CHECKS = ["refused", "says-why", "cleaned-up", "create", "dm-spawned", "connected", "guest-fb", "vnc", "screenshot", "input", "guest-fb-2", "update", "png-display",
          "sdl-window", "vnc-capture", "vnc-input",
          # the vdispl guest (vdispl_test.py)
          "no-dm", "kms-setcrtc", "screendump-a", "flips", "screendump-b", "vnc-capture-b",
          "destroy", "harness"]


def label(run):
    """A column's title: QEMU's variants, the xenvfb example run, or the vdispl guests."""
    if run["dm"] == "qemu":
        return "qemu " + {"vnc1": "vnc", "vnc0": "headless"}.get(run["variant"], run["variant"])
    return "xenvfb " + {"vdispl-standalone": "vdispl alone", "restrict": "dm_restrict"}.get(run["variant"], run["variant"])


def perf_tables(perf):
    """The performance part (perf_test.py) as Markdown: QEMU and xenvfb
    side by side with xenvfb's ratio, from the same VM run."""
    q, x = perf.get("qemu", {}), perf.get("xenvfb", {})

    def fmt(v, f):
        return f % v if isinstance(v, (int, float)) else "-"

    def ratio(a, b):
        return "%.2f×" % (b / a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 else "-"

    def table(head, rows):
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"

    def mean(values):
        values = [v for v in values if isinstance(v, (int, float))]
        return sum(values) / len(values) if values else None

    def multi(r, what):
        mem, idle = r.get("memory", {}), r.get("idle", {})
        return {
            "created": r.get("create_seconds"),
            "connected": r.get("all_connected_seconds"),
            "startup_cpu": mean(list((r.get("startup_cpu_seconds") or {}).values())),
            "hwm_viewed": (r.get("first_guest_memory_after") or {}).get("VmHWM", 0) / 1024 or None,
            "hwm": mean([m.get("VmHWM", 0) / 1024 for m in mem.values()]) if mem else None,
            "rss_total": sum(m.get("VmRSS", 0) for m in mem.values()) / 1024 if mem else None,
            "cpu": mean([i.get("cpu_percent") for i in idle.values()]),
            "cs": mean([i.get("context_switches_per_second") for i in idle.values()]),
        }[what]

    n = x.get("guests") or q.get("guests")
    text = "## Performance: xenvfb and QEMU 7.2 in the same VM\n\n"
    text += "### %s guests created at once with each device model, one device model after the other (perf_test.py)\n\n" % n
    rows = []
    for label, key, f in (("time until the last `xl create` returned (s)", "created", "%.1f"),
                          ("time until every vfb and vkbd is Connected (s)", "connected", "%.1f"),
                          ("device-model CPU from its start until its guest was drawn, mean (s)", "startup_cpu", "%.2f"),
                          ("device-model peak RSS per guest, mean VmHWM, no viewer yet (MiB)", "hwm", "%.1f"),
                          ("peak RSS of the first guest's device model after both viewers (MiB)", "hwm_viewed", "%.1f"),
                          ("device-model RSS, all guests, VmRSS (MiB)", "rss_total", "%.1f"),
                          ("idle CPU per device model (%)", "cpu", "%.2f"),
                          ("idle context switches per device model per second", "cs", "%.2f")):
        a, b = multi(q, key), multi(x, key)
        rows.append([label, fmt(a, f), fmt(b, f), ratio(a, b)])
    text += table(["", "QEMU", "xenvfb", "xenvfb/QEMU"], rows)
    text += "\nIdle: %s s with every guest's screen still. The part took %s s (%s s with xenvfb, %s s with QEMU).\n\n" % (
        x.get("idle_seconds") or q.get("idle_seconds"), perf.get("seconds", "-"), x.get("seconds", "-"), q.get("seconds", "-"))
    text += "### One guest animating: an 800×160 band, 30 fps, 15 s, through mmap'd /dev/fb0\n\n"
    rows = []
    for profile, label in (("raw", "Raw viewer"), ("tight", "TigerVNC's list (Tight)")):
        qa = (q.get("animation") or {}).get(profile) or {}
        xa = (x.get("animation") or {}).get(profile) or {}
        for name, get, f in (("DM CPU time (s)", lambda a: a.get("cpu_seconds"), "%.2f"),
                             ("of which in the kernel (s)", lambda a: a.get("system_seconds"), "%.2f"),
                             ("updates received", lambda a: a.get("updates"), "%d"),
                             ("MB received", lambda a: a.get("bytes", 0) / 1e6 if "bytes" in a else None, "%.1f"),
                             ("DM CPU per update (ms)", lambda a: a["cpu_seconds"] * 1000 / a["updates"] if a.get("updates") else None, "%.1f"),
                             ("DM context switches", lambda a: a.get("context_switches"), "%d")):
            a, b = get(qa), get(xa)
            rows.append([label, name, fmt(a, f), fmt(b, f), ratio(a, b)])
    text += table(["viewer", "", "QEMU", "xenvfb", "xenvfb/QEMU"], rows)
    text += "\n### Key-to-screen: VNC key → the guest repaints 16 rows with one write → the same viewer has it\n\n"
    rows = []
    for name, key, f in (("p50 (ms)", "p50_ms", "%.1f"), ("p90 (ms)", "p90_ms", "%.1f"), ("max (ms)", "max_ms", "%.1f"),
                         ("rounds", "rounds", "%d"), ("keys lost", "lost", "%d")):
        a, b = (q.get("key_to_screen") or {}).get(key), (x.get("key_to_screen") or {}).get(key)
        rows.append([name, fmt(a, f), fmt(b, f), ratio(a, b) if key.endswith("_ms") else ""])
    text += table(["", "QEMU", "xenvfb", "xenvfb/QEMU"], rows)
    notes = [n for r in (q, x) for n in r.get("notes", [])]
    if perf.get("error"):
        notes.append("the part crashed: %s" % perf["error"])
    if notes:
        text += "\n" + "\n".join("- " + n for n in notes) + "\n"
    if perf.get("checks"):
        text += "\nChecks (CPU, memory and latency are figures to read, not checks):\n\n" + "".join(
            "- %s: %s\n" % (name, "ok" if ok else "FAILED") for name, ok in perf["checks"].items())
    return text


def main():
    directory = sys.argv[1]
    try:
        with open(os.path.join(directory, "results.json")) as f:
            data = json.load(f)
        results, configs, package = data["runs"], data.get("configs", {}), data.get("package", {})
    except (OSError, ValueError, KeyError) as e:
        print("xen-e2e: no results from dom0 (%s); see %s/serial.log and dom0-test.log" % (e, directory))
        return 1
    if not results and not data.get("perf"):
        print("xen-e2e: dom0 ran no test")
        return 1
    if not results and package.get("package") is None:
        # XEN_E2E_PERF_ONLY=1: the performance part alone.
        package = {}
    header = ["", *[label(r) for r in results]]
    rows = []
    for check in CHECKS:
        if any(check in r["checks"] for r in results):
            rows.append([check, *[{True: "ok", False: "FAIL", None: "-"}[r["checks"].get(check)] for r in results]])

    def num(value, fmt):
        return fmt % value if isinstance(value, (int, float)) else "-"

    rows.append(["xl create (s)", *[num(r.get("create_seconds"), "%.1f") for r in results]])
    rows.append(["time to Connected (s)", *[num(r.get("connected_seconds"), "%.1f") for r in results]])
    rows.append(["DM CPU time (s)", *[num(r.get("dm_stats", {}).get("cpu_seconds"), "%.2f") for r in results]])
    rows.append(["DM CPU, guest idle 5 s (%)", *[num(r.get("idle_cpu_percent"), "%.1f") for r in results]])
    if any("flip_avg_us" in r for r in results):
        rows.append(["page flip, avg / max (ms)", *[("%.1f / %.1f" % (r["flip_avg_us"] / 1000, r["flip_max_us"] / 1000))
                                                   if "flip_avg_us" in r else "-" for r in results]])
    rows.append(["DM peak RSS VmHWM (MiB)", *[num(r.get("dm_stats", {}).get("VmHWM", 0) / 1024 if r.get("dm_stats", {}).get("VmHWM") else None, "%.1f") for r in results]])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in [header, *rows]]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    notes = []
    for r in results:
        for n in r.get("notes", []):
            notes.append("- %s %s: %s" % (r["dm"], r["variant"], n))
    try:
        with open(os.path.join(directory, "host-load.txt")) as f:
            load = f.read().strip() + "\n\n"
    except OSError:
        load = ""
    text = "# xenvfb end-to-end on real Xen 4.17 (dom0 under QEMU/TCG)\n\n" + \
        ("\n".join(lines) if results else "(the performance part alone: XEN_E2E_PERF_ONLY=1)") + \
        "\n\nTime to Connected counts from the start of `xl create` until vfb and vkbd are\n" \
        "in state 4 on both ends; CPU time and VmHWM are the device model's, read from\n" \
        "/proc just before `xl destroy`; idle CPU is its use over 5 s while the guest's\n" \
        "screen stands still. All runs share one VM, so they compare fairly\n" \
        "with each other; absolute numbers depend on the host's load under TCG.\n\n" + load + \
        (perf_tables(data["perf"]) + "\n" if data.get("perf") else "") + \
        "## Details\n\n" + "\n".join(notes) + "\n"
    if package:
        text += "\n## xenvfb's Debian package in dom0\n\n" + "".join(
            "- %s: %s (%s)\n" % (key, "ok" if package[key] else "FAILED", package.get(key + "_note", ""))
            for key in ("package", "recommends") if key in package)
    if configs:
        text += "\n## Example configurations (xl create -n)\n\n" + "\n".join(
            "- configs/%s: %s" % (name, "parses" if ok else "FAILED") for name, ok in sorted(configs.items())) + "\n"
    with open(os.path.join(directory, "results.md"), "w") as f:
        f.write(text)
    if results:
        print("\n".join(lines))
    for r in results:
        for check, ok in r["checks"].items():
            if not ok:
                print("FAILED: %s %s %s — %s" % (r["dm"], r["variant"], check,
                      "; ".join(n for n in r.get("notes", []) if n.startswith(check + ":"))))
    for name, ok in sorted(configs.items()):
        print("configs/%s: %s" % (name, "parses" if ok else "FAILED (xl create -n)"))
    for key in ("package", "recommends"):
        if key in package:
            print("%s: %s (%s)" % (key, "ok" if package[key] else "FAILED", package.get(key + "_note", "")))
    if data.get("perf"):
        print(perf_tables(data["perf"]))
    perf_ok = not data.get("perf") or (not data["perf"].get("error") and all(data["perf"].get("checks", {"ran": False}).values()))
    return 0 if (results or data.get("perf")) and all(r["checks"] and all(r["checks"].values()) for r in results) \
        and all(configs.values()) \
        and all(package.get(key, True) for key in ("package", "recommends")) and perf_ok else 1


if __name__ == "__main__":
    sys.exit(main())
