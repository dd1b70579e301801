#!/usr/bin/env python3
"""Generates Sources/Displays/KeymapLayouts.swift: for every keyboard layout
QEMU accepts for `-k`, which Linux key (and which Shift/AltGr) produces each
X keysym, read from xkeyboard-config through libxkbcommon, the way QEMU's
qemu-keymap tool writes pc-bios/keymaps.

Usage: scripts/keymaps/generate.py [-o FILE]   (default: the source file; - for stdout)
Needs Debian's libxkbcommon0 and xkb-data (scripts/deps.sh test installs them).
The output is committed, so building xenvfb needs neither; the test
KeymapLayoutsTests regenerates it and compares when libxkbcommon is present.

Table format (parsed by Keymap.swift): one line per key, `CODE ENTRY...`,
CODE the Linux key code in hex, each ENTRY a flag letter then the keysym in
hex. The flag letter is 'g' + shift + 3*altgr + 9*caps, where shift and
altgr are 0 (the keysym does not depend on that modifier), 1 (the keysym
needs it held) or 2 (the keysym needs it released), and caps is 1 when Caps
Lock turns the shift need around (letters). Entries come in QEMU's order
(by key, then base, NumLock, Shift, AltGr, Shift+AltGr level), so for a
keysym on several keys the first one listed is the first choice.
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import xkb  # noqa: E402

# QEMU's -k names and the xkb layout each is generated from: QEMU's
# pc-bios/keymaps/meson.build, with four differences, each a name whose
# QEMU table is not the layout the name stands for:
# - sv and sl: QEMU installs old hand-written files (not generated); here
#   they come from xkb's Swedish (se) and Slovenian (si).
# - et: QEMU generates it from xkb "et", which is Amharic (Ethiopia); -k et
#   has always meant Estonian (QEMU's older et file was), xkb "ee".
# - bepo: QEMU generates it from xkb fr(dvorak), "French (Dvorak)"; bépo is
#   its own layout, xkb fr(bepo), which QEMU's older bepo file was.
# ar is QEMU's older name for what it now calls ara; both are accepted.
LAYOUTS = [
    # (names, layout, variant, model)
    (("ar", "ara"), "ara", None, "pc105"),
    (("bepo",), "fr", "bepo", "pc105"),
    (("cz",), "cz", None, "pc105"),
    (("da",), "dk", None, "pc105"),
    (("de",), "de", "nodeadkeys", "pc105"),
    (("de-ch",), "ch", None, "pc105"),
    (("en-gb",), "gb", None, "pc105"),
    (("en-us",), "us", None, "pc105"),
    (("es",), "es", None, "pc105"),
    (("et",), "ee", None, "pc105"),
    (("fi",), "fi", None, "pc105"),
    (("fo",), "fo", None, "pc105"),
    (("fr",), "fr", "nodeadkeys", "pc105"),
    (("fr-be",), "be", None, "pc105"),
    (("fr-ca",), "ca", "fr", "pc105"),
    (("fr-ch",), "ch", "fr", "pc105"),
    (("hr",), "hr", None, "pc105"),
    (("hu",), "hu", None, "pc105"),
    (("is",), "is", None, "pc105"),
    (("it",), "it", None, "pc105"),
    (("ja",), "jp", None, "jp106"),
    (("lt",), "lt", None, "pc105"),
    (("lv",), "lv", None, "pc105"),
    (("mk",), "mk", None, "pc105"),
    (("nl",), "nl", None, "pc105"),
    (("no",), "no", None, "pc105"),
    (("pl",), "pl", None, "pc105"),
    (("pt",), "pt", None, "pc105"),
    (("pt-br",), "br", None, "pc105"),
    (("ru",), "ru", None, "pc105"),
    (("sl",), "si", None, "pc105"),
    (("sv",), "se", None, "pc105"),
    (("th",), "th", None, "pc105"),
    (("tr",), "tr", None, "pc105"),
]

# The Linux key codes QEMU has a QKeyCode for (its linux -> qcode map): a
# keysym never lands on a code a PC keyboard does not have, such as xkb's
# virtual <LVL3> key (evdev 84).
KEYS = (set(range(1, 84)) | set(range(86, 95)) | set(range(96, 112)) | set(range(113, 118)) | {119}
        | set(range(121, 141)) | {142, 143} | set(range(155, 160)) | set(range(163, 167)) | {172, 173}
        | set(range(183, 195)) | {226})

KEY_NUMLOCK, KEY_RIGHTALT, KEY_SYSRQ, KEY_KPDOT = 69, 100, 99, 83
NOSYMBOL, VOIDSYMBOL = 0, 0xFFFFFF
ISO_LEVEL3_SHIFT = 0xFE03
# QEMU's quirks (qemu-keymap.c): keysyms a keycode -> keysym walk does not find.
QUIRKS = [(0xFF61, KEY_SYSRQ), (0xFF15, KEY_SYSRQ), (0xFF62, KEY_SYSRQ),   # Print, Sys_Req, Execute
          (0xFFAE, KEY_KPDOT), (0xFFAC, KEY_KPDOT),                        # KP_Decimal, KP_Separator
          (0xFFEA, KEY_RIGHTALT), (0xFE03, KEY_RIGHTALT), (0xFF7E, KEY_RIGHTALT)]  # Alt_R, ISO_Level3_Shift, Mode_switch

ANY, ON, OFF = 0, 1, 2


def is_character(sym):
    """A keysym that types something (a printable character or a dead key),
    whose Shift and AltGr are therefore part of its meaning. Keypad, function
    and editing keys are not: Shift+Tab or Shift+End keep their Shift."""
    if 0xFE50 <= sym <= 0xFE93:
        return True
    if 0xFF80 <= sym <= 0xFFBD:
        return False
    cp = xkb.utf32(sym)
    return cp >= 0x20 and cp != 0x7F


def layout_table(names, layout, variant, model):
    km = xkb.Keymap(layout, variant, model)
    try:
        shift = km.mod_mask("Shift")
        lock = km.mod_mask("Lock")
        altgr_keys = [e for e in sorted(KEYS, key=lambda e: (e != KEY_RIGHTALT, e))
                      if e + 8 in km.keycodes and km.sym(e + 8) == ISO_LEVEL3_SHIFT]
        altgr_key = altgr_keys[0] if altgr_keys else None
        altgr = km.mods_of_key(altgr_key + 8) if altgr_key else 0
        numlock = 0
        if KEY_NUMLOCK + 8 in km.keycodes:
            # NumLock locks a modifier: press and release the key, read what is locked.
            state = xkb.lib.xkb_state_new(km.keymap)
            xkb.lib.xkb_state_update_key(state, KEY_NUMLOCK + 8, xkb.XKB_KEY_DOWN)
            xkb.lib.xkb_state_update_key(state, KEY_NUMLOCK + 8, xkb.XKB_KEY_UP)
            numlock = xkb.lib.xkb_state_serialize_mods(state, 4)  # XKB_STATE_MODS_LOCKED
            xkb.lib.xkb_state_unref(state)

        def need(kc, mods, sym, mask):
            if not mask or km.sym(kc, mods ^ mask) == sym:
                return ANY
            return ON if mods & mask else OFF

        rows = []          # (code, [(flag, sym)])
        direct = set()
        for e in sorted(KEYS):
            kc = e + 8
            if kc not in km.keycodes:
                continue
            base = km.sym(kc)
            levels = [(base, 0, False)]
            num = km.sym(kc, locked=numlock) if numlock else base
            if num != base:
                levels.append((num, 0, True))
            s = km.sym(kc, shift)
            if s not in (base, num):
                levels.append((s, shift, False))
            if altgr:
                a = km.sym(kc, altgr)
                if a != base:
                    levels.append((a, altgr, False))
                sa = km.sym(kc, shift | altgr)
                if sa not in (s, a):
                    levels.append((sa, shift | altgr, False))
            entries = []
            for sym, mods, numlocked in levels:
                if sym in (NOSYMBOL, VOIDSYMBOL):
                    continue
                flag = 0
                if not numlocked and is_character(sym):
                    sn = need(kc, mods, sym, shift)
                    an = need(kc, mods, sym, altgr)
                    caps = 0
                    if sn != ANY and km.sym(kc, mods, locked=lock) != sym \
                            and km.sym(kc, mods ^ shift, locked=lock) == sym:
                        caps = 1
                    flag = sn + 3 * an + 9 * caps
                entries.append((flag, sym))
                direct.add(sym)
            if entries:
                rows.append((e, entries))
        for sym, code in QUIRKS:
            if code in KEYS and code + 8 in km.keycodes:
                rows.append((code, [(0, sym)]))
                direct.add(sym)

        # Clients may send the Unicode keysym (0x01000000 + code point) or the
        # legacy one for the same character: list the other as well, unless
        # the layout has a key of its own for it. (Latin-1 needs none: those
        # keysyms are their code points, and Keymap.swift folds them.)
        out = []
        for code, entries in rows:
            line = []
            for flag, sym in entries:
                line.append((flag, sym))
                cp = xkb.utf32(sym)
                if cp >= 0x100 and is_character(sym):
                    for alias in (0x01000000 + cp, xkb.keysym_of_utf32(cp)):
                        if alias not in direct and alias != sym and alias not in (s for _, s in line):
                            line.append((flag, alias))
            out.append((code, line))
        return km.name, altgr_key, out
    finally:
        km.close()


def xkeyboard_config_version():
    """xkb-data's version, from the pkg-config file it ships."""
    try:
        with open("/usr/share/pkgconfig/xkeyboard-config.pc") as f:
            for line in f:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def swift_source():
    xkb_version = xkeyboard_config_version()
    lines = [
        "// Generated by scripts/keymaps/generate.py from xkeyboard-config "
        f"{xkb_version} through libxkbcommon. Do not edit: run the script.",
        "// Format: see the script. Each layout is its own string literal, parsed only",
        "// when asked for, so the others stay untouched pages of the binary.",
        "",
        "extension Keymap {",
        "    /// The generated layouts: QEMU's `-k` names, the xkb layout each comes",
        "    /// from, the AltGr key (nil: the layout has none) and the table.",
        "    struct Layout {",
        "        let xkb: String",
        "        let altGr: UInt32?",
        "        let table: StaticString",
        "    }",
        "",
        f"    static let xkeyboardConfigVersion = \"{xkb_version}\"",
        "",
        "    /// Every name `-k` accepts, sorted.",
        "    public static let names: [String] = [",
    ]
    all_names = sorted(n for names, *_ in LAYOUTS for n in names)
    for i in range(0, len(all_names), 12):
        lines.append("        " + " ".join(f'"{n}",' for n in all_names[i:i + 12]))
    lines += ["    ]", "", "    static func layout(named name: String) -> Layout? {", "        switch name {"]
    for names, layout, variant, model in LAYOUTS:
        title, altgr_key, rows = layout_table(names, layout, variant, model)
        spec = layout + (f"({variant})" if variant else "") + ("" if model == "pc105" else f", model {model}")
        cases = ", ".join(f'"{n}"' for n in names)
        lines.append(f"        case {cases}: // {title}")
        altgr = f"0x{altgr_key:x}" if altgr_key else "nil"
        lines.append(f'            return Layout(xkb: "{spec}", altGr: {altgr}, table: """')
        for code, entries in rows:
            lines.append(f"                {code:x} " + " ".join(f"{chr(ord('g') + f)}{s:x}" for f, s in entries))
        lines.append('                """)')
    lines += ["        default:", "            return nil", "        }", "    }", "}", ""]
    return "\n".join(lines)


def check_option_names(root):
    """The option parser (Control, which cannot see Displays) keeps its own
    list of -k names: it must be this one."""
    with open(os.path.join(root, "Sources/Control/DeviceModelOptions.swift")) as f:
        source = f.read()
    block = re.search(r"qemuKeymaps: Set<String> = \[(.*?)\]", source, re.S)
    listed = set(re.findall(r'"([^"]+)"', block.group(1))) if block else set()
    ours = {n for names, *_ in LAYOUTS for n in names}
    if listed != ours:
        sys.exit(f"generate.py: qemuKeymaps in DeviceModelOptions.swift differs: "
                 f"only there {sorted(listed - ours)}, only here {sorted(ours - listed)}")


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=os.path.join(root, "Sources/Displays/KeymapLayouts.swift"))
    args = parser.parse_args()
    check_option_names(root)
    text = swift_source()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
