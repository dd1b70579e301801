#if canImport(Glibc)
import Glibc
#endif

/// A JSON value (RFC 8259), as QMP exchanges them.
///
/// Numbers without a fraction or exponent that fit in 64 bits are `.int`;
/// every other number is `.double`. Objects keep their members in the order
/// they were written, so replies serialize the way they were built; equality
/// of objects ignores that order.
public enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSON])
    case object(JSONObject)

    public subscript(key: String) -> JSON? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var intValue: Int64? { if case .int(let i) = self { return i }; return nil }
    public var objectValue: JSONObject? { if case .object(let o) = self { return o }; return nil }
    public var arrayValue: [JSON]? { if case .array(let a) = self { return a }; return nil }

    /// The JSON type's name, for error messages ("string", "object", ...).
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .int, .double: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }
}

/// A JSON object: members in insertion order, looked up by name.
public struct JSONObject: Equatable, Sendable, Sequence {
    public private(set) var keys: [String] = []
    private var values: [String: JSON] = [:]

    public init() {}

    public init(_ pairs: [(String, JSON)]) {
        for (k, v) in pairs { self[k] = v }
    }

    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }

    /// Setting nil removes the member; setting an existing name replaces its
    /// value in place.
    public subscript(key: String) -> JSON? {
        get { values[key] }
        set {
            if let v = newValue {
                if values.updateValue(v, forKey: key) == nil { keys.append(key) }
            } else if values.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    public func makeIterator() -> AnyIterator<(key: String, value: JSON)> {
        var index = 0
        let keys = self.keys, values = self.values
        return AnyIterator {
            guard index < keys.count else { return nil }
            defer { index += 1 }
            return (keys[index], values[keys[index]]!)
        }
    }

    public static func == (a: JSONObject, b: JSONObject) -> Bool { a.values == b.values }
}

extension JSON: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral {
    public init(nilLiteral: ()) { self = .null }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: JSON...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSON)...) { self = .object(JSONObject(elements)) }
}

extension JSONObject: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, JSON)...) { self.init(elements) }
}

// MARK: - Parsing

/// Why a JSON text was rejected, and at which byte offset.
public struct JSONError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Kind: Equatable, Sendable {
        case empty, tooLarge, tooDeep, unexpectedEnd, unexpectedCharacter, trailingCharacters
        case invalidNumber, numberOutOfRange, invalidEscape, invalidSurrogate
        case controlCharacterInString, invalidUTF8, duplicateKey
    }
    public let kind: Kind
    public let offset: Int

    public var description: String {
        let what: String
        switch kind {
        case .empty: what = "empty input"
        case .tooLarge: what = "input too large"
        case .tooDeep: what = "nesting too deep"
        case .unexpectedEnd: what = "unexpected end of input"
        case .unexpectedCharacter: what = "unexpected character"
        case .trailingCharacters: what = "characters after the value"
        case .invalidNumber: what = "invalid number"
        case .numberOutOfRange: what = "number out of range"
        case .invalidEscape: what = "invalid escape sequence"
        case .invalidSurrogate: what = "invalid \\u surrogate pair"
        case .controlCharacterInString: what = "control character in string"
        case .invalidUTF8: what = "invalid UTF-8"
        case .duplicateKey: what = "duplicate object member"
        }
        return "\(what) at byte \(offset)"
    }
}

extension JSON {
    /// Limits applied while parsing untrusted input.
    public struct Limits: Sendable {
        /// Largest accepted text, in bytes.
        public var maxBytes: Int
        /// Deepest accepted nesting of arrays and objects.
        public var maxDepth: Int
        public init(maxBytes: Int = 1 << 20, maxDepth: Int = 64) {
            self.maxBytes = maxBytes
            self.maxDepth = maxDepth
        }
    }

    /// Parses one JSON text (RFC 8259, strict): UTF-8 only, no comments, no
    /// trailing commas, no leading zeros, no lone surrogates, no duplicate
    /// object members, whitespace only around the value.
    public static func parse(_ bytes: some Collection<UInt8>, limits: Limits = Limits()) throws(JSONError) -> JSON {
        let array = Array(bytes)
        guard array.count <= limits.maxBytes else { throw JSONError(kind: .tooLarge, offset: limits.maxBytes) }
        var parser = JSONParser(bytes: array, maxDepth: limits.maxDepth)
        return try parser.parseDocument()
    }

