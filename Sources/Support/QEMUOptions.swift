/// QEMU's `key=value,key=value` option strings (QemuOpts, as in `-vnc`,
/// `-chardev`, `-display`): the one parser for all of them.
///
/// - `,,` is a literal comma (so paths may contain commas, as in
///   `-vnc unix:/a,,b`); a single comma separates items.
/// - A first item without `=` is the value of the option's implied key (the
///   chardev backend, the VNC address...).
/// - A later `key` without `=` is a flag (value nil: on); `nokey` is `key=off`.
/// - Booleans are spelled as QEMU's `qapi_bool_parse` spells them.
public enum QEMUOptions {
    /// Why an option string was refused (the caller adds which option).
    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// The most items one option string may have.
    public static let maxItems = 64

    /// Splits at single commas; `,,` becomes `,`.
    public static func split(_ spec: String) -> [String] {
        var items: [String] = []
        var current = ""
        var scalars = spec.unicodeScalars.makeIterator()
        var pending = scalars.next()
        while let c = pending {
            pending = scalars.next()
            if c == "," {
                if pending == "," {
                    current.unicodeScalars.append(",")
                    pending = scalars.next()
                } else {
                    items.append(current)
                    current = ""
                }
            } else {
                current.unicodeScalars.append(c)
            }
        }
        items.append(current)
        return items
    }

    /// `key=value` as a pair; a bare word is a key with a nil value.
    public static func keyValue(_ item: String) -> (key: String, value: String?) {
        guard let eq = item.firstIndex(of: "=") else { return (item, nil) }
        return (String(item[..<eq]), String(item[item.index(after: eq)...]))
    }

    /// The items of `spec` as keys and values. With `impliedKey`, a first
    /// item without `=` is that key's value; a trailing comma is allowed.
    public static func parse(_ spec: String, impliedKey: String?) throws(ParseError) -> [(key: String, value: String?)] {
        let items = split(spec)
        guard items.count <= maxItems else { throw ParseError("too many parameters") }
        var result: [(key: String, value: String?)] = []
        for (i, item) in items.enumerated() {
            if item.contains("=") {
                let (key, value) = keyValue(item)
                guard !key.isEmpty else { throw ParseError("parameter without a name in '\(SubcommandArguments.printable(spec))'") }
                result.append((key, value))
            } else if i == 0, let impliedKey {
                result.append((impliedKey, item))
            } else if item.isEmpty {
                if i == items.count - 1 && i > 0 { continue } // a trailing comma
                throw ParseError("empty parameter in '\(SubcommandArguments.printable(spec))'")
            } else if item.hasPrefix("no"), item.count > 2, item != "nowait", item != "nodelay" {
                result.append((String(item.dropFirst(2)), "off")) // QEMU's `noflag` spelling
            } else {
                result.append((item, nil))
            }
        }
        return result
    }

    /// QEMU's boolean spellings; a key without `=value` means on. Nil for
    /// anything else.
    public static func bool(_ value: String?) -> Bool? {
        switch value {
        case nil, "on", "yes", "true", "y": return true
        case "off", "no", "false", "n": return false
        default: return nil
        }
    }

    /// A decimal integer (digits only, no sign) within `range`; nil otherwise.
    public static func integer(_ value: String?, range: ClosedRange<Int>) -> Int? {
        guard let value, !value.isEmpty, value.utf8.count <= 18, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let n = Int(value), range.contains(n) else { return nil }
        return n
    }
}
