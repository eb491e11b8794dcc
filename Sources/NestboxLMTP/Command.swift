// LMTP commands (RFC 2033 over RFC 5321), parsed from one command line without its CRLF.
// Parsing is pure: no state, no I/O. Parameters are those Nestbox advertises: SIZE, BODY, AUTH,
// SMTPUTF8 on MAIL; IGNOREQUOTA on RCPT. Anything else is refused with 555 by the session.

public enum Command: Equatable, Sendable {
    case lhlo(String)
    case helo(String)  // HELO or EHLO: refused in LMTP
    case mail(path: String, parameters: [Parameter])
    case rcpt(path: String, parameters: [Parameter])
    case data
    case bdat(size: Int, last: Bool)
    case rset
    case noop
    case vrfy(String)
    case quit
    case help
    case starttls
    case unknown(String)
    case syntaxError(verb: String, reason: String)

    public struct Parameter: Equatable, Sendable {
        public var keyword: String  // uppercased
        public var value: String?
    }

    /// The limit on a command line (RFC 5321 4.5.3.1.4 sets 512 octets for a command line;
    /// extensions may add to it: Nestbox accepts lines up to this size).
    public static let maxLineLength = 2048

    public static func parse(_ line: String) -> Command {
        let verbEnd = line.firstIndex(of: " ") ?? line.endIndex
        let verb = line[..<verbEnd].uppercased()
        let rest = verbEnd < line.endIndex ? String(line[line.index(after: verbEnd)...]) : ""
        switch verb {
        case "LHLO":
            let domain = rest.trimmingCharacters()
            return domain.isEmpty ? .syntaxError(verb: verb, reason: "Syntax: LHLO hostname") : .lhlo(domain)
        case "HELO", "EHLO": return .helo(verb)
        case "MAIL":
            guard let (path, params) = parsePath(rest, prefix: "FROM:") else {
                return .syntaxError(verb: verb, reason: "Syntax: MAIL FROM:<address>")
            }
            return .mail(path: path, parameters: params)
        case "RCPT":
            guard let (path, params) = parsePath(rest, prefix: "TO:"), !path.isEmpty else {
                return .syntaxError(verb: verb, reason: "Syntax: RCPT TO:<address>")
            }
            return .rcpt(path: path, parameters: params)
        case "DATA": return rest.trimmingCharacters().isEmpty ? .data : .syntaxError(verb: verb, reason: "Syntax: DATA")
        case "BDAT":
            let parts = rest.split(separator: " ")
            guard (1...2).contains(parts.count), let n = Int(parts[0]), n >= 0, parts[0].allSatisfy({ $0.isASCII && $0.isNumber }) else {
                return .syntaxError(verb: verb, reason: "Syntax: BDAT size [LAST]")
            }
            if parts.count == 2 && parts[1].uppercased() != "LAST" {
                return .syntaxError(verb: verb, reason: "Syntax: BDAT size [LAST]")
            }
            return .bdat(size: n, last: parts.count == 2)
        case "RSET": return .rset
        case "NOOP": return .noop
        case "VRFY": return .vrfy(rest)
        case "QUIT": return .quit
        case "HELP": return .help
        case "STARTTLS": return .starttls
        default: return .unknown(String(verb.prefix(20)))
        }
    }

    /// `FROM:<path> params` / `TO:<path> params`. The path may contain quoted spaces.
    static func parsePath(_ text: String, prefix: String) -> (String, [Parameter])? {
        var s = Substring(text)
        guard s.uppercased().hasPrefix(prefix) else { return nil }
        s = s.dropFirst(prefix.count)
        while s.first == " " { s = s.dropFirst() }  // tolerated, as Postfix does
        guard s.first == "<" else { return nil }
        var i = s.index(after: s.startIndex)
        var inQuotes = false
        var escaped = false
        var close: Substring.Index? = nil
        while i < s.endIndex {
            let c = s[i]
            if escaped { escaped = false }
            else if c == "\\" { escaped = true }
            else if c == "\"" { inQuotes.toggle() }
            else if c == ">" && !inQuotes { close = i; break }
            i = s.index(after: i)
        }
        guard let close else { return nil }
        var path = String(s[s.index(after: s.startIndex)..<close])
        // A source route (@a,@b:user@c) is allowed by RFC 5321 and ignored.
        if path.hasPrefix("@"), let colon = path.firstIndex(of: ":") { path = String(path[path.index(after: colon)...]) }
        var params: [Parameter] = []
        for token in s[s.index(after: close)...].split(separator: " ") {
            if let eq = token.firstIndex(of: "=") {
                params.append(Parameter(keyword: token[..<eq].uppercased(), value: String(token[token.index(after: eq)...])))
            } else {
                params.append(Parameter(keyword: token.uppercased(), value: nil))
            }
        }
        return (path, params)
    }
}

extension StringProtocol {
    func trimmingCharacters() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = lastIndex(where: { !isSpace($0) })!
        return String(self[first...last])
    }
}
