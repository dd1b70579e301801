#pragma once
// C helpers for the displays: libraries loaded with dlopen (libraries.h):
// libSDL2 for the SDL window (sdl.c), GnuTLS for VNC over TLS (tls.c,
// xenvfb_tls.h).
#include <stddef.h>

/// A library xenvfb loads with dlopen: one row of the table in libraries.h.
struct xenvfb_library {
    const char *soname;    ///< as dlopen takes it: "libSDL2-2.0.so.0"
    const char *package;   ///< the Debian package that ships it: "libsdl2-2.0-0"
    const char *feature;   ///< a short name: "sdl"
    const char *priority;  ///< "required", "recommended" or "suggested"
    const char *needed_by; ///< what needs it, naming the option: "the SDL window (-display sdl, ...)"
};

/// dlopens `library` (RTLD_NOW | RTLD_LOCAL). Returns the handle, or NULL
/// with a message in `error` that says what needed the library, the Debian
/// package to install and why dlopen failed.
void *xenvfb_dlopen(const struct xenvfb_library *library, char *error, size_t size);

/// For a loader that found `library` but not `symbol` in it (too old a
/// version): closes `handle` and writes a message saying so into `error`.
void xenvfb_dlopen_lacks(const struct xenvfb_library *library, void *handle, const char *symbol,
                         char *error, size_t size);

/// Loads libSDL2 (dlopen) for the SDL_* functions the displays call; until
/// then calling one crashes. Returns 0, or -1 with the reason in `error`.
/// Idempotent; call it from one thread (the loop's) before any SDL_* call.
int xenvfb_sdl_load(char *error, size_t size);
