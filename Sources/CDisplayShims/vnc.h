#pragma once
// Inside CDisplayShims: libvncserver's globals, found by xenvfb_vnc_load (vnc.c).
#include <rfb/rfb.h>
#include <rfb/rfbregion.h>

extern rfbLogProc *xenvfb_vnc_log, *xenvfb_vnc_err;
extern int *xenvfb_vnc_max_client_wait;
