#define _GNU_SOURCE
#include "writefault.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>

// MARK: Kernel ABI that Debian 12's linux-libc-dev (6.1) lacks.
// From include/uapi/linux/userfaultfd.h and include/uapi/linux/fs.h (6.7+).

#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC 0xAA
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif

#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)

struct page_region {
    __u64 start;
    __u64 end;
    __u64 categories;
};

#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)

struct pm_scan_arg {
    __u64 size;
    __u64 flags;
    __u64 start;
    __u64 end;
    __u64 walk_end;
    __u64 vec;
    __u64 vec_len;
    __u64 max_pages;
    __u64 category_inverted;
    __u64 category_mask;
    __u64 category_anyof_mask;
    __u64 return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

size_t wf_page_size(void) {
    // Relaxed atomics: trackers are created on any thread; every thread
    // computes the same value, so a race to fill the cache is harmless but
    // must not be a data race (TSan reported it).
    static size_t cached;
    size_t v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (!v) {
        v = (size_t)sysconf(_SC_PAGESIZE);
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

// MARK: Region table for the SIGSEGV handler

enum { SLOT_FREE = 0, SLOT_BUSY = 1, SLOT_ACTIVE = 2 };

struct wf_slot {
    int state;            // SLOT_*; the handler uses only SLOT_ACTIVE slots
    int kind;             // enum wf_kind
    int notify_fd;        // eventfd or -1
    int armed;            // 1: write notify_fd on the next fault
    uintptr_t base;
    size_t len;
    uint8_t *dirty;       // one byte per page (WF_KIND_PAGES)
};

static struct wf_slot slots[WF_MAX_REGIONS];
static int slots_high;            // slots [0, slots_high) may be in use
static int inflight;              // handler invocations inside the table walk
static uint64_t removals;         // bumped by wf_region_remove before a slot stops being active
static uint64_t faults;           // tracked faults resolved
static struct sigaction previous; // the handler we chain to
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static int install_error;

static void chain(int sig, siginfo_t *si, void *uc) {
    if (previous.sa_flags & SA_SIGINFO) {
        if (previous.sa_sigaction) {
            previous.sa_sigaction(sig, si, uc);
            return;
        }
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    // Default action: restore it and re-deliver. SIGSEGV is blocked while we
    // run, so the raised signal stays pending and kills the process as soon as
    // we return (a real fault would also simply recur).
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

// A write can fault on a page that is then made writable and untracked
// before this thread's handler runs (wf_region_remove on another thread):
// the kernel raised the signal, the handler finds no region, and chaining
// would kill the process over a write that would now succeed. So a fault
// that matches no region is retried once (the handler returns and the
// instruction runs again); it is passed on only if it comes back at the same
// address with no removal in between. A real crash costs one extra fault.
// Per thread, in static TLS (initial-exec: no allocation in the handler).
static __thread uintptr_t retry_addr __attribute__((tls_model("initial-exec")));
static __thread uint64_t retry_removals __attribute__((tls_model("initial-exec")));
static __thread int retry_valid __attribute__((tls_model("initial-exec")));

static int stale_fault(uintptr_t addr) {
    uint64_t r = __atomic_load_n(&removals, __ATOMIC_ACQUIRE);
    if (retry_valid && retry_addr == addr && retry_removals == r) return 0;
    retry_valid = 1;
    retry_addr = addr;
    retry_removals = r;
    return 1;
}

static void handler(int sig, siginfo_t *si, void *uc) {
    int saved_errno = errno;
    int handled = 0;
    if (si->si_code == SEGV_ACCERR) {
        uintptr_t addr = (uintptr_t)si->si_addr;
        __atomic_add_fetch(&inflight, 1, __ATOMIC_ACQ_REL);
        int high = __atomic_load_n(&slots_high, __ATOMIC_ACQUIRE);
        for (int i = 0; i < high; i++) {
            struct wf_slot *s = &slots[i];
            if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != SLOT_ACTIVE) continue;
            if (addr - s->base >= s->len) continue;
            if (s->kind == WF_KIND_PAGES) {
                size_t page = (addr - s->base) / wf_page_size();
                // Writable first, then marked: a collect that clears the mark
                // and re-protects in between leaves (marked, read-only), which
                // only costs one more fault; never (unmarked, writable).
                mprotect((void *)(s->base + page * wf_page_size()), wf_page_size(),
                         PROT_READ | PROT_WRITE);
                __atomic_store_n(&s->dirty[page], 1, __ATOMIC_RELEASE);
            } else {
                mprotect((void *)s->base, s->len, PROT_READ | PROT_WRITE);
            }
            if (s->notify_fd >= 0 && __atomic_exchange_n(&s->armed, 0, __ATOMIC_ACQ_REL)) {
                uint64_t one = 1;
                ssize_t rc = write(s->notify_fd, &one, sizeof one);
                (void)rc;
            }
            __atomic_add_fetch(&faults, 1, __ATOMIC_RELAXED);
            handled = 1;
            break;
        }
        __atomic_sub_fetch(&inflight, 1, __ATOMIC_ACQ_REL);
        if (!handled) handled = stale_fault(addr);
    }
    errno = saved_errno;
    if (!handled) chain(sig, si, uc);
}

static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &previous) != 0) install_error = errno;
}

int wf_region_add(void *base, size_t len, int kind, uint8_t *dirty, int notify_fd) {
    size_t page = wf_page_size();
    if (!base || len == 0 || ((uintptr_t)base % page) || (len % page) ||
        (kind == WF_KIND_PAGES && !dirty) || (kind != WF_KIND_PAGES && kind != WF_KIND_ARM)) {
        errno = EINVAL;
        return -1;
    }
    pthread_once(&install_once, install);
    if (install_error) {
        errno = install_error;
        return -1;
    }
    for (int i = 0; i < WF_MAX_REGIONS; i++) {
        int expected = SLOT_FREE;
        if (!__atomic_compare_exchange_n(&slots[i].state, &expected, SLOT_BUSY, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;
        struct wf_slot *s = &slots[i];
        s->kind = kind;
        s->notify_fd = notify_fd;
        __atomic_store_n(&s->armed, 0, __ATOMIC_RELAXED);
        s->base = (uintptr_t)base;
        s->len = len;
        s->dirty = dirty;
        int high = __atomic_load_n(&slots_high, __ATOMIC_ACQUIRE);
        while (high < i + 1 &&
               !__atomic_compare_exchange_n(&slots_high, &high, i + 1, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
        }
        __atomic_store_n(&s->state, SLOT_ACTIVE, __ATOMIC_RELEASE);
        return i;
    }
    errno = ENOSPC;
    return -1;
}

void wf_region_remove(int slot) {
    if (slot < 0 || slot >= WF_MAX_REGIONS) return;
    struct wf_slot *s = &slots[slot];
    if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != SLOT_ACTIVE) return;
    // In this order: a handler that no longer finds the slot active sees the
    // new removal count (it retries the write) and the region writable.
    __atomic_add_fetch(&removals, 1, __ATOMIC_ACQ_REL);
    mprotect((void *)s->base, s->len, PROT_READ | PROT_WRITE);
    __atomic_store_n(&s->state, SLOT_BUSY, __ATOMIC_RELEASE);
    // Wait until no handler can still be looking at this slot's fields.
    while (__atomic_load_n(&inflight, __ATOMIC_ACQUIRE) != 0) sched_yield();
    __atomic_store_n(&s->state, SLOT_FREE, __ATOMIC_RELEASE);
}

int wf_region_set_armed(int slot, int armed) {
    return __atomic_exchange_n(&slots[slot].armed, armed ? 1 : 0, __ATOMIC_ACQ_REL);
}

int wf_region_protect(int slot) {
    return mprotect((void *)slots[slot].base, slots[slot].len, PROT_READ);
}

int wf_region_unprotect(int slot) {
    return mprotect((void *)slots[slot].base, slots[slot].len, PROT_READ | PROT_WRITE);
}

uint64_t wf_fault_count(void) { return __atomic_load_n(&faults, __ATOMIC_RELAXED); }

long wf_pages_collect(int slot, struct wf_run *runs, size_t max_runs, int reprotect) {
    struct wf_slot *s = &slots[slot];
    size_t page = wf_page_size();
    size_t pages = s->len / page;
    uint8_t *dirty = s->dirty;
    size_t n = 0;
    size_t i = 0;
    while (i < pages) {
        // Skip clean pages eight at a time.
        if ((i & 7) == 0 && i + 8 <= pages) {
            uint64_t word;
            memcpy(&word, dirty + i, 8);
            if (word == 0) {
                i += 8;
                continue;
            }
        }
        if (!__atomic_load_n(&dirty[i], __ATOMIC_ACQUIRE)) {
            i++;
            continue;
        }
        size_t first = i;
        while (i < pages && __atomic_load_n(&dirty[i], __ATOMIC_ACQUIRE)) i++;
        if (n == max_runs) {
            errno = E2BIG;
            return -1;
        }
        runs[n].first = first;
        runs[n].count = i - first;
        n++;
        if (reprotect) {
            for (size_t p = first; p < i; p++) __atomic_store_n(&dirty[p], 0, __ATOMIC_RELEASE);
            mprotect((void *)(s->base + first * page), (i - first) * page, PROT_READ);
        }
    }
    return (long)n;
}

// MARK: userfaultfd

static int uffd_new(void) {
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) return fd;
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) return -1;
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    int saved = errno;
    close(dev);
    errno = saved;
    return fd;
}

int wf_uffd_open(int shmem, uint64_t *features_out) {
    // UFFDIO_API may be called once per fd: probe on one, configure another.
    int probe = uffd_new();
    if (probe < 0) return -1;
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (ioctl(probe, UFFDIO_API, &api) != 0) {
        int saved = errno;
        close(probe);
        errno = saved;
        return -1;
    }
    close(probe);
    if (features_out) *features_out = api.features;
    uint64_t want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    if (shmem) want |= UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
    if ((api.features & want) != want) {
        errno = EOPNOTSUPP;
        return -1;
    }
    // shmem/memfd support costs nothing when offered; take it.
    want |= api.features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
    int fd = uffd_new();
    if (fd < 0) return -1;
    struct uffdio_api api2 = {.api = UFFD_API, .features = want};
    if (ioctl(fd, UFFDIO_API, &api2) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int wf_uffd_register(int uffd, void *base, size_t len) {
    struct uffdio_register reg = {
        .range = {.start = (uintptr_t)base, .len = len},
        .mode = UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) return -1;
    struct uffdio_writeprotect wp = {
        .range = {.start = (uintptr_t)base, .len = len},
        .mode = UFFDIO_WRITEPROTECT_MODE_WP,
    };
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
        int saved = errno;
        struct uffdio_range range = {.start = (uintptr_t)base, .len = len};
        ioctl(uffd, UFFDIO_UNREGISTER, &range);
        errno = saved;
        return -1;
    }
    return 0;
}

int wf_uffd_unregister(int uffd, void *base, size_t len) {
    struct uffdio_range range = {.start = (uintptr_t)base, .len = len};
    return ioctl(uffd, UFFDIO_UNREGISTER, &range);
}

int wf_pagemap_open(void) { return open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC); }

long wf_uffd_collect(int pagemap_fd, void *base, size_t len, struct wf_run *runs,
                     size_t max_runs, int reprotect) {
    enum { VEC = 256 };
    struct page_region vec[VEC];
    size_t page = wf_page_size();
    uintptr_t start = (uintptr_t)base, end = start + len;
    size_t n = 0;
    while (start < end) {
        struct pm_scan_arg arg;
        memset(&arg, 0, sizeof arg);
        arg.size = sizeof arg;
        arg.flags = reprotect ? (PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC) : 0;
        arg.start = start;
        arg.end = end;
        arg.vec = (uintptr_t)vec;
        arg.vec_len = VEC;
        arg.category_mask = PAGE_IS_WRITTEN;
        arg.return_mask = PAGE_IS_WRITTEN;
        long got = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
        if (got < 0) return -1;
        for (long k = 0; k < got; k++) {
            uint64_t first = (vec[k].start - (uintptr_t)base) / page;
            uint64_t count = (vec[k].end - vec[k].start) / page;
            if (n > 0 && runs[n - 1].first + runs[n - 1].count == first) {
                runs[n - 1].count += count;
                continue;
            }
            if (n == max_runs) {
                errno = E2BIG;
                return -1;
            }
            runs[n].first = first;
            runs[n].count = count;
            n++;
        }
        if (arg.walk_end <= start) break; // no progress: defensive
        start = arg.walk_end;
    }
    return (long)n;
}

int wf_memfd(const char *name, size_t size) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}
