/// A display option string that a person typed was wrong; the message says
/// what was expected.
public struct DisplayError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// QEMU-style option lists: `a,b=c,d=e`, where `,,` stands for a literal
/// comma (so paths may contain commas, as with QEMU's `-vnc unix:/a,,b`).
enum OptionList {
    /// Splits at single commas; `,,` becomes `,`.
    static func split(_ text: String) -> [String] {
        var items: [String] = []
        var current = ""
        var chars = Array(text)[...]
        while let c = chars.popFirst() {
            if c == "," {
                if chars.first == "," {
                    chars.removeFirst()
                    current.append(",")
                } else {
                    items.append(current)
                    current = ""
                }
            } else {
                current.append(c)
            }
        }
        items.append(current)
        return items
    }

    /// `key=value` as a pair; a bare word is a key with a nil value.
    static func keyValue(_ item: String) -> (key: String, value: String?) {
        guard let eq = item.firstIndex(of: "=") else { return (item, nil) }
        return (String(item[..<eq]), String(item[item.index(after: eq)...]))
    }

    /// QEMU's boolean spellings (`on`/`off`, `yes`/`no`, `true`/`false`); a
    /// bare key means on.
    static func bool(_ value: String?, option: String, in spec: String) throws(DisplayError) -> Bool {
        switch value?.lowercased() {
        case nil, "on", "yes", "true", "1": return true
        case "off", "no", "false", "0": return false
        default: throw DisplayError("\(spec): \(option)=\(value ?? "") is not on or off")
        }
    }

    /// A decimal integer within `range`.
    static func integer(_ value: String?, option: String, in spec: String, range: ClosedRange<Int>) throws(DisplayError) -> Int {
        guard let value, !value.isEmpty, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              value.utf8.count <= 9, let n = Int(value), range.contains(n) else {
            throw DisplayError("\(spec): \(option)=\(value ?? "") is not a number from \(range.lowerBound) to \(range.upperBound)")
        }
        return n
    }
}
