#pragma once
// Linux headers that Glibc's Swift module does not export, and small inline
// wrappers for macros and variadic calls that Swift cannot use.
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <fcntl.h>
#include <unistd.h>

/// fcntl(fd, F_SETFL, flags | O_NONBLOCK) — fcntl is variadic.
static inline int cshims_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/// fcntl(fd, F_SETFD, FD_CLOEXEC).
static inline int cshims_set_cloexec(int fd) {
    return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/// Names the calling thread (prctl is variadic).
static inline int cshims_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

#include <sys/resource.h>
#include <sys/syscall.h>

/// Lowers the calling thread's scheduling priority to `nice` (Linux applies
/// setpriority(PRIO_PROCESS) to one thread when given its tid): for
/// background work that must not compete with the guest's loop.
static inline int cshims_set_thread_nice(int nice) {
    return setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice);
}

