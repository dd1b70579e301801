import Support

/// A display option string that a person typed was wrong; the message says
/// what was expected.
public struct DisplayError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// QEMU option strings through Support's one parser (`QEMUOptions`), with
/// the displays' errors.
enum OptionList {
    static func split(_ text: String) -> [String] { QEMUOptions.split(text) }

    static func keyValue(_ item: String) -> (key: String, value: String?) { QEMUOptions.keyValue(item) }

    /// QEMU's boolean spellings; a bare key means on.
    static func bool(_ value: String?, option: String, in spec: String) throws(DisplayError) -> Bool {
        guard let b = QEMUOptions.bool(value) else { throw DisplayError("\(spec): \(option)=\(value ?? "") is not on or off") }
        return b
    }

    /// A decimal integer within `range`.
    static func integer(_ value: String?, option: String, in spec: String, range: ClosedRange<Int>) throws(DisplayError) -> Int {
        guard let n = QEMUOptions.integer(value, range: range) else {
            throw DisplayError("\(spec): \(option)=\(value ?? "") is not a number from \(range.lowerBound) to \(range.upperBound)")
        }
        return n
    }
}
