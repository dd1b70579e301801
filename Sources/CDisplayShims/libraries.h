#pragma once
// Every library xenvfb loads with dlopen, one row each; nothing else names them.
//
// - The loaders (sdl.c) open a row with xenvfb_dlopen, whose error says
//   what needed the library (naming the option) and which Debian package to
//   install.
// - XENVFB_DLOPEN_NOTE puts the row into the binary's .note.dlopen, the ELF
//   dlopen metadata of https://systemd.io/ELF_DLOPEN_METADATA/ (the format
//   systemd and dh-dlopenlibdeps use). debian/dlopen-deps reads it from the
//   built binary and turns it into the package's Depends/Recommends/Suggests
//   with dpkg-shlibdeps, which also checks that the row's package is the one
//   that ships the soname.
//
// priority: "required" for what an ordinary xl configuration uses (Depends),
// "recommended" for an optional feature most users want (Recommends),
// "suggested" for the rest (Suggests).
//
//      soname               Debian package    feature  priority       what needs it (name the option)
#define XENVFB_LIBRARY_SDL \
        "libSDL2-2.0.so.0", "libsdl2-2.0-0", "sdl", "recommended", \
        "the SDL window (-display sdl, --sdl; xl: sdl=1)"
// GnuTLS: recommended, not required (libxl never asks for TLS); every Debian
// system has it already (apt depends on it), so recommending it costs nothing.
#define XENVFB_LIBRARY_GNUTLS \
        "libgnutls.so.30", "libgnutls30", "tls", "recommended", \
        "VNC over TLS (-vnc ...,tls-creds=ID with -object tls-creds-x509)"

#include <stdint.h>

// XENVFB_DLOPEN_NOTE(XENVFB_LIBRARY_x, SYMBOLS): one ELF note for the row,
// where SYMBOLS(X) lists, as X(type, name, params, args), the symbols the
// loader looks up in it (so dpkg-shlibdeps can compute the minimal version).
// Besides the specification's keys, the note carries "debian-package" and
// "symbols" (a space-separated list).
#define XENVFB_DLOPEN_NOTE(row, symbols) XENVFB_DLOPEN_NOTE_(row, symbols)
#define XENVFB_DLOPEN_SYMBOL_NAME_(type, name, params, args) " " #name
#define XENVFB_DLOPEN_NOTE_(soname, package, feature, priority, needed_by, symbols)                           \
    XENVFB_DLOPEN_NOTE_JSON_("[{\"soname\":[\"" soname "\"],\"feature\":\"" feature "\",\"description\":\""  \
                             needed_by "\",\"priority\":\"" priority "\",\"debian-package\":\"" package       \
                             "\",\"symbols\":\"" symbols(XENVFB_DLOPEN_SYMBOL_NAME_) "\"}]")
// The ELF note layout (<elf.h> Elf64_Nhdr, then the owner and the
// description, each padded to 4 bytes). Not instrumented by AddressSanitizer,
// whose red zones would break the layout.
#define XENVFB_DLOPEN_NOTE_JSON_(json)                                                                      \
    __attribute__((section(".note.dlopen"), used, aligned(4), no_sanitize("address")))                     \
    static const struct {                                                                                  \
        uint32_t namesz, descsz, type;                                                                     \
        char name[4];                                                                                      \
        char desc[(sizeof(json) + 3) / 4 * 4];                                                             \
    } xenvfb_dlopen_note = {4, sizeof(json), 0x407c0c0a, "FDO", json}
