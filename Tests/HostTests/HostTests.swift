#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Host

/// A fresh simulated machine per test, removed afterwards.
final class SimMachine {
    let dir: String
    init() throws { dir = try SimHost.makeDirectory(prefix: "xenvfb-hosttest") }
    deinit { SimHost.removeDirectory(dir) }
    func host(_ domid: UInt32) -> SimHost { SimHost(directory: dir, domid: domid) }
}

/// Whether `fd` polls readable within `ms` milliseconds.
func readable(_ fd: Int32, within ms: Int32 = 1000) -> Bool {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&p, 1, ms) == 1
}

@Suite struct GuestMappingTests {
    @Test func accessesOutsideTheMappingFail() throws {
        let m = try SimMachine()
        let mem = try m.host(1).createMemory(bytes: 4 * 4096)
        let map = mem.mapping
        #expect(map.store(UInt32(0xdeadbeef), at: 4 * 4096 - 4))
        #expect(map.load(UInt32.self, at: 4 * 4096 - 4) == 0xdeadbeef)
        #expect(map.load(UInt32.self, at: 4 * 4096 - 3) == nil)
        #expect(map.load(UInt8.self, at: -1) == nil)
        #expect(map.load(UInt64.self, at: Int.max - 2) == nil)
        #expect(!map.store(UInt8(1), at: 4 * 4096))
        #expect(map.bytes(at: 4096, count: Int.max) == nil)
        #expect(map.bytes(at: 4 * 4096, count: 0) == [])
        map.unmap()
        #expect(map.load(UInt8.self, at: 0) == nil)
    }
}

@Suite struct SimHostTests {
    @Test func foreignMapSeesGuestWritesAndPlacesFramesInOrder() throws {
        let m = try SimMachine()
        let mem = try m.host(3).createMemory(bytes: 16 * 4096)
        mem.mapping.store(UInt64(0x1111), at: 7 * 4096)
        mem.mapping.store(UInt64(0x2222), at: 2 * 4096 + 8)
        let fm = try m.host(0).mapForeign(domid: 3, frames: [7, 2], writable: false)
        #expect(fm.byteCount == 8192)
        #expect(fm.load(UInt64.self, at: 0) == 0x1111)
        #expect(fm.load(UInt64.self, at: 4096 + 8) == 0x2222)
        #expect(!fm.store(UInt8(1), at: 0), "a read-only mapping refuses stores")
        // Later guest writes show through: it is the same memory, not a copy.
        mem.mapping.store(UInt64(0x3333), at: 7 * 4096)
        #expect(fm.load(UInt64.self, at: 0) == 0x3333)
        let rw = try m.host(0).mapForeign(domid: 3, frames: [2], writable: true)
        #expect(rw.store(UInt32(77), at: 100))
        #expect(mem.mapping.load(UInt32.self, at: 2 * 4096 + 100) == 77)
    }