    public static func parse(_ text: String, limits: Limits = Limits()) throws(JSONError) -> JSON {
        try parse(Array(text.utf8), limits: limits)
    }
}

private struct JSONParser {
    let bytes: [UInt8]
    let maxDepth: Int
    var pos = 0
    var depth = 0

    init(bytes: [UInt8], maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    func fail(_ kind: JSONError.Kind) -> JSONError { JSONError(kind: kind, offset: pos) }

    mutating func skipWhitespace() {
        while pos < bytes.count {
            switch bytes[pos] {
            case 0x20, 0x09, 0x0A, 0x0D: pos += 1
            default: return
            }
        }
    }

    mutating func parseDocument() throws(JSONError) -> JSON {
        skipWhitespace()
        guard pos < bytes.count else { throw fail(bytes.isEmpty ? .empty : .unexpectedEnd) }
        let value = try parseValue()
        skipWhitespace()
        guard pos == bytes.count else { throw fail(.trailingCharacters) }
        return value
    }

    mutating func parseValue() throws(JSONError) -> JSON {
        guard pos < bytes.count else { throw fail(.unexpectedEnd) }
        switch bytes[pos] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw fail(.unexpectedCharacter)
        }
    }

    mutating func literal(_ word: StaticString) throws(JSONError) {
        let n = word.utf8CodeUnitCount
        for i in 0..<n {
            guard pos < bytes.count else { throw fail(.unexpectedEnd) }
            guard bytes[pos] == word.utf8Start[i] else { throw fail(.unexpectedCharacter) }
            pos += 1
        }
    }

    mutating func enter() throws(JSONError) {
        depth += 1
        guard depth <= maxDepth else { throw fail(.tooDeep) }
    }

    mutating func parseObject() throws(JSONError) -> JSON {
        try enter()
        pos += 1 // {
        var object = JSONObject()
        skipWhitespace()
        guard pos < bytes.count else { throw fail(.unexpectedEnd) }
        if bytes[pos] == UInt8(ascii: "}") {
            pos += 1
            depth -= 1
            return .object(object)
        }
        while true {
            skipWhitespace()
            guard pos < bytes.count else { throw fail(.unexpectedEnd) }
            guard bytes[pos] == UInt8(ascii: "\"") else { throw fail(.unexpectedCharacter) }
            let keyOffset = pos
            let key = try parseString()
            skipWhitespace()
            guard pos < bytes.count else { throw fail(.unexpectedEnd) }
            guard bytes[pos] == UInt8(ascii: ":") else { throw fail(.unexpectedCharacter) }
            pos += 1
            skipWhitespace()
            let value = try parseValue()
            guard object[key] == nil else { throw JSONError(kind: .duplicateKey, offset: keyOffset) }
            object[key] = value
            skipWhitespace()
            guard pos < bytes.count else { throw fail(.unexpectedEnd) }
            switch bytes[pos] {
            case UInt8(ascii: ","): pos += 1
            case UInt8(ascii: "}"):
                pos += 1
                depth -= 1
                return .object(object)
            default: throw fail(.unexpectedCharacter)
            }
        }
    }

    mutating func parseArray() throws(JSONError) -> JSON {
        try enter()
        pos += 1 // [
        var items: [JSON] = []
        skipWhitespace()
        guard pos < bytes.count else { throw fail(.unexpectedEnd) }
        if bytes[pos] == UInt8(ascii: "]") {
            pos += 1
            depth -= 1
            return .array(items)
        }
        while true {
            skipWhitespace()
            items.append(try parseValue())
            skipWhitespace()
            guard pos < bytes.count else { throw fail(.unexpectedEnd) }
            switch bytes[pos] {
            case UInt8(ascii: ","): pos += 1
            case UInt8(ascii: "]"):
                pos += 1
                depth -= 1
                return .array(items)
            default: throw fail(.unexpectedCharacter)
            }
        }
    }

