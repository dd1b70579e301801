// libvncserver, loaded only when a VNC server is asked for.
//
// Linked, libvncserver and what it needs (GnuTLS, p11-kit, nettle, gcrypt,
// libjpeg, lzo...) cost a device model ~2.5 MB of RSS even with -vnc none.
// As for SDL (sdl.c), this file defines the libvncserver functions the
// displays call as forwarders to pointers xenvfb_vnc_load fills from dlopen
// of libvncserver (the row XENVFB_LIBRARY_VNC of libraries.h); CVNCServer's
// module map no longer links it.
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include "displayshims.h"
#include "libraries.h"
#include "vnc.h"

// Every libvncserver function xenvfb calls: X(return type, name, (parameters), (arguments)).
#define XENVFB_VNC_FUNCTIONS(X) \
    X(int, rfbCheckFds, (rfbScreenInfoPtr s, long usec), (s, usec)) \
    X(void, rfbClientConnectionGone, (rfbClientPtr cl), (cl)) \
    X(void, rfbCloseClient, (rfbClientPtr cl), (cl)) \
    X(void, rfbEncryptBytes, (unsigned char *bytes, char *passwd), (bytes, passwd)) \
    X(rfbScreenInfoPtr, rfbGetScreen, (int *argc, char **argv, int w, int h, int bps, int spp, int bpp), \
      (argc, argv, w, h, bps, spp, bpp)) \
    X(void, rfbInitServerWithPthreadsAndZRLE, (rfbScreenInfoPtr s), (s)) \
    X(void, rfbMarkRectAsModified, (rfbScreenInfoPtr s, int x1, int y1, int x2, int y2), (s, x1, y1, x2, y2)) \
    X(rfbClientPtr, rfbNewClient, (rfbScreenInfoPtr s, rfbSocket sock), (s, sock)) \
    X(void, rfbNewFramebuffer, (rfbScreenInfoPtr s, char *fb, int w, int h, int bps, int spp, int bpp), \
      (s, fb, w, h, bps, spp, bpp)) \
    X(rfbBool, rfbProcessEvents, (rfbScreenInfoPtr s, long usec), (s, usec)) \
    X(int, rfbReadExact, (rfbClientPtr cl, char *buf, int len), (cl, buf, len)) \
    X(void, rfbRegisterProtocolExtension, (rfbProtocolExtension *e), (e)) \
    X(void, rfbScreenCleanup, (rfbScreenInfoPtr s), (s)) \
    X(rfbBool, rfbSetTranslateFunction, (rfbClientPtr cl), (cl)) \
    X(rfbBool, rfbUpdateClient, (rfbClientPtr cl), (cl)) \
    X(int, rfbWriteExact, (rfbClientPtr cl, const char *buf, int len), (cl, buf, len)) \
    X(rfbBool, sraRgnEmpty, (const sraRegion *r), (r))

// What xenvfb_vnc_load looks up: the functions and three globals.
#define XENVFB_VNC_SYMBOLS(X) XENVFB_VNC_FUNCTIONS(X) X(, rfbLog, , ) X(, rfbErr, , ) X(, rfbMaxClientWait, , )
XENVFB_DLOPEN_NOTE(XENVFB_LIBRARY_VNC, XENVFB_VNC_SYMBOLS);
static const struct xenvfb_library vnc_library = {XENVFB_LIBRARY_VNC};

#define POINTER(type, name, params, args) static type (*loaded_##name) params;
XENVFB_VNC_FUNCTIONS(POINTER)

// Forwarders: only called after xenvfb_vnc_load succeeded (VNCDisplay loads first).
#define FORWARDER(type, name, params, args) type name params { return loaded_##name args; }
XENVFB_VNC_FUNCTIONS(FORWARDER)

// libvncserver's globals that displayshims.c sets.
rfbLogProc *xenvfb_vnc_log, *xenvfb_vnc_err;
int *xenvfb_vnc_max_client_wait;

int xenvfb_vnc_load(char *error, size_t size) {
    static void *library;
    if (library) return 0;
    // Debian's libvncserver links GnuTLS, whose constructor initialises
    // itself at load (~0.7 MB of RSS) unless told not to. xenvfb offers no
    // TLS; libvncserver calls gnutls_global_init itself if it ever needs it.
    setenv("GNUTLS_NO_IMPLICIT_INIT", "1", 0);
    void *handle = xenvfb_dlopen(&vnc_library, error, size);
    if (!handle) return -1;
#define RESOLVE(type, name, params, args) \
    if (!(loaded_##name = (type (*) params)dlsym(handle, #name))) { \
        xenvfb_dlopen_lacks(&vnc_library, handle, #name, error, size); \
        return -1; \
    }
    XENVFB_VNC_FUNCTIONS(RESOLVE)
#define RESOLVE_GLOBAL(variable, name) \
    if (!(variable = dlsym(handle, #name))) { \
        xenvfb_dlopen_lacks(&vnc_library, handle, #name, error, size); \
        return -1; \
    }
    RESOLVE_GLOBAL(xenvfb_vnc_log, rfbLog)
    RESOLVE_GLOBAL(xenvfb_vnc_err, rfbErr)
    RESOLVE_GLOBAL(xenvfb_vnc_max_client_wait, rfbMaxClientWait)
    library = handle;
    return 0;
}