    @Test func framesTheDomainDoesNotOwnCannotBeMapped() throws {
        let m = try SimMachine()
        _ = try m.host(4).createMemory(bytes: 8 * 4096)
        #expect(throws: HostError.mapFailed(domid: 4, frame: 8, reason: "frame not owned by the domain (it has 8 frames)")) {
            try m.host(0).mapForeign(domid: 4, frames: [1, 8], writable: false)
        }
        #expect(throws: HostError.self) { try m.host(0).mapForeign(domid: 4, frames: [UInt64.max], writable: false) }
        #expect(throws: HostError.self) { try m.host(0).mapForeign(domid: 9, frames: [1], writable: false) }
        #expect(throws: HostError.self) { try m.host(0).mapForeign(domid: 4, frames: [], writable: false) }
    }

    @Test func eventChannelsSignalBothWaysAndLatchUntilPending() throws {
        let m = try SimMachine()
        let guest = try m.host(5).openEventChannels()
        let backend = try m.host(0).openEventChannels()
        let gport = try guest.bindUnbound(remoteDomain: 0)
        let bport = try backend.bindInterdomain(remoteDomain: 5, remotePort: gport)

        #expect(try backend.pending() == nil)
        try guest.notify(port: gport)
        try guest.notify(port: gport)
        #expect(readable(backend.fd))
        #expect(try backend.pending() == bport)
        try backend.unmask(port: bport)
        #expect(try backend.pending() == nil, "two notifications before pending() are one event")
        #expect(!readable(backend.fd, within: 0))

        try backend.notify(port: bport)
        #expect(readable(guest.fd))
        #expect(try guest.pending() == gport)
    }

    @Test func onlyTheNamedDomainMayBindAnUnboundPort() throws {
        let m = try SimMachine()
        let guest = try m.host(6).openEventChannels()
        let gport = try guest.bindUnbound(remoteDomain: 0)
        let other = try m.host(7).openEventChannels()
        #expect(throws: HostError.self) { try other.bindInterdomain(remoteDomain: 6, remotePort: gport) }
        #expect(throws: HostError.self) { try other.bindInterdomain(remoteDomain: 6, remotePort: gport + 100) }
        let backend = try m.host(0).openEventChannels()
        _ = try backend.bindInterdomain(remoteDomain: 6, remotePort: gport)
        #expect(throws: HostError.self, "a bound port cannot be bound twice") {
            try m.host(0).openEventChannels().bindInterdomain(remoteDomain: 6, remotePort: gport)
        }
    }

    @Test func unbindingTheBackendLeavesTheGuestPortRebindable() throws {
        let m = try SimMachine()
        let guest = try m.host(8).openEventChannels()
        let gport = try guest.bindUnbound(remoteDomain: 0)
        let b1 = try m.host(0).openEventChannels()
        let p1 = try b1.bindInterdomain(remoteDomain: 8, remotePort: gport)
        try b1.unbind(port: p1)
        try guest.notify(port: gport) // goes nowhere, must not fail
        let b2 = try m.host(0).openEventChannels()
        let p2 = try b2.bindInterdomain(remoteDomain: 8, remotePort: gport)
        try guest.notify(port: gport)
        #expect(readable(b2.fd))
        #expect(try b2.pending() == p2)
        #expect(throws: HostError.self) { try b1.notify(port: p1) }
        b2.close()
        #expect(throws: HostError.self) { try b2.pending() }
    }
}

@Suite struct XenHostTests {
    @Test func openingWithoutXenFailsWithAClearError() {
        var st = stat()
        if stat("/dev/xen/privcmd", &st) == 0 {
            // Under Xen (dom0) the real thing must open.
            #expect(throws: Never.self) { _ = try XenHost() }
        } else {
            do {
                _ = try XenHost()
                Issue.record("XenHost opened without /dev/xen/privcmd")
            } catch {
                #expect("\(error)".contains("/dev/xen/privcmd"))
            }
        }
    }
}

/// SimHost's grant table: a backend maps exactly what the guest granted to
/// it, nothing else, whatever the guest writes into its table.
@Suite struct SimGrantTableTests {
    @Test func grantedFramesMapInOrderAndShowTheGuestsWrites() throws {
        let m = try SimMachine()
        let guest = m.host(5)
        let mem = try guest.createMemory(bytes: 16 * 4096)
        let grants = try guest.createGrantTable()
        let a = try grants.grantAccess(frame: 9, to: 0, readonly: false)
        let b = try grants.grantAccess(frame: 3, to: 0, readonly: true)
        #expect(a >= SimGrantTable.firstFreeReference && a != b)
        mem.mapping.store(UInt64(0xaaaa), at: 9 * 4096)
        mem.mapping.store(UInt64(0xbbbb), at: 3 * 4096 + 16)
        let map = try m.host(0).mapGrants(domid: 5, refs: [a, b], writable: false)
        #expect(map.byteCount == 8192)
        #expect(map.load(UInt64.self, at: 0) == 0xaaaa)
        #expect(map.load(UInt64.self, at: 4096 + 16) == 0xbbbb)
        mem.mapping.store(UInt64(0xcccc), at: 9 * 4096)
        #expect(map.load(UInt64.self, at: 0) == 0xcccc)
        let rw = try m.host(0).mapGrants(domid: 5, refs: [a], writable: true)
        #expect(rw.store(UInt32(42), at: 8))
        #expect(mem.mapping.load(UInt32.self, at: 9 * 4096 + 8) == 42)
        #expect(grants.grantsInUse == 2)
    }