    mutating func hex4() throws(JSONError) -> UInt32 {
        guard bytes.count - pos >= 4 else { throw fail(.unexpectedEnd) }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail(.invalidEscape)
            }
            v = v << 4 | d
            pos += 1
        }
        return v
    }

    /// Parses a string starting at its opening quote; the result is valid
    /// Unicode (raw bytes are UTF-8-validated, escapes may not leave a lone
    /// surrogate).
    mutating func parseString() throws(JSONError) -> String {
        pos += 1 // "
        var out: [UInt8] = []
        while true {
            guard pos < bytes.count else { throw fail(.unexpectedEnd) }
            let c = bytes[pos]
            switch c {
            case UInt8(ascii: "\""):
                pos += 1
                return String(decoding: out, as: UTF8.self) // already validated
            case UInt8(ascii: "\\"):
                pos += 1
                guard pos < bytes.count else { throw fail(.unexpectedEnd) }
                let e = bytes[pos]
                pos += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    let start = pos - 2
                    var scalar = try hex4()
                    if (0xD800...0xDBFF).contains(scalar) {
                        guard bytes.count - pos >= 2, bytes[pos] == UInt8(ascii: "\\"),
                              bytes[pos + 1] == UInt8(ascii: "u") else {
                            throw JSONError(kind: .invalidSurrogate, offset: start)
                        }
                        pos += 2
                        let low = try hex4()
                        guard (0xDC00...0xDFFF).contains(low) else {
                            throw JSONError(kind: .invalidSurrogate, offset: start)
                        }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00...0xDFFF).contains(scalar) {
                        throw JSONError(kind: .invalidSurrogate, offset: start)
                    }
                    // Never nil: surrogates were excluded above and scalar <= 0x10FFFF.
                    guard let u = Unicode.Scalar(scalar) else { throw JSONError(kind: .invalidSurrogate, offset: start) }
                    out.append(contentsOf: UTF8.encode(u)!)
                default:
                    pos -= 1
                    throw fail(.invalidEscape)
                }
            case 0x00..<0x20:
                throw fail(.controlCharacterInString)
            case 0x20..<0x80:
                out.append(c)
                pos += 1
            default:
                let n = try utf8SequenceLength(at: pos)
                out.append(contentsOf: bytes[pos..<pos + n])
                pos += n
            }
        }
    }

    /// Length of the well-formed UTF-8 sequence (2...4 bytes) starting with
    /// a non-ASCII byte at `i` (Unicode Table 3-7: no overlongs, no
    /// surrogates, nothing above U+10FFFF).
    func utf8SequenceLength(at i: Int) throws(JSONError) -> Int {
        let b0 = bytes[i]
        let n: Int
        var lo: UInt8 = 0x80, hi: UInt8 = 0xBF
        switch b0 {
        case 0xC2...0xDF: n = 2
        case 0xE0: n = 3; lo = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: n = 3
        case 0xED: n = 3; hi = 0x9F
        case 0xF0: n = 4; lo = 0x90
        case 0xF1...0xF3: n = 4
        case 0xF4: n = 4; hi = 0x8F
        default: throw JSONError(kind: .invalidUTF8, offset: i)
        }
        guard bytes.count - i >= n else { throw JSONError(kind: .invalidUTF8, offset: i) }
        guard (lo...hi).contains(bytes[i + 1]) else { throw JSONError(kind: .invalidUTF8, offset: i) }
        for k in 2..<max(n, 2) where !(0x80...0xBF).contains(bytes[i + k]) {
            throw JSONError(kind: .invalidUTF8, offset: i)
        }
        return n
    }

    mutating func parseNumber() throws(JSONError) -> JSON {
        let start = pos
        func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }
        if bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        guard pos < bytes.count, isDigit(bytes[pos]) else { throw fail(.invalidNumber) }
        if bytes[pos] == UInt8(ascii: "0") {
            pos += 1
            if pos < bytes.count, isDigit(bytes[pos]) { throw fail(.invalidNumber) }
        } else {
            while pos < bytes.count, isDigit(bytes[pos]) { pos += 1 }
        }
        var integral = true
        if pos < bytes.count, bytes[pos] == UInt8(ascii: ".") {
            integral = false
            pos += 1
            guard pos < bytes.count, isDigit(bytes[pos]) else { throw fail(.invalidNumber) }
            while pos < bytes.count, isDigit(bytes[pos]) { pos += 1 }
        }
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E") {
            integral = false
            pos += 1
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-") { pos += 1 }
            guard pos < bytes.count, isDigit(bytes[pos]) else { throw fail(.invalidNumber) }
            while pos < bytes.count, isDigit(bytes[pos]) { pos += 1 }
        }
        let text = bytes[start..<pos]
        if integral, let i = Self.int64(text) { return .int(i) }
        // strtod on a NUL-terminated copy; the grammar above already holds.
        var cstr = Array(text)
        cstr.append(0)
        let d = cstr.withUnsafeBufferPointer { buf in
            buf.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buf.count) { strtod($0, nil) }
        }
        guard d.isFinite else { throw JSONError(kind: .numberOutOfRange, offset: start) }
        return .double(d)
    }

    /// The integer in `text` (grammar-checked digits with an optional minus),
    /// or nil if it does not fit in Int64.
    static func int64(_ text: ArraySlice<UInt8>) -> Int64? {
        var i = text.startIndex
        let negative = text[i] == UInt8(ascii: "-")
        if negative { i += 1 }
        var v: Int64 = 0
        while i < text.endIndex {
            let d = Int64(text[i] - UInt8(ascii: "0"))
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            // Accumulate negatively so Int64.min is representable.
            let (s, o2) = m.subtractingReportingOverflow(d)
            if o1 || o2 { return nil }
            v = s
            i += 1
        }
        if negative { return v }
        let (p, o) = Int64(0).subtractingReportingOverflow(v)
        return o ? nil : p
    }
}

