/*
 * kms-flip: what a KMS program does on the guest's /dev/dri/card0
 * (Linux drm/xen-front on a vdispl device), for the real-Xen test; built
 * static on the host (gcc -static), so the busybox initramfs needs nothing.
 *
 *   kms-flip CARD PATTERN_A PATTERN_B FLIPS KEYBOARD|SECONDS
 *
 * Two dumb buffers of the first connector's mode (XRGB8888, ADDFB bpp 32
 * depth 24) get PATTERN_A and PATTERN_B (raw little-endian XRGB files of
 * exactly width*height*4 bytes); buffer A is shown with SETCRTC. Then it
 * waits (at most 90 s) for KEY_A to be pressed on KEYBOARD (an evdev node),
 * or SECONDS when the guest has no keyboard (a number instead of a path),
 * and flips FLIPS times (odd: it ends on B) with DRM_MODE_PAGE_FLIP_EVENT,
 * each time waiting for the flip-complete event before the next. It keeps
 * the device open afterwards (closing it would take the framebuffers away).
 *
 * Progress goes to stdout as "E2E-GUEST kms-..." lines. The DRM UAPI
 * structures are declared here (include/uapi/drm/drm_mode.h, stable ABI):
 * Debian ships them only in libdrm-dev.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct drm_mode_modeinfo {
    uint32_t clock;
    uint16_t hdisplay, hsync_start, hsync_end, htotal, hskew;
    uint16_t vdisplay, vsync_start, vsync_end, vtotal, vscan;
    uint32_t vrefresh, flags, type;
    char name[32];
};
struct drm_mode_card_res {
    uint64_t fb_id_ptr, crtc_id_ptr, connector_id_ptr, encoder_id_ptr;
    uint32_t count_fbs, count_crtcs, count_connectors, count_encoders;
    uint32_t min_width, max_width, min_height, max_height;
};
struct drm_mode_crtc {
    uint64_t set_connectors_ptr;
    uint32_t count_connectors, crtc_id, fb_id, x, y, gamma_size, mode_valid;
    struct drm_mode_modeinfo mode;
};
struct drm_mode_get_connector {
    uint64_t encoders_ptr, modes_ptr, props_ptr, prop_values_ptr;
    uint32_t count_modes, count_props, count_encoders, encoder_id, connector_id;
    uint32_t connector_type, connector_type_id, connection, mm_width, mm_height, subpixel, pad;
};
struct drm_mode_fb_cmd { uint32_t fb_id, width, height, pitch, bpp, depth, handle; };
struct drm_mode_crtc_page_flip { uint32_t crtc_id, fb_id, flags, reserved; uint64_t user_data; };
struct drm_mode_create_dumb { uint32_t height, width, bpp, flags, handle, pitch; uint64_t size; };
struct drm_mode_map_dumb { uint32_t handle, pad; uint64_t offset; };
struct drm_event { uint32_t type, length; };
struct drm_event_vblank {
    struct drm_event base;
    uint64_t user_data;
    uint32_t tv_sec, tv_usec, sequence, crtc_id;
};
struct input_event_64 { uint64_t sec, usec; uint16_t type, code; int32_t value; };

#define DRM_IOWR(nr, type) _IOWR('d', nr, type)
#define DRM_IOCTL_MODE_GETRESOURCES DRM_IOWR(0xA0, struct drm_mode_card_res)
#define DRM_IOCTL_MODE_SETCRTC DRM_IOWR(0xA2, struct drm_mode_crtc)
#define DRM_IOCTL_MODE_GETCONNECTOR DRM_IOWR(0xA7, struct drm_mode_get_connector)
#define DRM_IOCTL_MODE_ADDFB DRM_IOWR(0xAE, struct drm_mode_fb_cmd)
#define DRM_IOCTL_MODE_PAGE_FLIP DRM_IOWR(0xB0, struct drm_mode_crtc_page_flip)
#define DRM_IOCTL_MODE_CREATE_DUMB DRM_IOWR(0xB2, struct drm_mode_create_dumb)
#define DRM_IOCTL_MODE_MAP_DUMB DRM_IOWR(0xB3, struct drm_mode_map_dumb)
#define DRM_MODE_PAGE_FLIP_EVENT 0x01
#define DRM_EVENT_FLIP_COMPLETE 0x02

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("E2E-GUEST ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
}

static int xioctl(int fd, unsigned long request, void *arg, const char *what) {
    int rc;
    do rc = ioctl(fd, request, arg); while (rc < 0 && errno == EINTR);
    if (rc < 0) say("kms-error %s errno=%d (%s)", what, errno, strerror(errno));
    return rc;
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

struct buffer { uint32_t handle, pitch, fb; uint64_t size; uint8_t *map; };

static int make_buffer(int fd, uint32_t w, uint32_t h, const char *pattern, struct buffer *b) {
    struct drm_mode_create_dumb c = { .height = h, .width = w, .bpp = 32 };
    if (xioctl(fd, DRM_IOCTL_MODE_CREATE_DUMB, &c, "CREATE_DUMB")) return -1;
    b->handle = c.handle; b->pitch = c.pitch; b->size = c.size;
    struct drm_mode_fb_cmd f = { .width = w, .height = h, .pitch = c.pitch, .bpp = 32, .depth = 24, .handle = c.handle };
    if (xioctl(fd, DRM_IOCTL_MODE_ADDFB, &f, "ADDFB")) return -1;
    b->fb = f.fb_id;
    struct drm_mode_map_dumb m = { .handle = c.handle };
    if (xioctl(fd, DRM_IOCTL_MODE_MAP_DUMB, &m, "MAP_DUMB")) return -1;
    b->map = mmap(NULL, c.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)m.offset);
    if (b->map == MAP_FAILED) { say("kms-error mmap errno=%d", errno); return -1; }
    int p = open(pattern, O_RDONLY);
    if (p < 0) { say("kms-error open %s", pattern); return -1; }
    for (uint32_t y = 0; y < h; y++) {
        size_t want = (size_t)w * 4, got = 0;
        while (got < want) {
            ssize_t n = read(p, b->map + (size_t)y * c.pitch + got, want - got);
            if (n <= 0) { say("kms-error short pattern %s at row %u", pattern, y); close(p); return -1; }
            got += (size_t)n;
        }
    }
    close(p);
    return 0;
}

/* Waits up to timeout_ms for a press of KEY_A (30) on the evdev node. */
static int wait_key(const char *path, int timeout_ms) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { say("kms-error open %s errno=%d", path, errno); return -1; }
    double end = now_us() + timeout_ms * 1000.0;
    for (;;) {
        int left = (int)((end - now_us()) / 1000);
        if (left <= 0) { close(fd); return -1; }
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        if (poll(&pfd, 1, left) <= 0) continue;
        struct input_event_64 ev;
        ssize_t n = read(fd, &ev, sizeof ev);
        if (n == 0) { close(fd); return -1; }  /* not an event device */
        if (n != (ssize_t)sizeof ev) continue;
        if (ev.type == 1 && ev.code == 30 && ev.value == 1) { close(fd); return 0; }
    }
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: kms-flip CARD PATTERN_A PATTERN_B FLIPS KEYBOARD|SECONDS\n"); return 2; }
    int flips = atoi(argv[4]);
    int fd = open(argv[1], O_RDWR | O_CLOEXEC);
    if (fd < 0) { say("kms-error open %s errno=%d", argv[1], errno); return 1; }

    uint32_t crtcs[8], connectors[8];
    struct drm_mode_card_res res = {0};
    if (xioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res, "GETRESOURCES")) return 1;
    if (res.count_crtcs == 0 || res.count_connectors == 0 || res.count_crtcs > 8 || res.count_connectors > 8) {
        say("kms-error resources crtcs=%u connectors=%u", res.count_crtcs, res.count_connectors);
        return 1;
    }
    res.crtc_id_ptr = (uintptr_t)crtcs;
    res.connector_id_ptr = (uintptr_t)connectors;
    res.count_fbs = res.count_encoders = 0;
    if (xioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res, "GETRESOURCES")) return 1;

    struct drm_mode_modeinfo modes[16];
    struct drm_mode_get_connector conn = { .connector_id = connectors[0] };
    if (xioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &conn, "GETCONNECTOR")) return 1;
    if (conn.count_modes == 0 || conn.count_modes > 16) { say("kms-error modes=%u connection=%u", conn.count_modes, conn.connection); return 1; }
    uint32_t nmodes = conn.count_modes;
    memset(&conn, 0, sizeof conn);
    conn.connector_id = connectors[0];
    conn.count_modes = nmodes;
    conn.modes_ptr = (uintptr_t)modes;
    if (xioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &conn, "GETCONNECTOR")) return 1;
    struct drm_mode_modeinfo mode = modes[0];
    uint32_t w = mode.hdisplay, h = mode.vdisplay;
    say("kms-mode %ux%u connectors=%u crtcs=%u", w, h, res.count_connectors, res.count_crtcs);

    struct buffer b[2];
    if (make_buffer(fd, w, h, argv[2], &b[0]) || make_buffer(fd, w, h, argv[3], &b[1])) return 1;
    struct drm_mode_crtc set = { .set_connectors_ptr = (uintptr_t)&connectors[0], .count_connectors = 1,
                                 .crtc_id = crtcs[0], .fb_id = b[0].fb, .mode_valid = 1, .mode = mode };
    if (xioctl(fd, DRM_IOCTL_MODE_SETCRTC, &set, "SETCRTC")) return 1;
    say("kms-shown-a pitch=%u", b[0].pitch);

    if (argv[5][0] >= '0' && argv[5][0] <= '9') sleep((unsigned)atoi(argv[5]));
    else if (wait_key(argv[5], 90000)) say("kms-no-key");
    double total = 0, worst = 0;
    int done = 0;
    for (int i = 0; i < flips; i++) {
        struct buffer *next = &b[(i + 1) % 2];
        struct drm_mode_crtc_page_flip f = { .crtc_id = crtcs[0], .fb_id = next->fb, .flags = DRM_MODE_PAGE_FLIP_EVENT,
                                             .user_data = (uint64_t)i };
        double t0 = now_us();
        if (xioctl(fd, DRM_IOCTL_MODE_PAGE_FLIP, &f, "PAGE_FLIP")) break;
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        if (poll(&pfd, 1, 10000) != 1) { say("kms-error flip %d: no event in 10 s", i); break; }
        char buf[1024];
        ssize_t n = read(fd, buf, sizeof buf);
        struct drm_event_vblank *ev = (struct drm_event_vblank *)buf;
        if (n < (ssize_t)sizeof *ev || ev->base.type != DRM_EVENT_FLIP_COMPLETE || ev->user_data != (uint64_t)i) {
            say("kms-error flip %d: unexpected event (%zd bytes, type %u)", i, n, n >= 8 ? ev->base.type : 0);
            break;
        }
        double dt = now_us() - t0;
        total += dt;
        if (dt > worst) worst = dt;
        done++;
    }
    say("kms-flips done=%d of=%d avg_us=%.0f max_us=%.0f", done, flips, done ? total / done : 0, worst);
    for (;;) pause();
}
