#include "displayshims.h"
#include "vnc.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <rfb/rfbregion.h>
#include <linux/sockios.h>

static void (*log_sink)(int, const char *);

static void forward(int is_error, const char *format, va_list args) {
    char line[512];
    vsnprintf(line, sizeof line, format, args);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    if (log_sink && n > 0) log_sink(is_error, line);
}

static void log_info(const char *format, ...) {
    va_list args;
    va_start(args, format);
    forward(0, format, args);
    va_end(args);
}

static void log_error(const char *format, ...) {
    va_list args;
    va_start(args, format);
    forward(1, format, args);
    va_end(args);
}

void xenvfb_vnc_set_log_sink(void (*sink)(int, const char *)) {
    log_sink = sink;
    *xenvfb_vnc_log = log_info;
    *xenvfb_vnc_err = log_error;
}

void xenvfb_vnc_set_max_client_wait(int milliseconds) {
    *xenvfb_vnc_max_client_wait = milliseconds;
}

int xenvfb_socket_unsent_bytes(int fd) {
    int n = 0;
    if (ioctl(fd, SIOCOUTQ, &n) != 0) return -1;
    return n;
}

int xenvfb_vnc_update_owed(rfbClientPtr cl) {
    return FB_UPDATE_PENDING(cl) && !sraRgnEmpty(cl->requestedRegion);
}
