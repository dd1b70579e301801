"""The few libxkbcommon calls the keymap generator needs, through ctypes, so
that generating needs only Debian's libxkbcommon0 and xkb-data (no compiler,
no Python package). Used by scripts/keymaps/generate.py only: the device
model never links libxkbcommon.
"""
import ctypes
import ctypes.util

XKB_KEY_UP, XKB_KEY_DOWN = 0, 1
XKB_STATE_MODS_DEPRESSED = 1
XKB_MOD_INVALID = 0xFFFFFFFF


class RuleNames(ctypes.Structure):
    _fields_ = [(f, ctypes.c_char_p) for f in ("rules", "model", "layout", "variant", "options")]


def _library():
    name = ctypes.util.find_library("xkbcommon") or "libxkbcommon.so.0"
    lib = ctypes.CDLL(name)
    p, u32, i = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    for fn, res, args in (
        ("xkb_context_new", p, [i]),
        ("xkb_context_unref", None, [p]),
        ("xkb_keymap_new_from_names", p, [p, ctypes.POINTER(RuleNames), i]),
        ("xkb_keymap_unref", None, [p]),
        ("xkb_keymap_min_keycode", u32, [p]),
        ("xkb_keymap_max_keycode", u32, [p]),
        ("xkb_keymap_mod_get_index", u32, [p, ctypes.c_char_p]),
        ("xkb_keymap_layout_get_name", ctypes.c_char_p, [p, u32]),
        ("xkb_state_new", p, [p]),
        ("xkb_state_unref", None, [p]),
        ("xkb_state_update_key", i, [p, u32, i]),
        ("xkb_state_update_mask", i, [p, u32, u32, u32, u32, u32, u32]),
        ("xkb_state_serialize_mods", u32, [p, i]),
        ("xkb_state_key_get_one_sym", u32, [p, u32]),
        ("xkb_keysym_to_utf32", u32, [u32]),
        ("xkb_utf32_to_keysym", u32, [u32]),
        ("xkb_keysym_get_name", i, [u32, ctypes.c_char_p, ctypes.c_size_t]),
    ):
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


lib = _library()


def keysym_name(sym):
    buf = ctypes.create_string_buffer(64)
    lib.xkb_keysym_get_name(sym, buf, len(buf))
    return buf.value.decode()


class Keymap:
    """One compiled xkb keymap (rules evdev) and a state to query it with."""

    def __init__(self, layout, variant=None, model="pc105"):
        self.ctx = lib.xkb_context_new(0)
        names = RuleNames(None, model.encode(), layout.encode(), variant.encode() if variant else None, None)
        self.keymap = lib.xkb_keymap_new_from_names(self.ctx, ctypes.byref(names), 0)
        if not self.keymap:
            raise ValueError(f"libxkbcommon cannot compile layout {layout} variant {variant} model {model}")
        self.state = lib.xkb_state_new(self.keymap)
        self.name = lib.xkb_keymap_layout_get_name(self.keymap, 0).decode()
        self.keycodes = range(lib.xkb_keymap_min_keycode(self.keymap), lib.xkb_keymap_max_keycode(self.keymap) + 1)

    def close(self):
        lib.xkb_state_unref(self.state)
        lib.xkb_keymap_unref(self.keymap)
        lib.xkb_context_unref(self.ctx)

    def mod_mask(self, name):
        index = lib.xkb_keymap_mod_get_index(self.keymap, name.encode())
        return 0 if index == XKB_MOD_INVALID else 1 << index

    def sym(self, keycode, depressed=0, locked=0):
        """The keysym of xkb keycode `keycode` with these real/virtual modifier masks."""
        lib.xkb_state_update_mask(self.state, depressed, 0, locked, 0, 0, 0)
        return lib.xkb_state_key_get_one_sym(self.state, keycode)

    def mods_of_key(self, keycode):
        """The modifiers a key sets while it is held (as a real keyboard's press)."""
        state = lib.xkb_state_new(self.keymap)
        lib.xkb_state_update_key(state, keycode, XKB_KEY_DOWN)
        mods = lib.xkb_state_serialize_mods(state, XKB_STATE_MODS_DEPRESSED)
        lib.xkb_state_unref(state)
        return mods


def utf32(sym):
    return lib.xkb_keysym_to_utf32(sym)


def keysym_of_utf32(cp):
    return lib.xkb_utf32_to_keysym(cp)
