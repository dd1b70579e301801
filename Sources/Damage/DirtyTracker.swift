#if canImport(Glibc)
import Glibc
#endif
import CShims
import CWriteFault
import Support

/// A run of dirty pages: page indexes `first ..< first + count` of a tracked
/// region.
public struct PageRun: Hashable, Sendable, CustomStringConvertible {
    public var first: Int
    public var count: Int

    public init(first: Int, count: Int) {
        self.first = first
        self.count = count
    }

    public var range: Range<Int> { first ..< first + count }
    public var description: String { "[\(first)+\(count)]" }
}

extension Array where Element == PageRun {
    /// Total number of pages in the runs.
    public var pageCount: Int { reduce(0) { $0 + $1.count } }
}

/// How writes to a region are noticed (`--dirty-tracking=`).
public enum DirtyTrackingMode: String, CaseIterable, Sendable {
    /// userfaultfd async write-protect where the kernel has it, else mprotect.
    case auto
    /// userfaultfd write-protect, async mode, collected with PAGEMAP_SCAN.
    case uffd
    /// mprotect + a SIGSEGV handler that marks the page and unprotects it.
    case mprotect
    /// No protection: compare the region against a shadow copy on each
    /// collect. Sees every writer (other processes, the kernel) but costs a
    /// full compare per tick and cannot notify: the engine polls.
    case compare
}

/// Why a tracker could not be set up.
public struct DirtyTrackingError: Error, CustomStringConvertible, Sendable {
    public let mode: DirtyTrackingMode
    public let reason: String
    public var description: String { "dirty tracking (\(mode.rawValue)): \(reason)" }
}

/// Tells which pages of one memory region this process wrote.
///
/// The region is page-aligned memory mapped readable and writable (anonymous
/// memory or a memfd mapping). Only writes made through this process's page
/// tables are seen by `uffd` and `mprotect`: not a guest's writes through Xen,
/// nor another process's mapping, nor the kernel (a `read(2)` into a page that
/// `mprotect` protects fails with EFAULT). `compare` sees everything.
///
/// Writers may run on any thread. `collect`, `peek`, `arm` and `close` are
/// called from one thread (the engine's loop).
public protocol DirtyTracker: AnyObject {
    /// The technique in use (never `.auto`).
    var mode: DirtyTrackingMode { get }
    var base: UnsafeMutableRawPointer { get }
    var byteCount: Int { get }
    var pageSize: Int { get }

    /// The pages written since the previous `collect`, write-protected again
    /// before this returns. A write that lands while this runs is either in
    /// the result or in the next one; read the pixels after this returns.
    func collect() throws(SystemError) -> [PageRun]

    /// The pages written since the previous `collect`, without protecting
    /// them again: further writes to them cost nothing and are reported by
    /// the next `collect` anyway.
    func peek() throws(SystemError) -> [PageRun]

    /// A descriptor that becomes readable on the first write after `arm()`,
    /// or nil if the technique cannot tell (then the caller must poll).
    var notificationFD: Int32? { get }

    /// Asks for a notification on the next write. Returns false if a write
    /// already happened since the last `collect` (collect instead of waiting;
    /// the notification may still come).
    func arm() throws(SystemError) -> Bool

    /// Consumes a pending notification.
    func drainNotification()

    /// Stops tracking: the region is plainly writable again. Idempotent.
    func close()
}

extension DirtyTracker {
    public var pageCount: Int { byteCount / pageSize }
}

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

/// Checks the region arguments shared by every tracker.
func validateRegion(_ base: UnsafeMutableRawPointer, _ byteCount: Int,
                    _ mode: DirtyTrackingMode) throws(DirtyTrackingError) {
    let page = Int(wf_page_size())
    guard byteCount > 0, byteCount % page == 0, Int(bitPattern: base) % page == 0 else {
        throw DirtyTrackingError(mode: mode, reason: "region \(base) +\(byteCount) is not page-aligned")
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

// MARK: - compare against a shadow copy

/// "Tracks" by comparing each page against a shadow copy on every collect,
/// copying changed pages into the shadow. Costs a full-region compare per
/// collect and a region-sized shadow, but sees writes from anywhere. It has
/// no notification: an engine using it polls.
public final class CompareTracker: DirtyTracker {
    public let mode = DirtyTrackingMode.compare
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int
    public let pageSize = Int(wf_page_size())
    private let shadow: UnsafeMutableRawPointer

    public init(base: UnsafeMutableRawPointer, byteCount: Int) throws(DirtyTrackingError) {
        try validateRegion(base, byteCount, .compare)
        self.base = base
        self.byteCount = byteCount
        shadow = .allocate(byteCount: byteCount, alignment: pageSize)
        shadow.copyMemory(from: base, byteCount: byteCount)
    }

    deinit { shadow.deallocate() }

    public func collect() throws(SystemError) -> [PageRun] { scan(update: true) }
    public func peek() throws(SystemError) -> [PageRun] { scan(update: false) }

    private func scan(update: Bool) -> [PageRun] {
        var runs: [PageRun] = []
        for page in 0 ..< byteCount / pageSize {
            let offset = page * pageSize
            guard memcmp(base + offset, shadow + offset, pageSize) != 0 else { continue }
            if update { (shadow + offset).copyMemory(from: base + offset, byteCount: pageSize) }
            if let last = runs.last, last.first + last.count == page {
                runs[runs.count - 1].count += 1
            } else {
                runs.append(PageRun(first: page, count: 1))
            }
        }
        return runs
    }

    public var notificationFD: Int32? { nil }
    public func arm() throws(SystemError) -> Bool { true }
    public func drainNotification() {}
    public func close() {}
}
