#if canImport(Glibc)
import Glibc
#endif
import CShims
import CWriteFault
import Damage
import Support

/// Creates a tracker for `byteCount` bytes at `base`. `.auto` picks `uffd`
/// when the kernel offers async write-protect and PAGEMAP_SCAN, else
/// `mprotect`.
public func makeDirtyTracker(base: UnsafeMutableRawPointer, byteCount: Int,
                             mode: DirtyTrackingMode = .auto) throws(DirtyTrackingError) -> any DirtyTracker {
    switch mode {
    case .uffd:
        return try UffdTracker(base: base, byteCount: byteCount)
    case .mprotect:
        return try MprotectTracker(base: base, byteCount: byteCount)
    case .compare:
        return try CompareTracker(base: base, byteCount: byteCount)
    case .auto:
        if let tracker = try? UffdTracker(base: base, byteCount: byteCount) { return tracker }
        return try MprotectTracker(base: base, byteCount: byteCount)
    }
}

/// An eventfd for notifications.
func makeNotifyFD(_ mode: DirtyTrackingMode) throws(DirtyTrackingError) -> Int32 {
    let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
    guard fd >= 0 else { throw DirtyTrackingError(mode: mode, reason: "\(SystemError("eventfd"))") }
    return fd
}

func drainEventFD(_ fd: Int32) {
    var value: UInt64 = 0
    _ = read(fd, &value, 8)
}

/// A reusable output buffer for the C collectors: (pages + 1) / 2 runs is the
/// most a region of `pages` pages can have.
struct RunBuffer {
    let capacity: Int
    let runs: UnsafeMutablePointer<wf_run>

    init(pages: Int) {
        capacity = (pages + 1) / 2 + 1
        runs = .allocate(capacity: capacity)
    }

    func free() { runs.deallocate() }

    func result(_ n: Int) -> [PageRun] {
        (0 ..< n).map { PageRun(first: Int(runs[$0].first), count: Int(runs[$0].count)) }
    }
}

// MARK: - mprotect + SIGSEGV

/// Tracks writes with mprotect and the C SIGSEGV handler (about 4–6 µs per
/// first write to a page). Works on any kernel, for any writer thread of this
/// process.
public final class MprotectTracker: DirtyTracker {
    public let mode = DirtyTrackingMode.mprotect
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int
    public let pageSize = Int(wf_page_size())
    private let dirty: UnsafeMutablePointer<UInt8>
    private let buffer: RunBuffer
    private let notifyFD: Int32
    private var slot: Int32 = -1

    public init(base: UnsafeMutableRawPointer, byteCount: Int) throws(DirtyTrackingError) {
        try validateRegion(base, byteCount, .mprotect)
        self.base = base
        self.byteCount = byteCount
        let pages = byteCount / pageSize
        dirty = .allocate(capacity: pages)
        dirty.initialize(repeating: 0, count: pages)
        buffer = RunBuffer(pages: pages)
        do {
            notifyFD = try makeNotifyFD(.mprotect)
        } catch {
            dirty.deallocate(); buffer.free()
            throw error
        }
        slot = wf_region_add(base, byteCount, Int32(WF_KIND_PAGES.rawValue), dirty, notifyFD)
        guard slot >= 0, wf_region_protect(slot) == 0 else {
            let err = SystemError(slot < 0 ? "wf_region_add" : "mprotect")
            if slot >= 0 { wf_region_remove(slot) }
            Glibc.close(notifyFD); dirty.deallocate(); buffer.free()
            throw DirtyTrackingError(mode: .mprotect, reason: "\(err)")
        }
    }

    deinit {
        close()
        Glibc.close(notifyFD)
        dirty.deallocate()
        buffer.free()
    }

    public func collect() throws(SystemError) -> [PageRun] { try run(reprotect: true) }
    public func peek() throws(SystemError) -> [PageRun] { try run(reprotect: false) }

    private func run(reprotect: Bool) throws(SystemError) -> [PageRun] {
        guard slot >= 0 else { return [] }
        let n = wf_pages_collect(slot, buffer.runs, buffer.capacity, reprotect ? 1 : 0)
        guard n >= 0 else { throw SystemError("wf_pages_collect") }
        return buffer.result(n)
    }

    public var notificationFD: Int32? { notifyFD }

    public func arm() throws(SystemError) -> Bool {
        guard slot >= 0 else { return true }
        wf_region_set_armed(slot, 1)
        // A write between the last collect and the flag went unannounced.
        return try peek().isEmpty
    }

