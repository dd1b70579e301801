#pragma once
// C helpers for the displays: what Swift cannot do with libvncserver
// (its log hooks are variadic function pointers) and ioctl (variadic).
#include <stddef.h>
#include <rfb/rfb.h>

/// A library xenvfb loads with dlopen: one row of the table in libraries.h.
struct xenvfb_library {
    const char *soname;    ///< as dlopen takes it: "libvncserver.so.1"
    const char *package;   ///< the Debian package that ships it: "libvncserver1"
    const char *feature;   ///< a short name: "vnc"
    const char *priority;  ///< "required", "recommended" or "suggested"
    const char *needed_by; ///< what needs it, naming the option: "the VNC server (-vnc, ...)"
};

/// dlopens `library` (RTLD_NOW | RTLD_LOCAL). Returns the handle, or NULL
/// with a message in `error` that says what needed the library, the Debian
/// package to install and why dlopen failed.
void *xenvfb_dlopen(const struct xenvfb_library *library, char *error, size_t size);

/// For a loader that found `library` but not `symbol` in it (too old a
/// version): closes `handle` and writes a message saying so into `error`.
void xenvfb_dlopen_lacks(const struct xenvfb_library *library, void *handle, const char *symbol,
                         char *error, size_t size);

/// Loads libvncserver (dlopen) for the rfb* functions the displays call and
/// the set-up below; until then calling one crashes. Returns 0, or -1 with
/// the reason in `error`. Idempotent; call it from the loop's thread.
int xenvfb_vnc_load(char *error, size_t size);

/// Routes libvncserver's rfbLog/rfbErr lines to `sink` (one call per line,
/// without the trailing newline). `is_error` is 1 for rfbErr. After xenvfb_vnc_load.
void xenvfb_vnc_set_log_sink(void (*sink)(int is_error, const char *line));

/// Sets how long libvncserver waits for a stalled client in a blocking read or
/// write before dropping it (its global rfbMaxClientWait, milliseconds).
void xenvfb_vnc_set_max_client_wait(int milliseconds);

/// Bytes written to a socket that the peer has not yet received/acknowledged
/// (SIOCOUTQ), or -1.
int xenvfb_socket_unsent_bytes(int fd);

/// Whether libvncserver owes `cl` an update: it asked for one and something
/// changed (FB_UPDATE_PENDING and a non-empty requested region).
int xenvfb_vnc_update_owed(rfbClientPtr cl);

/// Loads libSDL2 (dlopen) for the SDL_* functions the displays call; until
/// then calling one crashes. Returns 0, or -1 with the reason in `error`.
/// Idempotent; call it from one thread (the loop's) before any SDL_* call.
int xenvfb_sdl_load(char *error, size_t size);
