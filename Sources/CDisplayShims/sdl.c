// libSDL2, loaded only when an SDL window is asked for.
//
// Linking libSDL2 maps it and the ~45 libraries it needs (X11, Wayland,
// PulseAudio, ALSA, codecs...) into every device model, ~3.5 MB of RSS that
// a headless or VNC-only device model never uses. Instead this file defines
// the SDL functions the displays call as forwarders to pointers that
// xenvfb_sdl_load fills from dlopen of libSDL2 (the row XENVFB_LIBRARY_SDL of
// libraries.h). Swift calls SDL_* as declared in <SDL2/SDL.h>; CSDL2's module
// map no longer links SDL2.
#include <dlfcn.h>
#include <stdio.h>
#include <SDL2/SDL.h>
#include "displayshims.h"
#include "libraries.h"

// Every SDL function xenvfb calls: X(return type, name, (parameters), (arguments)).
#define XENVFB_SDL_FUNCTIONS(X) \
    X(SDL_Renderer *, SDL_CreateRenderer, (SDL_Window *w, int i, Uint32 f), (w, i, f)) \
    X(SDL_Texture *, SDL_CreateTexture, (SDL_Renderer *r, Uint32 f, int a, int w, int h), (r, f, a, w, h)) \
    X(SDL_Window *, SDL_CreateWindow, (const char *t, int x, int y, int w, int h, Uint32 f), (t, x, y, w, h, f)) \
    X(void, SDL_DestroyRenderer, (SDL_Renderer *r), (r)) \
    X(void, SDL_DestroyTexture, (SDL_Texture *t), (t)) \
    X(void, SDL_DestroyWindow, (SDL_Window *w), (w)) \
    X(const char *, SDL_GetCurrentVideoDriver, (void), ()) \
    X(const char *, SDL_GetError, (void), ()) \
    X(int, SDL_GetRendererOutputSize, (SDL_Renderer *r, int *w, int *h), (r, w, h)) \
    X(const char *, SDL_GetWindowTitle, (SDL_Window *w), (w)) \
    X(int, SDL_InitSubSystem, (Uint32 f), (f)) \
    X(int, SDL_PollEvent, (SDL_Event *e), (e)) \
    X(int, SDL_PushEvent, (SDL_Event *e), (e)) \
    X(Uint32, SDL_RegisterEvents, (int n), (n)) \
    X(void, SDL_QuitSubSystem, (Uint32 f), (f)) \
    X(int, SDL_RenderClear, (SDL_Renderer *r), (r)) \
    X(int, SDL_RenderCopy, (SDL_Renderer *r, SDL_Texture *t, const SDL_Rect *s, const SDL_Rect *d), (r, t, s, d)) \
    X(void, SDL_RenderPresent, (SDL_Renderer *r), (r)) \
    X(int, SDL_RenderReadPixels, (SDL_Renderer *r, const SDL_Rect *rect, Uint32 f, void *p, int pitch), (r, rect, f, p, pitch)) \
    X(int, SDL_RenderSetLogicalSize, (SDL_Renderer *r, int w, int h), (r, w, h)) \
    X(SDL_bool, SDL_SetHint, (const char *n, const char *v), (n, v)) \
    X(int, SDL_SetRenderDrawColor, (SDL_Renderer *r, Uint8 cr, Uint8 cg, Uint8 cb, Uint8 ca), (r, cr, cg, cb, ca)) \
    X(int, SDL_SetWindowFullscreen, (SDL_Window *w, Uint32 f), (w, f)) \
    X(void, SDL_SetWindowGrab, (SDL_Window *w, SDL_bool g), (w, g)) \
    X(void, SDL_SetWindowKeyboardGrab, (SDL_Window *w, SDL_bool g), (w, g)) \
    X(void, SDL_SetWindowSize, (SDL_Window *w, int cw, int ch), (w, cw, ch)) \
    X(void, SDL_SetWindowTitle, (SDL_Window *w, const char *t), (w, t)) \
    X(int, SDL_UpdateTexture, (SDL_Texture *t, const SDL_Rect *r, const void *p, int pitch), (t, r, p, pitch)) \
    X(int, SDL_WaitEvent, (SDL_Event *e), (e))

XENVFB_DLOPEN_NOTE(XENVFB_LIBRARY_SDL, XENVFB_SDL_FUNCTIONS);
static const struct xenvfb_library sdl_library = {XENVFB_LIBRARY_SDL};

#define POINTER(type, name, params, args) static type (*loaded_##name) params;
XENVFB_SDL_FUNCTIONS(POINTER)

// Forwarders: only called after xenvfb_sdl_load succeeded (SDLDisplay loads first).
#define FORWARDER(type, name, params, args) type name params { return loaded_##name args; }
XENVFB_SDL_FUNCTIONS(FORWARDER)

int xenvfb_sdl_load(char *error, size_t size) {
    static void *library;
    if (library) return 0;
    void *handle = xenvfb_dlopen(&sdl_library, error, size);
    if (!handle) return -1;
#define RESOLVE(type, name, params, args) \
    if (!(loaded_##name = (type (*) params)dlsym(handle, #name))) { \
        xenvfb_dlopen_lacks(&sdl_library, handle, #name, error, size); \
        return -1; \
    }
    XENVFB_SDL_FUNCTIONS(RESOLVE)
    library = handle;
    return 0;
}
