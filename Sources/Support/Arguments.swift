/// One option of a subcommand's command line, in the order given.
public struct ParsedOption: Equatable, Sendable {
    /// The option as written, without any `=value` (`--socket`, `-o`).
    public let name: String
    /// Its value, or nil for a flag.
    public let value: String?
}

/// A command line that does not fit what the subcommand takes.
public struct UsageError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The one parser for the subcommands' arguments (`xenvfb xenstored`,
/// `screenshot`, the test tool, the benchmark): `--name value`,
/// `--name=value`, `-o value` and flags, each checked against what the
/// subcommand takes. (The device model's own QEMU-style command line has its
/// parser in Control.)
public enum SubcommandArguments {
    /// Parses `arguments`. `valued` names the options that take a value,
    /// `flags` those that take none; anything else is an error.
    public static func parse(_ arguments: [String], valued: Set<String>, flags: Set<String> = []) throws(UsageError) -> [ParsedOption] {
        var out: [ParsedOption] = []
        var i = 0
        while i < arguments.count {
            var name = arguments[i]
            var inline: String?
            if name.hasPrefix("--"), let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            if valued.contains(name) {
                if let inline {
                    out.append(ParsedOption(name: name, value: inline))
                } else {
                    guard i + 1 < arguments.count else { throw UsageError("\(name) needs a value") }
                    i += 1
                    out.append(ParsedOption(name: name, value: arguments[i]))
                }
            } else if flags.contains(name) {
                guard inline == nil else { throw UsageError("\(name) takes no value") }
                out.append(ParsedOption(name: name, value: nil))
            } else {
                throw UsageError("unknown argument '\(printable(arguments[i]))'")
            }
            i += 1
        }
        return out
    }

    /// `text` with control characters escaped, for error messages and logs.
    public static func printable(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars.prefix(200) {
            if scalar.value < 0x20 || scalar.value == 0x7f { out += "\\u{\(String(scalar.value, radix: 16))}" } else { out.unicodeScalars.append(scalar) }
        }
        return text.unicodeScalars.count > 200 ? out + "..." : out
    }
}
