#if canImport(Glibc)
import Glibc
#endif
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
    public init(mode: DirtyTrackingMode, reason: String) {
        self.mode = mode
        self.reason = reason
    }
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

/// Checks the region arguments shared by every tracker.
package func validateRegion(_ base: UnsafeMutableRawPointer, _ byteCount: Int,
                    _ mode: DirtyTrackingMode) throws(DirtyTrackingError) {
    let page = systemPageSize
    guard byteCount > 0, byteCount % page == 0, Int(bitPattern: base) % page == 0 else {
        throw DirtyTrackingError(mode: mode, reason: "region \(base) +\(byteCount) is not page-aligned")
    }
}

/// The kernel's page size (4096 on x86 and most Arm systems).
package let systemPageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

// MARK: - compare against a shadow copy

/// "Tracks" by comparing each page against a shadow copy on every collect,
/// copying changed pages into the shadow. Costs a full-region compare per
/// collect and a region-sized shadow, but sees writes from anywhere. It has
/// no notification: an engine using it polls.
public final class CompareTracker: DirtyTracker {
    public let mode = DirtyTrackingMode.compare
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int
    public let pageSize = systemPageSize
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
