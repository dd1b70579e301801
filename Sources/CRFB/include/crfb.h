#pragma once
// Linux calls the VNC server needs that Swift's Glibc module does not export
// (they sit behind _GNU_SOURCE or in headers it leaves out), as thin wrappers.
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>

/// epoll_create1(EPOLL_CLOEXEC).
int crfb_epoll_create(void);
/// epoll_ctl with events and a 64-bit tag; op is 1 add, 2 delete, 3 modify.
int crfb_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t tag);
/// epoll_wait into parallel arrays of event masks and tags.
int crfb_epoll_wait(int epfd, uint32_t *events, uint64_t *tags, int max, int timeout_ms);
/// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC).
int crfb_eventfd(void);
/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC.
int crfb_accept(int fd, struct sockaddr *addr, socklen_t *len);
/// socket() with SOCK_NONBLOCK | SOCK_CLOEXEC added to type.
int crfb_socket(int domain, int type, int protocol);
/// writev with MSG_NOSIGNAL semantics (sendmsg), so a closed peer gives EPIPE, not SIGPIPE.
ssize_t crfb_sendv(int fd, const struct iovec *iov, int count);
/// Names the calling thread (prctl PR_SET_NAME; prctl is variadic).
int crfb_set_thread_name(const char *name);

#define CRFB_EPOLLIN 0x001u
#define CRFB_EPOLLOUT 0x004u
#define CRFB_EPOLLERR 0x008u
#define CRFB_EPOLLHUP 0x010u
#define CRFB_EPOLLRDHUP 0x2000u
