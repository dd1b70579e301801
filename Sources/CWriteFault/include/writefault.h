#pragma once
// The C half of the write-fault engine (Sources/Damage is the Swift half).
//
// Two ways to learn which pages of a memory region this process wrote:
//
//  * mprotect + SIGSEGV: the region is kept read-only; the first write to a
//    page faults, a process-wide C handler marks the page in a preallocated
//    byte map and makes it writable, and the write is retried. Faults outside
//    every tracked region are passed to the handler installed before ours
//    (the Swift runtime's crash reporter), so real crashes are still reported.
//  * userfaultfd write-protect in async mode (UFFD_FEATURE_WP_ASYNC, Linux
//    6.7+): the kernel resolves the fault itself and remembers the page as
//    written; one PAGEMAP_SCAN ioctl lists the written pages and write-protects
//    them again. No signal, no thread.
//
// Several regions may be tracked at once (tests run in parallel in one
// process): the handler looks the address up in a fixed table of slots.
// Everything the handler touches is preallocated (static TLS included: the
// library must be linked in, not dlopen'ed); it takes no lock and calls only
// mprotect(2), write(2) and raise(3).
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// How many regions can be tracked at once through the SIGSEGV handler.
#define WF_MAX_REGIONS 64

/// What the handler does on a write fault inside a region.
enum wf_kind {
    /// mprotect tracking: mark the page in `dirty`, make that page writable.
    WF_KIND_PAGES = 0,
    /// Arm-only (used on top of uffd): make the whole region writable again.
    WF_KIND_ARM = 1,
};

/// A run of dirty pages: page indexes [first, first + count) of the region.
struct wf_run {
    uint64_t first;
    uint64_t count;
};

/// The system page size (sysconf(_SC_PAGESIZE)).
size_t wf_page_size(void);

// MARK: SIGSEGV path

/// Adds a region to the handler's table and installs the handler on first
/// use. `base` and `len` must be page-aligned; the region must be mapped
/// PROT_READ|PROT_WRITE. `dirty` (one byte per page, zeroed) must outlive the
/// slot; may be NULL for WF_KIND_ARM. `notify_fd` (an eventfd, or -1) gets a
/// write of 1 on the first fault after `wf_region_arm`. The region is not
/// protected yet. Returns the slot (>= 0) or -1 with errno set (ENOSPC: table
/// full).
int wf_region_add(void *base, size_t len, int kind, uint8_t *dirty, int notify_fd);

/// Makes the region writable and removes it from the table. Writers may go
/// on: a write that faulted just before the removal and reaches the handler
/// after it is retried (it then succeeds), not passed on as a crash. The
/// region must stay mapped while they write (as for any memory).
void wf_region_remove(int slot);

/// Sets (1) or clears (0) the "notify on next fault" flag. Returns the
/// previous value.
int wf_region_set_armed(int slot, int armed);

/// mprotect(PROT_READ) over the whole region. Returns 0 or -1/errno.
int wf_region_protect(int slot);

/// mprotect(PROT_READ|PROT_WRITE) over the whole region.
int wf_region_unprotect(int slot);

/// Collects the dirty pages of a WF_KIND_PAGES region into `runs` (capacity
/// `max_runs`; (pages + 1) / 2 runs always suffice). With `reprotect`, each
/// page's dirty byte is cleared first and the run is then made read-only
/// again: a write that lands in between is inside a reported run, and the
/// caller reads the pixels only after this returns. Without `reprotect` the
/// map is only read (the pages stay writable and marked). Returns the number
/// of runs, or -1/errno (E2BIG if `runs` is too small; the state is then
/// unchanged for the runs not returned).
long wf_pages_collect(int slot, struct wf_run *runs, size_t max_runs, int reprotect);

/// Number of handler invocations that resolved a tracked fault (all slots).
uint64_t wf_fault_count(void);

// MARK: userfaultfd path

/// Opens a userfaultfd with write-protect in async mode. Tries the syscall,
/// then /dev/userfaultfd. `shmem` asks for shmem/memfd support too. Returns
/// the fd (O_CLOEXEC|O_NONBLOCK) or -1/errno (EOPNOTSUPP when the kernel lacks
/// WP_ASYNC). `features_out` (may be NULL) receives the features the kernel
/// offers.
int wf_uffd_open(int shmem, uint64_t *features_out);

/// Registers [base, base+len) for write-protect and write-protects it.
int wf_uffd_register(int uffd, void *base, size_t len);

/// Unregisters the range (the pages become plainly writable).
int wf_uffd_unregister(int uffd, void *base, size_t len);

/// Opens /proc/self/pagemap for PAGEMAP_SCAN. Returns the fd or -1/errno.
int wf_pagemap_open(void);

/// One PAGEMAP_SCAN walk (repeated while the kernel's vector fills) over
/// [base, base+len): the pages written since they were last protected, as
/// runs of page indexes relative to `base`. With `reprotect` the same ioctl
/// write-protects them again, atomically per page: a write is either in this
/// result or faults (asynchronously) into the next one. Returns the number of
/// runs or -1/errno (E2BIG: `runs` too small).
long wf_uffd_collect(int pagemap_fd, void *base, size_t len, struct wf_run *runs,
                     size_t max_runs, int reprotect);

// MARK: helpers

/// memfd_create(name, MFD_CLOEXEC) sized to `size` bytes (tests and the
/// benchmark track memfd mappings as well as anonymous memory).
int wf_memfd(const char *name, size_t size);

#ifdef __cplusplus
}
#endif