// MARK: - Serializing

extension JSON {
    /// Compact JSON text (no whitespace), members in insertion order.
    /// Non-finite doubles, which JSON cannot express, are written as null.
    public var serialized: String {
        var out: [UInt8] = []
        write(to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    public var serializedBytes: [UInt8] {
        var out: [UInt8] = []
        write(to: &out)
        return out
    }

    /// Indented JSON text in QEMU's pretty style (`-mon ...,pretty=on`):
    /// four spaces per level, one member or element per line.
    public var prettySerialized: String {
        var out: [UInt8] = []
        writePretty(to: &out, indent: 0)
        return String(decoding: out, as: UTF8.self)
    }

    func writePretty(to out: inout [UInt8], indent: Int) {
        func newline(_ level: Int) {
            out.append(0x0A)
            out.append(contentsOf: repeatElement(UInt8(ascii: " "), count: 4 * level))
        }
        switch self {
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                newline(indent + 1)
                item.writePretty(to: &out, indent: indent + 1)
            }
            newline(indent)
            out.append(UInt8(ascii: "]"))
        case .object(let object):
            out.append(UInt8(ascii: "{"))
            var first = true
            for (key, value) in object {
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                newline(indent + 1)
                JSON.writeString(key, to: &out)
                out.append(contentsOf: ": ".utf8)
                value.writePretty(to: &out, indent: indent + 1)
            }
            newline(indent)
            out.append(UInt8(ascii: "}"))
        default:
            write(to: &out)
        }
    }

    public func write(to out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .int(let i): out.append(contentsOf: String(i).utf8)
        case .double(let d):
            if d.isFinite {
                // Swift prints the shortest text that reads back to the same
                // double ("1.0", "1e-05", "5e+20"), all valid JSON numbers.
                out.append(contentsOf: d.description.utf8)
            } else {
                out.append(contentsOf: "null".utf8)
            }
        case .string(let s): JSON.writeString(s, to: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                item.write(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let object):
            out.append(UInt8(ascii: "{"))
            var first = true
            for (key, value) in object {
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                JSON.writeString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                value.write(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func writeString(_ s: String, to out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for c in s.utf8 {
            switch c {
            case UInt8(ascii: "\""): out.append(contentsOf: "\\\"".utf8)
            case UInt8(ascii: "\\"): out.append(contentsOf: "\\\\".utf8)
            case 0x0A: out.append(contentsOf: "\\n".utf8)
            case 0x0D: out.append(contentsOf: "\\r".utf8)
            case 0x09: out.append(contentsOf: "\\t".utf8)
            case 0x08: out.append(contentsOf: "\\b".utf8)
            case 0x0C: out.append(contentsOf: "\\f".utf8)
            case 0x00..<0x20, 0x7F:
                out.append(contentsOf: "\\u00".utf8)
                out.append(hex[Int(c >> 4)])
                out.append(hex[Int(c & 15)])
            default: out.append(c)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
