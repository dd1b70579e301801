/*
 * fbperf: the drawing program of the real-Xen test's performance guest
 * (perf-guest-init starts it; built static by perf-job.sh).
 *
 * It maps /dev/fb0, paints a still picture, opens every /dev/input/event*
 * and says "E2E-GUEST perf-ready" on /dev/hvc0. Then, on key presses:
 *   F1  an 800x160 band moves down the screen 8 rows a frame, 30 frames a
 *       second for 15 s, drawn through the mapping (so xen-fbfront's
 *       fb_deferred_io sends the UPDATE events, as for any program drawing
 *       into a mapped framebuffer); then "E2E-GUEST animated FRAMES".
 *   A   rows 500-515 are repainted in a new colour with one pwrite() on
 *       /dev/fb0 (xen-fbfront's write() sends one UPDATE at once): the
 *       key-to-screen round trip a VNC viewer measures.
 * Usage: fbperf [SECONDS [FPS]]
 */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <glob.h>
#include <linux/fb.h>
#include <linux/input.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static FILE *console;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("E2E-GUEST ", console);
    vfprintf(console, fmt, ap);
    fputc('\n', console);
    fflush(console);
    va_end(ap);
}

static uint32_t pattern(int x, int y, int seed) {
    return (uint32_t)((x * 3 + seed * 41) & 0xff) << 16 | (uint32_t)((y * 5 + seed * 13) & 0xff) << 8
        | (uint32_t)((x + y + seed) & 0xff);
}

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 15, fps = argc > 2 ? atoi(argv[2]) : 30;
    console = fopen("/dev/hvc0", "w");
    if (!console) console = stdout;
    int fb = open("/dev/fb0", O_RDWR);
    struct fb_var_screeninfo var;
    struct fb_fix_screeninfo fix;
    if (fb < 0 || ioctl(fb, FBIOGET_VSCREENINFO, &var) < 0 || ioctl(fb, FBIOGET_FSCREENINFO, &fix) < 0
        || var.bits_per_pixel != 32) {
        say("perf-error no 32 bpp /dev/fb0 (%s)", strerror(errno));
        return 1;
    }
    int width = (int)var.xres, height = (int)var.yres, stride = (int)fix.line_length;
    uint8_t *pixels = mmap(NULL, (size_t)stride * height, PROT_READ | PROT_WRITE, MAP_SHARED, fb, 0);
    if (pixels == MAP_FAILED) {
        say("perf-error mmap /dev/fb0: %s", strerror(errno));
        return 1;
    }
    for (int y = 0; y < height; y++) {
        uint32_t *row = (uint32_t *)(pixels + (size_t)y * stride);
        for (int x = 0; x < width; x++) row[x] = pattern(x, y, 0);
    }

    struct pollfd fds[16];
    int n = 0;
    glob_t g;
    if (glob("/dev/input/event*", 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc && n < 16; i++) {
            int fd = open(g.gl_pathv[i], O_RDONLY);
            if (fd >= 0) fds[n++] = (struct pollfd){.fd = fd, .events = POLLIN};
        }
        globfree(&g);
    }
    say("perf-ready %dx%d stride %d inputs %d", width, height, stride, n);

    unsigned presses = 0;
    uint32_t *band = malloc((size_t)stride * 16);
    for (;;) {
        if (poll(fds, (nfds_t)n, -1) < 0 && errno != EINTR) break;
        for (int i = 0; i < n; i++) {
            if (!(fds[i].revents & POLLIN)) continue;
            struct input_event ev;
            if (read(fds[i].fd, &ev, sizeof ev) != sizeof ev) continue;
            if (ev.type != EV_KEY || ev.value != 1) continue;
            if (ev.code == KEY_A && band && height >= 516) {
                presses++;
                uint32_t colour = (presses * 0x3b5d7fu) & 0xffffff;
                for (int k = 0; k < stride / 4 * 16; k++) band[k] = colour;
                if (pwrite(fb, band, (size_t)stride * 16, (off_t)stride * 500) != (ssize_t)stride * 16)
                    say("perf-error pwrite: %s", strerror(errno));
            } else if (ev.code == KEY_F1 && height > 168) {
                struct timespec next;
                clock_gettime(CLOCK_MONOTONIC, &next);
                int frames = seconds * fps;
                for (int f = 0; f < frames; f++) {
                    int top = (f * 8) % (height - 160);
                    for (int y = top; y < top + 160; y++) {
                        uint32_t *row = (uint32_t *)(pixels + (size_t)y * stride);
                        for (int x = 0; x < width; x++) row[x] = pattern(x, y - top, f + 1);
                    }
                    if (top >= 8)
                        memset(pixels + (size_t)(top - 8) * stride, 0x10, (size_t)8 * stride);
                    next.tv_nsec += 1000000000L / fps;
                    if (next.tv_nsec >= 1000000000L) { next.tv_sec++; next.tv_nsec -= 1000000000L; }
                    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
                }
                say("animated %d", frames);
            }
        }
    }
    return 0;
}
