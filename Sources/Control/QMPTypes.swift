/// The version xenvfb reports, and the QEMU version whose QMP it speaks.
public enum XenvfbVersion {
    /// The package's version: the one at the top of debian/changelog, which
    /// is where it is set (ControlTests' VersionTests and debian/rules check
    /// that they agree).
    public static let string = "0.1.0"
    /// QMP clients (libxl among them) read `{"qemu": {major, minor, micro}}`;
    /// xenvfb answers like the QEMU 7.2 it stands in for.
    public static let qemu: (major: Int64, minor: Int64, micro: Int64) = (7, 2, 0)
    /// QMP `query-version`'s `package` (QEMU's build: "Debian 1:7.2+dfsg-7").
    public static var package: String { "xenvfb \(string)" }
}

/// A QMP error reply: `{"error": {"class": ..., "desc": ...}}`.
public struct QMPError: Error, Equatable, Sendable, CustomStringConvertible {
    /// QEMU's ErrorClass name: `GenericError`, `CommandNotFound`, `DeviceNotFound`, ...
    public var errorClass: String
    public var desc: String

    public init(_ errorClass: String, _ desc: String) {
        self.errorClass = errorClass
        self.desc = desc
    }

    public static func generic(_ desc: String) -> QMPError { QMPError("GenericError", desc) }
    public static func commandNotFound(_ desc: String) -> QMPError { QMPError("CommandNotFound", desc) }
    public static func deviceNotFound(_ desc: String) -> QMPError { QMPError("DeviceNotFound", desc) }

    public var description: String { "\(errorClass): \(desc)" }

    var json: JSON { ["class": .string(errorClass), "desc": .string(desc)] }
}

/// How a command answers. Call it exactly once, now or later on the event
/// loop (a screendump answers when the frame is written); later calls, and
/// calls after the client went away, are ignored.
public struct QMPReply {
    let body: (Result<JSON, QMPError>) -> Void

    public init(_ body: @escaping (Result<JSON, QMPError>) -> Void) { self.body = body }

    public func callAsFunction(_ result: Result<JSON, QMPError>) { body(result) }
    /// `{"return": value}`; most commands return `{}`.
    public func success(_ value: JSON = [:]) { body(.success(value)) }
    public func failure(_ error: QMPError) { body(.failure(error)) }
}

/// A QMP command: its arguments (already known to be an object) and how to answer.
public typealias QMPCommandHandler = (_ arguments: JSONObject, _ reply: QMPReply) -> Void

/// What `query-vnc` and the VNC password commands are handed to once a VNC
/// display exists. Called on the event loop.
public protocol QMPVNCProvider: AnyObject {
    /// The `query-vnc` answer (QEMU's VncInfo): `enabled`, and when enabled
    /// `host`, `service`, `family`, `auth`, `clients`.
    func queryVNC() -> JSON
    /// Sets the password VNC clients must give (`change-vnc-password`,
    /// `set_password protocol=vnc`). Never log it.
    func setVNCPassword(_ password: String) throws(QMPError)
}

/// The run state QMP reports and changes (`query-status`, `cont`, `stop`).
/// A PV device model runs no vCPUs; the state is what libxl and management
/// tools look for.
public enum RunState: String, Sendable {
    /// Started with `-S`, waiting for `cont`.
    case prelaunch
    case running
    /// Stopped by `stop`, or restored with `-incoming` and `-S`.
    case paused
}

/// Argument checks with QEMU's wording, for command handlers.
extension JSONObject {
    /// Fails with "Parameter 'x' is unexpected" for a member not in `allowed`.
    public func onlyKeys(_ allowed: Set<String>) throws(QMPError) {
        for key in keys where !allowed.contains(key) {
            throw .generic("Parameter '\(key)' is unexpected")
        }
    }

    /// The string member `key`; nil when absent and not `required`.
    public func string(_ key: String, required: Bool = true) throws(QMPError) -> String? {
        guard let v = self[key] else {
            if required { throw .generic("Parameter '\(key)' is missing") }
            return nil
        }
        guard case .string(let s) = v else { throw .generic("Invalid parameter type for '\(key)', expected: string") }
        return s
    }

    /// The boolean member `key`; nil when absent and not `required`.
    public func bool(_ key: String, required: Bool = true) throws(QMPError) -> Bool? {
        guard let v = self[key] else {
            if required { throw .generic("Parameter '\(key)' is missing") }
            return nil
        }
        guard case .bool(let b) = v else { throw .generic("Invalid parameter type for '\(key)', expected: boolean") }
        return b
    }

    /// The integer member `key`; nil when absent and not `required`.
    public func int(_ key: String, required: Bool = true) throws(QMPError) -> Int64? {
        guard let v = self[key] else {
            if required { throw .generic("Parameter '\(key)' is missing") }
            return nil
        }
        guard case .int(let i) = v else { throw .generic("Invalid parameter type for '\(key)', expected: integer") }
        return i
    }
}
