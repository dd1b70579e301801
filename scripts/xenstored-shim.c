/*
 * LD_PRELOAD shim that lets Debian's C xenstored 4.17 serve its Unix socket
 * on a machine without Xen, so XenStoreTests can compare the embedded
 * xenstored with the real one (the same requests, the same replies).
 *
 * It stands in for the hypervisor: xc_* reports domain 0 (and the domains
 * listed in XS_SHIM_DOMAINS, e.g. "5,6"), /proc/xen/xsd_port and
 * /proc/xen/xsd_kva (dom0's ring) are memfds. A guest's ring page (the
 * grant xenstored maps at INTRODUCE) is the file XS_SHIM_RING_DIR/ring-<domid>,
 * shared with the test, which plays the guest; all event channels are one
 * fd, the FIFO XS_SHIM_KICK (a byte written there is an event for the last
 * bound guest port) or, without it, an idle eventfd.
 * Built by scripts/test-tools.sh into .build-tools/xenstored-shim.so.
 */
#define _GNU_SOURCE
#define __XEN_TOOLS__ 1
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

static int dummy_handle;
static int evtchn_fd = -1;
static int last_guest_port = -1;

static int real_open_file(const char *path, int flags, mode_t mode);

/* Whether domid is listed in XS_SHIM_DOMAINS (domain 0 always exists). */
static int domain_listed(unsigned long domid)
{
    const char *list = getenv("XS_SHIM_DOMAINS");
    if (domid == 0) return 1;
    while (list && *list) {
        char *end;
        unsigned long d = strtoul(list, &end, 10);
        if (end == list) break;
        if (d == domid) return 1;
        list = *end ? end + 1 : end;
    }
    return 0;
}

xc_interface *xc_interface_open(xentoollog_logger *l, xentoollog_logger *d, unsigned f)
{ (void)l; (void)d; (void)f; return (xc_interface *)&dummy_handle; }
int xc_interface_close(xc_interface *xch) { (void)xch; return 0; }

int xc_domain_getinfo(xc_interface *xch, uint32_t first, unsigned int max, xc_dominfo_t *info)
{
    (void)xch;
    if (max == 0) return 0;
    for (uint32_t d = first; d < 0x7ff0; d++) {
        if (!domain_listed(d)) continue;
        memset(info, 0, sizeof(*info));
        info->domid = d;
        info->running = 1;
        return 1;
    }
    return 0;
}

xenevtchn_handle *xenevtchn_open(xentoollog_logger *l, unsigned f)
{
    (void)l; (void)f;
    if (evtchn_fd < 0) {
        const char *kick = getenv("XS_SHIM_KICK");
        evtchn_fd = kick ? real_open_file(kick, O_RDWR | O_NONBLOCK | O_CLOEXEC, 0)
                         : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    }
    return (xenevtchn_handle *)&dummy_handle;
}
xenevtchn_handle *xenevtchn_fdopen(xentoollog_logger *l, int fd, unsigned f)
{ (void)fd; return xenevtchn_open(l, f); }
int xenevtchn_fd(xenevtchn_handle *x) { (void)x; return evtchn_fd; }
xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *x, unsigned int v) { (void)x; (void)v; return 1; }
xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *x, uint32_t d, evtchn_port_t p)
{ (void)x; (void)p; last_guest_port = 100 + (int)d; return last_guest_port; }
int xenevtchn_notify(xenevtchn_handle *x, evtchn_port_t p) { (void)x; (void)p; return 0; }
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *x)
{
    char buf[64];
    (void)x;
    while (read(evtchn_fd, buf, sizeof(buf)) > 0) {}
    return last_guest_port >= 0 ? last_guest_port : 1;
}
int xenevtchn_unmask(xenevtchn_handle *x, evtchn_port_t p) { (void)x; (void)p; return 0; }
int xenevtchn_unbind(xenevtchn_handle *x, evtchn_port_t p) { (void)x; (void)p; return 0; }

xengnttab_handle *xengnttab_open(xentoollog_logger *l, unsigned f)
{ (void)l; (void)f; return (xengnttab_handle *)&dummy_handle; }
int xengnttab_close(xengnttab_handle *x) { (void)x; return 0; }
int xengnttab_set_max_grants(xengnttab_handle *x, uint32_t n) { (void)x; (void)n; return 0; }
void *xengnttab_map_grant_ref(xengnttab_handle *x, uint32_t d, uint32_t r, int p)
{
    const char *dir = getenv("XS_SHIM_RING_DIR");
    void *m;
    (void)x; (void)r; (void)p;
    if (dir) {
        char path[4096];
        int fd;
        snprintf(path, sizeof(path), "%s/ring-%u", dir, d);
        fd = real_open_file(path, O_RDWR | O_CLOEXEC, 0);
        if (fd < 0) return NULL;
        m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
    } else {
        m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    return m == MAP_FAILED ? NULL : m;
}
int xengnttab_unmap(xengnttab_handle *x, void *a, uint32_t c) { (void)x; return munmap(a, c * 4096); }

static int memfd_with(const char *name, const char *content, size_t size)
{
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0) { close(fd); return -1; }
    if (content && pwrite(fd, content, strlen(content), 0) < 0) { close(fd); return -1; }
    return fd;
}

static int real_open_file(const char *path, int flags, mode_t mode)
{
    static int (*real_open)(const char *, int, ...);
    if (!real_open) real_open = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    return real_open(path, flags, mode);
}

int open(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    if (strcmp(path, "/proc/xen/xsd_port") == 0) return memfd_with("xsd_port", "1\n", 2);
    if (strcmp(path, "/proc/xen/xsd_kva") == 0) return memfd_with("xsd_kva", NULL, 4096);
    return real_open_file(path, flags, mode);
}
