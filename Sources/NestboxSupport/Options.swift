// Command lines, declared once per program and parsed the way Cyrus tools (getopt) parse them.
//
// A program lists its options in an `OptionSpec`; the parser, `--help` and `--version` all come
// from that one list, so the help text cannot drift from what is accepted.
//
// The grammar, as getopt(3) and GNU getopt_long have it:
// - Short flags may be bundled: `-eq` is `-e -q`.
// - A short option that takes a value takes the rest of its word, or else the next word:
//   `-Cfile`, `-C file`, `-rsender`, `-qr sender`. The next word is taken whatever it looks like
//   (`-r -x` sets the sender to `-x`), and may be empty (`-m ""`, which pipe(8) passes).
// - Long options: `--json`, `--name=value`, `--name value`. Names are matched whole (no
//   abbreviations: a later option must not change what an old crontab line means).
// - `--` ends the options; every word after it is an operand. A lone `-` is an operand.
// - Options and operands may be mixed (`deliver alice -q`), as GNU getopt permutes them and as
//   nestbox-deliver has always accepted; `--` is the way to pass an operand that starts with `-`.
// - Any option may be repeated; a value option keeps every value in order (`-o a=1 -o b=2`), and
//   programs that want one value read the last.
// - `-h`/`--help` and `--version` are added to every spec. When given, they win over anything
//   else on the line, including usage errors after them (`--help -x` prints the help).
// Errors are `NestboxFailure`s with the `.usage` row (exit 64): "unknown option -x",
// "option -r needs a value", "option --help takes no value", "unexpected argument alice".

public struct OptionSpec: Sendable {
    public struct Option: Sendable, Equatable {
        /// The name results are looked up by: given, else the long name, else the first letter.
        public let name: String
        public let shorts: [Character]
        public let long: String?
        /// The placeholder shown in help (`file`, `key=value`); nil for a flag.
        public let valueName: String?
        public let help: String
        /// Shown as `[-o key=value]...` in the synopsis.
        public let repeatable: Bool

        public init(name: String? = nil, shorts: [Character], long: String? = nil, valueName: String? = nil,
                    repeatable: Bool = false, help: String) {
            precondition(!shorts.isEmpty || long != nil, "an option needs a letter or a long name")
            self.name = name ?? long ?? String(shorts[0])
            self.shorts = shorts
            self.long = long
            self.valueName = valueName
            self.help = help
            self.repeatable = repeatable
        }

        /// A flag: `-q`, `--json`.
        public static func flag(_ shorts: Character..., long: String? = nil, name: String? = nil, help: String) -> Option {
            Option(name: name, shorts: shorts, long: long, help: help)
        }

        /// An option with a value: `-C file`, `--format=json`.
        public static func value(_ shorts: Character..., long: String? = nil, name: String? = nil, _ valueName: String,
                                 repeatable: Bool = false, help: String) -> Option {
            Option(name: name, shorts: shorts, long: long, valueName: valueName, repeatable: repeatable, help: help)
        }

        public var takesValue: Bool { valueName != nil }

        /// `-r, -f addr` / `--json` / `-C file`.
        var helpLabel: String {
            var names = shorts.map { "-\($0)" }
            if let long { names.append("--\(long)") }
            return names.joined(separator: ", ") + (valueName.map { " \($0)" } ?? "")
        }

        /// `[-C file]`, `[-o key=value]...`, `[-r addr | -f addr]`.
        var synopsisItem: String {
            let names = shorts.isEmpty ? ["--\(long!)"] : shorts.map { "-\($0)" }
            let forms = names.map { $0 + (valueName.map { " \($0)" } ?? "") }
            return "[\(forms.joined(separator: " | "))]" + (repeatable ? "..." : "")
        }
    }

    public static let help = Option.flag("h", long: "help", help: "print this help and exit")
    public static let version = Option.flag(long: "version", help: "print the version and exit")

    public let program: String
    public let version: String
    /// The operands in the synopsis, e.g. `user...`; empty when the program takes none (an
    /// operand is then a usage error).
    public let operands: String
    /// More synopsis lines after the generated one, e.g. `[options] -m folder`.
    public let otherForms: [String]
    /// What the program does, in a sentence or two.
    public let summary: String
    public let options: [Option]
    /// After the option list: the exit statuses, a pointer to the manual.
    public let epilogue: String

    public init(program: String, version: String, operands: String = "", otherForms: [String] = [],
                summary: String, options: [Option], epilogue: String = "") {
        self.program = program
        self.version = version
        self.operands = operands
        self.otherForms = otherForms
        self.summary = summary
        self.options = options + [OptionSpec.help, OptionSpec.version]
        self.epilogue = epilogue
        var seen = Set<String>()
        for o in self.options {
            for s in o.shorts { precondition(seen.insert("-\(s)").inserted, "option -\(s) declared twice") }
            if let l = o.long { precondition(seen.insert("--\(l)").inserted, "option --\(l) declared twice") }
        }
    }

    /// The same spec with `more` options before --help and --version.
    public func adding(_ more: [Option]) -> OptionSpec {
        let own = options.filter { $0.name != OptionSpec.help.name && $0.name != OptionSpec.version.name }
        return OptionSpec(program: program, version: version, operands: operands, otherForms: otherForms,
                          summary: summary, options: own + more, epilogue: epilogue)
    }

