/// `enum xenbus_state` (xen/io/xenbus.h), written to xenstore as decimal.
public enum XenbusState: Int, Sendable, CustomStringConvertible {
    case unknown = 0
    case initialising = 1
    case initWait = 2
    case initialised = 3
    case connected = 4
    case closing = 5
    case closed = 6
    case reconfiguring = 7
    case reconfigured = 8

    /// Parses a `state` value; nil for anything but a decimal in 0...8.
    public init?(xenstore text: String?) {
        guard let text, text.utf8.count <= 3, let n = Int(text, radix: 10), let s = XenbusState(rawValue: n) else { return nil }
        self = s
    }

    public var xenstoreValue: String { String(rawValue) }

    public var description: String {
        switch self {
        case .unknown: return "Unknown"
        case .initialising: return "Initialising"
        case .initWait: return "InitWait"
        case .initialised: return "Initialised"
        case .connected: return "Connected"
        case .closing: return "Closing"
        case .closed: return "Closed"
        case .reconfiguring: return "Reconfiguring"
        case .reconfigured: return "Reconfigured"
        }
    }
}
