#pragma once
// C helpers for the displays: libSDL2 loaded with dlopen (sdl.c).
#include <stddef.h>

/// Loads libSDL2 (dlopen) for the SDL_* functions the displays call; until
/// then calling one crashes. Returns 0, or -1 with the reason in `error`.
/// Idempotent; call it from one thread (the loop's) before any SDL_* call.
int xenvfb_sdl_load(char *error, size_t size);