    @Test func onlyWhatWasGrantedToThisDomainCanBeMapped() throws {
        let m = try SimMachine()
        let guest = m.host(5)
        _ = try guest.createMemory(bytes: 16 * 4096)
        let grants = try guest.createGrantTable()
        let ro = try grants.grantAccess(frame: 2, to: 0, readonly: true)
        let other = try grants.grantAccess(frame: 2, to: 7, readonly: false)
        let revoked = try grants.grantAccess(frame: 2, to: 0, readonly: false)
        grants.endAccess(revoked)
        let dom0 = m.host(0)
        #expect(throws: HostError.grantMapFailed(domid: 5, ref: ro, reason: "read-only grant mapped for writing")) {
            try dom0.mapGrants(domid: 5, refs: [ro], writable: true)
        }
        #expect(throws: HostError.grantMapFailed(domid: 5, ref: other, reason: "granted to domain 7, not 0")) {
            try dom0.mapGrants(domid: 5, refs: [other], writable: false)
        }
        #expect(throws: HostError.self) { try dom0.mapGrants(domid: 5, refs: [revoked], writable: false) }
        #expect(throws: HostError.self, "reserved references are never granted") {
            try dom0.mapGrants(domid: 5, refs: [0], writable: false)
        }
        #expect(throws: HostError.self) { try dom0.mapGrants(domid: 5, refs: [UInt32.max], writable: false) }
        #expect(throws: HostError.self) { try dom0.mapGrants(domid: 5, refs: [UInt32(SimGrantTable.entryCount)], writable: false) }
        #expect(throws: HostError.self) { try dom0.mapGrants(domid: 5, refs: [], writable: false) }
        #expect(throws: HostError.self, "a domain without a grant table") { try dom0.mapGrants(domid: 6, refs: [8], writable: false) }
        // One bad reference fails the whole call.
        let good = try grants.grantAccess(frame: 4, to: 0, readonly: false)
        #expect(throws: HostError.self) { try dom0.mapGrants(domid: 5, refs: [good, other], writable: false) }
        // Domain 7 may map what was granted to it.
        #expect(try m.host(7).mapGrants(domid: 5, refs: [other], writable: true).byteCount == 4096)
    }

    @Test func aHostileTableCannotReachMemoryTheGuestDoesNotOwn() throws {
        let m = try SimMachine()
        let guest = m.host(5)
        _ = try guest.createMemory(bytes: 16 * 4096)
        _ = try m.host(6).createMemory(bytes: 64 * 4096)   // another guest's memory, right beside it
        let grants = try guest.createGrantTable()
        // Entries a guest may write by hand: frames beyond its memory, odd flags.
        grants.setEntry(100, flags: SimGrantTable.permitAccess, domid: 0, frame: 16)
        grants.setEntry(101, flags: SimGrantTable.permitAccess, domid: 0, frame: .max)
        grants.setEntry(102, flags: 2, domid: 0, frame: 1)        // GTF_accept_transfer
        grants.setEntry(103, flags: 3, domid: 0, frame: 1)        // transitive (v2 only)
        grants.setEntry(104, flags: 0xfff9, domid: 0, frame: 1)   // permit_access plus junk, read-write
        let dom0 = m.host(0)
        #expect(throws: HostError.grantMapFailed(domid: 5, ref: 100, reason: "grants frame 16, which the domain does not own (it has 16 frames)")) {
            try dom0.mapGrants(domid: 5, refs: [100], writable: false)
        }
        for ref: UInt32 in [101, 102, 103] {
            #expect(throws: HostError.self, "ref \(ref)") { try dom0.mapGrants(domid: 5, refs: [ref], writable: false) }
        }
        #expect(try dom0.mapGrants(domid: 5, refs: [104], writable: false).byteCount == 4096)
    }
}