    public var versionText: String { "\(program) \(version)\n" }

    /// The usage synopsis (wrapped under the program name), the summary, one line per option,
    /// the epilogue.
    public var helpText: String {
        let lead = "usage: \(program) "
        let indent = String(repeating: " ", count: lead.count)
        var items = options.filter { $0.name != OptionSpec.help.name && $0.name != OptionSpec.version.name }.map(\.synopsisItem)
        if !operands.isEmpty { items.append(operands) }
        var lines: [String] = []
        var line = lead
        for item in items {
            if line.count > lead.count && line.count + 1 + item.count > 95 {
                lines.append(line)
                line = indent
            }
            line += (line.count > lead.count ? " " : "") + item
        }
        lines.append(line)
        let padding = String(repeating: " ", count: "usage:".count)
        for form in otherForms { lines.append("\(padding) \(program) \(form)") }
        lines.append("\(padding) \(program) --help | --version")
        lines.append(summary)
        let width = min(14, options.map(\.helpLabel.count).max() ?? 0)
        for o in options {
            let label = o.helpLabel
            if label.count <= width {
                lines.append("  " + label + String(repeating: " ", count: width - label.count) + " " + o.help)
            } else {
                lines.append("  " + label)
                lines.append("  " + String(repeating: " ", count: width) + " " + o.help)
            }
        }
        var text = lines.joined(separator: "\n") + "\n"
        if !epilogue.isEmpty { text += epilogue + (epilogue.hasSuffix("\n") ? "" : "\n") }
        return text
    }

    /// Parses `arguments` (without the program name).
    public func parse(_ arguments: [String]) throws -> ParsedOptions {
        var result = ParsedOptions()
        var firstError: NestboxFailure? = nil
        func fail(_ text: String) {
            if firstError == nil { firstError = NestboxFailure(.usage, text) }
        }
        var i = 0
        scan: while i < arguments.count {
            let word = arguments[i]
            i += 1
            if word == "--" {
                result.operands += arguments[i...]
                break scan
            }
            if word.hasPrefix("--") {
                let body = word.dropFirst(2)
                let name = body.firstIndex(of: "=").map { String(body[..<$0]) } ?? String(body)
                let attached = body.firstIndex(of: "=").map { String(body[body.index(after: $0)...]) }
                guard let option = options.first(where: { $0.long == name }) else {
                    fail("unknown option --\(printable(name))")
                    continue
                }
                if option.takesValue {
                    if let attached {
                        result.record(option, attached)
                    } else if i < arguments.count {
                        result.record(option, arguments[i])
                        i += 1
                    } else {
                        fail("option --\(name) needs a value")
                    }
                } else if attached != nil {
                    fail("option --\(name) takes no value")
                } else {
                    result.record(option, nil)
                }
                continue
            }
            guard word.hasPrefix("-"), word.count > 1 else {
                result.operands.append(word)
                continue
            }
            var rest = word.dropFirst()
            while let letter = rest.first {
                rest = rest.dropFirst()
                guard let option = options.first(where: { $0.shorts.contains(letter) }) else {
                    fail("unknown option -\(printable(String(letter)))")
                    continue
                }
                guard option.takesValue else {
                    result.record(option, nil)
                    continue
                }
                if !rest.isEmpty {
                    result.record(option, String(rest))
                } else if i < arguments.count {
                    result.record(option, arguments[i])
                    i += 1
                } else {
                    fail("option -\(letter) needs a value")
                }
                break
            }
        }
        if operands.isEmpty, let extra = result.operands.first {
            fail("unexpected argument \(printable(extra))")
        }
        if result.has(OptionSpec.help.name) {
            result.request = .help
        } else if result.has(OptionSpec.version.name) {
            result.request = .version
        } else if let firstError {
            throw firstError
        }
        return result
    }
}

/// What a command line said: each option as often as it was given, the operands in order.
public struct ParsedOptions: Sendable, Equatable {
    public enum Request: Sendable, Equatable { case run, help, version }

    public var request: Request = .run
    /// (option name, value) in command-line order; nil for a flag.
    public private(set) var occurrences: [Occurrence] = []
    public var operands: [String] = []

    public struct Occurrence: Sendable, Equatable {
        public let name: String
        public let value: String?

        public init(name: String, value: String?) {
            self.name = name
            self.value = value
        }
    }

    public init(request: Request = .run, occurrences: [Occurrence] = [], operands: [String] = []) {
        self.request = request
        self.occurrences = occurrences
        self.operands = operands
    }

    mutating func record(_ option: OptionSpec.Option, _ value: String?) {
        occurrences.append(Occurrence(name: option.name, value: value))
    }

    public func has(_ name: String) -> Bool { occurrences.contains { $0.name == name } }
    public func count(_ name: String) -> Int { occurrences.filter { $0.name == name }.count }
    /// Every value given to `name`, in order.
    public func values(_ name: String) -> [String] { occurrences.compactMap { $0.name == name ? $0.value : nil } }
    /// The last value given to `name` (a later `-C` wins, as with getopt loops).
    public func value(_ name: String) -> String? { values(name).last }
}