    public func drainNotification() { drainEventFD(notifyFD) }

    public func close() {
        guard slot >= 0 else { return }
        wf_region_remove(slot)
        slot = -1
    }
}

// MARK: - userfaultfd async write-protect

/// Tracks writes with userfaultfd write-protect in async mode: the kernel
/// resolves each first write itself (about 1 µs) and one PAGEMAP_SCAN ioctl
/// both lists the written pages and protects them again. Needs Linux 6.7+
/// and access to userfaultfd (root, CAP_SYS_PTRACE or /dev/userfaultfd).
///
/// Async faults tell nobody, so `arm()` adds a notifying layer for the idle
/// case: it makes the whole region read-only with mprotect; the first write
/// then takes one SIGSEGV whose C handler makes the region writable again and
/// writes the eventfd, and the write proceeds into the async path. While
/// writes keep coming the engine collects on its timer and does not arm.
public final class UffdTracker: DirtyTracker {
    public let mode = DirtyTrackingMode.uffd
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int
    public let pageSize = Int(wf_page_size())
    private let uffd: Int32
    private let pagemap: Int32
    private let notifyFD: Int32
    private let buffer: RunBuffer
    private var slot: Int32 = -1
    private var open = true

    public init(base: UnsafeMutableRawPointer, byteCount: Int) throws(DirtyTrackingError) {
        try validateRegion(base, byteCount, .uffd)
        self.base = base
        self.byteCount = byteCount
        var features: UInt64 = 0
        uffd = wf_uffd_open(0, &features)
        guard uffd >= 0 else {
            throw DirtyTrackingError(mode: .uffd, reason: "\(SystemError("userfaultfd with WP_ASYNC"))")
        }
        pagemap = wf_pagemap_open()
        guard pagemap >= 0 else {
            let err = SystemError("open /proc/self/pagemap")
            Glibc.close(uffd)
            throw DirtyTrackingError(mode: .uffd, reason: "\(err)")
        }
        do {
            notifyFD = try makeNotifyFD(.uffd)
        } catch {
            Glibc.close(uffd); Glibc.close(pagemap)
            throw error
        }
        buffer = RunBuffer(pages: byteCount / pageSize)
        func fail(_ what: String) -> DirtyTrackingError {
            let err = SystemError(what)
            Glibc.close(uffd); Glibc.close(pagemap); Glibc.close(notifyFD); buffer.free()
            return DirtyTrackingError(mode: .uffd, reason: "\(err)")
        }
        guard wf_uffd_register(uffd, base, byteCount) == 0 else { throw fail("UFFDIO_REGISTER") }
        // Probe PAGEMAP_SCAN (Linux 6.7+) before relying on it.
        guard wf_uffd_collect(pagemap, base, byteCount, buffer.runs, buffer.capacity, 1) >= 0 else {
            wf_uffd_unregister(uffd, base, byteCount)
            throw fail("PAGEMAP_SCAN")
        }
        slot = wf_region_add(base, byteCount, Int32(WF_KIND_ARM.rawValue), nil, notifyFD)
        guard slot >= 0 else {
            wf_uffd_unregister(uffd, base, byteCount)
            throw fail("wf_region_add")
        }
    }

    deinit {
        close()
        Glibc.close(notifyFD)
        buffer.free()
    }

    public func collect() throws(SystemError) -> [PageRun] { try run(reprotect: true) }
    public func peek() throws(SystemError) -> [PageRun] { try run(reprotect: false) }

    private func run(reprotect: Bool) throws(SystemError) -> [PageRun] {
        guard open else { return [] }
        let n = wf_uffd_collect(pagemap, base, byteCount, buffer.runs, buffer.capacity, reprotect ? 1 : 0)
        guard n >= 0 else { throw SystemError("PAGEMAP_SCAN") }
        return buffer.result(n)
    }

    public var notificationFD: Int32? { notifyFD }

    public func arm() throws(SystemError) -> Bool {
        guard open else { return true }
        wf_region_set_armed(slot, 1)
        guard wf_region_protect(slot) == 0 else { throw SystemError("mprotect") }
        // Writes between the last collect and the mprotect were not announced.
        return try peek().isEmpty
    }

    public func drainNotification() { drainEventFD(notifyFD) }

    public func close() {
        guard open else { return }
        open = false
        wf_region_remove(slot) // also makes the region writable at the VMA level
        wf_uffd_unregister(uffd, base, byteCount)
        Glibc.close(uffd)
        Glibc.close(pagemap)
    }
}

