// Maildir file names: `<base>[,<key>=<value>...][:2,<flags>]`.
//
// - base: `<secs>.M<usec>P<pid>Q<n>.<host>`, unique per message across every folder; in the
//   host part `/` is written `\057` and `:` `\072`.
// - `,S=` is the exact size of the file and `,W=` its RFC822.SIZE (every LF counted as CRLF).
//   Dovecot trusts both, so they are always computed from the bytes written.
// - The info after `:2,` holds the flags in ASCII order: system letters (D F P R S T), then
//   keyword letters a..z. Unknown letters and any text after a second `,` are kept as they are.
// - The part before `:` (the "stem") is what dovecot-uidlist records; a file keeps its stem for
//   life, only the info changes when flags change.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public struct MaildirName: Equatable, Sendable {
    /// The part before `:`, e.g. `1795703507.M255496P5511Q1.mx,S=36,W=40`.
    public var stem: String
    /// The part after `:2,`: flag letters, possibly followed by `,extra`.
    public var info: String?

    public init(stem: String, info: String?) {
        self.stem = stem
        self.info = info
    }

    public init(_ fileName: String) {
        // Searched as bytes (`:` is ASCII): this runs for every file of a scan.
        if let colon = fileName.utf8.firstIndex(of: UInt8(ascii: ":")) {
            stem = String(fileName[..<colon])
            let rest = fileName[fileName.index(after: colon)...]
            info = rest.hasPrefix("2,") ? String(rest.dropFirst(2)) : String(rest)
        } else {
            stem = fileName
            info = nil
        }
    }

    public var fileName: String {
        guard let info else { return stem }
        return "\(stem):2,\(info)"
    }

    /// The unique base (stem before its first `,`).
    public var base: String {
        // Searched as bytes (`,` is ASCII): Character search is many times slower.
        if let comma = stem.utf8.firstIndex(of: UInt8(ascii: ",")) { return String(stem[..<comma]) }
        return stem
    }

    /// A `,<key>=<digits>` field of the stem.
    /// Read from the bytes, with no allocation: it runs for every file of a folder scan.
    public func field(_ key: Character) -> Int64? {
        guard let k = key.asciiValue else { return nil }
        let bytes = stem.utf8
        guard var start = bytes.firstIndex(of: UInt8(ascii: ",")).map({ bytes.index(after: $0) }) else { return nil }
        while true {
            let end = bytes[start...].firstIndex(of: UInt8(ascii: ",")) ?? bytes.endIndex
            let part = bytes[start..<end]
            if part.count >= 3, part.first == k, part[part.index(after: part.startIndex)] == UInt8(ascii: "=") {
                switch MaildirName.decimal(part.dropFirst(2)) {
                case .value(let v): return v
                case .overflow: return nil
                case .notDigits: break
                }
            }
            if end == bytes.endIndex { return nil }
            start = bytes.index(after: end)
        }
    }

    enum Decimal { case value(Int64), overflow, notDigits }

    /// The value of a field's digits: a field with another character is no size field, one
    /// too large for Int64 is an unusable one.
    static func decimal<C: Collection>(_ digits: C) -> Decimal where C.Element == UInt8 {
        var value: Int64 = 0
        for b in digits {
            guard b >= 48 && b <= 57 else { return .notDigits }
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int64(b - 48))
            if o1 || o2 { return .overflow }
            value = a
        }
        return .value(value)
    }

    public var size: Int64? { field("S") }
    public var virtualSize: Int64? { field("W") }

    /// The flag letters (before any second `,` of the info).
    public var flagLetters: String {
        guard let info else { return "" }
        if let comma = info.utf8.firstIndex(of: UInt8(ascii: ",")) { return String(info[..<comma]) }
        return info
    }

    private var infoExtra: String {
        guard let info, let comma = info.utf8.firstIndex(of: UInt8(ascii: ",")) else { return "" }
        return String(info[comma...])
    }

    public func has(_ letter: Character) -> Bool { flagLetters.contains(letter) }

    /// The same name with another set of flag letters, sorted in ASCII order (unknown letters kept).
    public func with(flags letters: String) -> MaildirName {
        var copy = self
        copy.info = MaildirName.sortedFlags(letters) + infoExtra
        return copy
    }

    public static func sortedFlags(_ letters: String) -> String {
        var seen = Set<Character>()
        var unique: [Character] = []
        for c in letters where !seen.contains(c) {
            seen.insert(c)
            unique.append(c)
        }
        return String(unique.sorted { $0.asciiValue ?? 255 < $1.asciiValue ?? 255 })
    }

    /// Whether a directory entry can be a message at all (not `.`-files, not empty).
    public static func isMessageName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.first != UInt8(ascii: ".") && !name.utf8.contains(UInt8(ascii: "/"))
    }

    // MARK: New names

    /// The host part of new names, escaped as Maildir wants.
    public static func escapedHost(_ host: String) -> String {
        var out = ""
        for c in host {
            switch c {
            case "/": out += "\\057"
            case ":": out += "\\072"
            case ",": out += "\\054"
            default: out.append(c)
            }
        }
        return out
    }

    /// A fresh unique base: seconds and microseconds of now, pid, a per-process counter, host.
    public static func newBase(host: String) -> String {
        var tv = timeval()
        gettimeofday(&tv, nil)
        return "\(tv.tv_sec).M\(tv.tv_usec)P\(getpid())Q\(UniqueCounter.next()).\(escapedHost(host))"
    }

    /// `<base>,S=<size>,W=<vsize>`.
    public static func stem(base: String, size: Int64, virtualSize: Int64) -> String {
        "\(base),S=\(size),W=\(virtualSize)"
    }
}

/// The flags Nestbox understands by letter (the info of a Maildir name).
public enum MaildirFlag: Character, CaseIterable, Sendable {
    case draft = "D", flagged = "F", passed = "P", answered = "R", seen = "S", deleted = "T"

    /// The IMAP name, as doveadm prints it.
    public var imapName: String {
        switch self {
        case .draft: return "\\Draft"
        case .flagged: return "\\Flagged"
        case .passed: return "$Forwarded"  // not an IMAP system flag; kept untouched
        case .answered: return "\\Answered"
        case .seen: return "\\Seen"
        case .deleted: return "\\Deleted"
        }
    }

    public init?(imapName: String) {
        guard let f = MaildirFlag.allCases.first(where: { $0.imapName.lowercased() == imapName.lowercased() && $0 != .passed }) else { return nil }
        self = f
    }
}
