// The configuration file: `key: value` lines with imapd.conf's key names where Cyrus has the
// same option, `#` comments, blank lines ignored. Every key has a default, so every program runs
// with no file at all. An unknown key, a duplicate key, a line without a colon or a bad value is
// reported as "file:line: reason" and the program exits 78 before it touches any mail.
//
// Where the file comes from: `-C file`, else $NESTBOX_CONF, else /etc/nestbox/nestbox.conf if it
// exists, else nothing (the built-in defaults). `-o key=value` overrides any of them.
//
// What a value must look like is carried by the key table, never by the key's name in code: the
// key's kind says how it is written (a number, yes/no, a duration...) and its rules what it may
// be (a minimum, an absolute path, one of a few words, loopback addresses only). A new key is a
// row; typed accessors for the keys only one component reads live next to that component (the
// LMTP keys' in NestboxLMTP).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public struct Config: Sendable {
    public static let defaultPath = "/etc/nestbox/nestbox.conf"

    /// How a value is written.
    public enum Kind: Sendable { case string, bool, integer, facility, duration, octal, listeners }

    /// What a well-written value must also be; checked in this order after the kind.
    public enum Rule: Sendable, Equatable {
        /// An integer of at least this.
        case minimum(Int64)
        /// A path starting with `/`.
        case absolutePath
        /// One of these words, in any case.
        case oneOf([String], shown: String)
        /// Listeners on loopback addresses only.
        case loopbackOnly
        /// Empty, or a path starting with `/`.
        case absolutePathOrEmpty
        /// Words separated by spaces, each one of these (in any case).
        case wordsFrom([String])
        /// `name=duration[+flagged]` items separated by spaces (`purge_rules`, parseRules).
        case retentionRules
        /// Empty, `stderr`, or a path starting with `/` (`log_file`).
        case logFile
    }

    public struct Key: Sendable {
        public let name: String
        public let kind: Kind
        public let defaultValue: String
        public let summary: String
        public let rules: [Rule]

        public init(name: String, kind: Kind, defaultValue: String, summary: String, rules: [Rule] = []) {
            self.name = name
            self.kind = kind
            self.defaultValue = defaultValue
            self.summary = summary
            self.rules = rules
        }
    }

    /// Every key, its default and one line of meaning (the README and nestbox.conf(5) list the same).
    public static let keys: [Key] = [
        Key(name: "partition-default", kind: .string, defaultValue: "/var/spool/nestbox", summary: "the mail root: users' Maildirs live below it",
            rules: [.absolutePath]),
        Key(name: "unixhierarchysep", kind: .bool, defaultValue: "yes", summary: "`/` separates folder levels in names given to Nestbox (else `.`)"),
        Key(name: "virtdomains", kind: .string, defaultValue: "off", summary: "`off`: the recipient's domain is ignored; `userid`/`on`: mail is kept per domain",
            rules: [.oneOf(["off", "userid", "on", "no", "yes", "0", "1", "false", "true"], shown: "off, userid or on")]),
        Key(name: "defaultdomain", kind: .string, defaultValue: "", summary: "with virtdomains, the domain whose users live in the domain-less area"),
        Key(name: "mail_owner", kind: .string, defaultValue: "vmail", summary: "the account that owns the spool; programs started as root switch to it"),
        Key(name: "servername", kind: .string, defaultValue: "", summary: "host name in Received: lines and Maildir file names (empty: the host's fully qualified name in Received:, gethostname in file names)"),
        Key(name: "postuser", kind: .string, defaultValue: "", summary: "local part that means \"deliver to a shared folder\" (`postuser+folder`)"),
        Key(name: "lmtp_downcase_rcpt", kind: .bool, defaultValue: "yes", summary: "lowercase a recipient's local part and domain (never the +detail)"),
        Key(name: "lmtp_over_quota_perm_failure", kind: .bool, defaultValue: "no", summary: "over quota is permanent (5.2.2, exit 73) instead of temporary (4.2.2, exit 75)"),
        Key(name: "lmtp_strict_quota", kind: .bool, defaultValue: "no", summary: "the incoming message's size counts when checking the quota"),
        Key(name: "quotawarnpercent", kind: .integer, defaultValue: "90", summary: "nestbox-quota warns about quota roots used above this percentage",
            rules: [.minimum(0)]),
        Key(name: "quota_count", kind: .string, defaultValue: "dovecot", summary: "`dovecot`: quota usage counts every message, as Dovecot enforces it; `courier`: not Trash, not \\Deleted",
            rules: [.oneOf(["dovecot", "courier"], shown: "dovecot or courier")]),
        Key(name: "maxmessagesize", kind: .integer, defaultValue: "0", summary: "largest message accepted, in bytes; 0: no limit of our own",
            rules: [.minimum(0)]),
        Key(name: "autocreate_post", kind: .bool, defaultValue: "no", summary: "create a missing INBOX on first delivery (needs autocreate_quota >= 0)"),
        Key(name: "autocreate_quota", kind: .integer, defaultValue: "-1", summary: "storage limit of an autocreated INBOX in KiB; 0: unlimited; -1: no autocreate",
            rules: [.minimum(-1)]),
        Key(name: "autocreate_quota_messages", kind: .integer, defaultValue: "-1", summary: "message limit of an autocreated INBOX; 0 or -1: unlimited",
            rules: [.minimum(-1)]),
        Key(name: "autocreate_inbox_folders", kind: .string, defaultValue: "", summary: "`|`-separated folders created (and subscribed) with a new INBOX"),
        Key(name: "autocreate_users", kind: .string, defaultValue: "any", summary: "whose INBOX a delivery may create: `any` recipient, or only users the SASL database (sasl_sasldb_path) knows",
            rules: [.oneOf(["any", "sasldb"], shown: "any or sasldb")]),
        Key(name: "duplicatesuppression", kind: .bool, defaultValue: "yes", summary: "store a message (same Message-ID and Date) only once per mailbox"),
        Key(name: "duplicate_expire", kind: .duration, defaultValue: "3d", summary: "how long a delivery is remembered for duplicate suppression (`s`, `m`, `h`, `d`, `w`)"),
        Key(name: "lmtpsocket", kind: .string, defaultValue: "/run/nestbox/lmtp", summary: "UNIX socket of nestbox-lmtpd; empty: none"),
        Key(name: "lmtpsocket_mode", kind: .octal, defaultValue: "0660", summary: "mode of the LMTP socket"),
        Key(name: "lmtpsocket_owner", kind: .string, defaultValue: "", summary: "owner of the LMTP socket (empty: mail_owner)"),
        Key(name: "lmtpsocket_group", kind: .string, defaultValue: "", summary: "group of the LMTP socket, e.g. postfix (empty: the owner's group)"),
        Key(name: "lmtp_listen", kind: .listeners, defaultValue: "", summary: "TCP listeners of nestbox-lmtpd, `host:port` separated by spaces; loopback addresses only",
            rules: [.loopbackOnly]),
        Key(name: "lmtp_max_connections", kind: .integer, defaultValue: "100", summary: "concurrent LMTP sessions; more are told `421 4.3.2` and closed", rules: [.minimum(1)]),
        Key(name: "lmtp_idle_timeout", kind: .integer, defaultValue: "300", summary: "seconds an LMTP session may stay silent before `421 4.4.2`", rules: [.minimum(1)]),
        Key(name: "lmtp_max_recipients", kind: .integer, defaultValue: "500", summary: "recipients per LMTP transaction; more get `452 4.5.3`", rules: [.minimum(1)]),
        Key(name: "purge_rules", kind: .string, defaultValue: "", summary: "nestbox-purge --rules: `folder=age` items, e.g. `Trash=30d Junk=14d`; `+flagged` expires \\Flagged too",
            rules: [.retentionRules]),
        Key(name: "mbox_spool_directory", kind: .string, defaultValue: "", summary: "directory of mbox spool files nestbox-purge --mbox-spool purges, e.g. /var/mail; empty: none",
            rules: [.absolutePathOrEmpty]),
        Key(name: "mbox_write_locks", kind: .string, defaultValue: "dotlock fcntl", summary: "locks taken, in this order, to rewrite an mbox: dotlock, fcntl, flock",
            rules: [.wordsFrom(["dotlock", "fcntl", "flock"])]),
        Key(name: "sasl_sasldb_path", kind: .string, defaultValue: "/etc/sasldb2", summary: "the SASL user database (Berkeley DB), as libsasl2's sasldb plugin reads it",
            rules: [.absolutePath]),
        Key(name: "sasl_sasldb_group", kind: .string, defaultValue: "sasl", summary: "group of a SASL database nestbox-passwd creates (mode 0640, owner root); empty: root's"),
        Key(name: "lock_timeout", kind: .integer, defaultValue: "122", summary: "seconds to wait for a mailbox lock before a temporary failure (Dovecot waits 122)", rules: [.minimum(1)]),
        Key(name: "syslog_facility", kind: .facility, defaultValue: "mail", summary: "syslog facility of log lines"),
        Key(name: "log_file", kind: .string, defaultValue: "", summary: "empty: log to syslog; `stderr`: to standard error; an absolute path: append to that file (hosts without syslog)",
            rules: [.logFile]),
    ]

    public enum VirtDomains: String, Sendable { case off, userid }

    /// Where the values came from, for messages ("the built-in defaults" when no file).
    public private(set) var source: String = "built-in defaults"
    private var values: [String: String] = [:]
    /// Where each key set by the file or by `-o` was written, for errors found later.
    private var origins: [String: Origin] = [:]

    /// The place a key was written: `file:line`, or `-o:n` for the n-th `-o`.
    public struct Origin: Sendable, Equatable, CustomStringConvertible {
        public let file: String
        public let line: Int
        public var description: String { line > 0 ? "\(file):\(line)" : file }
    }

    public init() {
        for key in Config.keys { values[key.name] = key.defaultValue }
    }

    // MARK: Typed access

    public func string(_ name: String) -> String {
        precondition(values[name] != nil, "unknown configuration key \(name)")
        return values[name]!
    }

    /// Where `name` was set; nil when it has its built-in default.
    public func origin(of name: String) -> Origin? { origins[name] }

    /// The keys the file or `-o` set, in the order of the key table (what `--check-config`
    /// prints without `--all`).
    public var keysSet: [Key] { Config.keys.filter { origins[$0.name] != nil } }

    /// A configuration error found after parsing (an account that does not exist, a path that
    /// cannot be used, two keys that disagree), naming the key as written and where:
    /// "/etc/nestbox/nestbox.conf:4: mail_owner vmial: no such user", "-o:1: ...", or for a
    /// built-in default "mail_owner vmail (built-in default): ...".
    public func failure(_ name: String, _ reason: String, outcome: Outcome = .config) -> NestboxFailure {
        NestboxFailure(outcome, describe(name, reason))
    }

    /// `failure`'s text.
    public func describe(_ name: String, _ reason: String) -> String {
        let value = string(name)
        let shown = value.isEmpty ? "\(name) (empty)" : "\(name) \(value)"
        let place = origins[name].map { "\($0): \(shown)" } ?? "\(shown) (built-in default)"
        return "\(place): \(reason)\(Config.commentHint(value))"
    }

    /// A value holding `#` after a space is most likely a comment written after the value.
    public static func commentHint(_ value: String) -> String {
        guard let hash = value.firstIndex(of: "#"), hash > value.startIndex,
              value[value.index(before: hash)] == " " || value[value.index(before: hash)] == "\t" else { return "" }
        return " (comments are whole lines starting with #: \"\(value[hash...])\" is read as part of the value)"
    }

    /// The known key nearest to a mistyped one (edit distance, at most a third of its length,
    /// at least 2), for "did you mean".
    public static func suggestion(for name: String) -> String? {
        let wanted = Array(name.lowercased())
        var best: (String, Int)? = nil
        for key in keys {
            let d = editDistance(wanted, Array(key.name))
            if d < (best?.1 ?? Int.max) { best = (key.name, d) }
        }
        guard let (key, distance) = best, distance <= max(2, wanted.count / 3) else { return nil }
        return key
    }

    /// Levenshtein distance.
    static func editDistance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        var previous = Array(0...b.count)
        for (i, x) in a.enumerated() {
            var current = [i + 1] + [Int](repeating: 0, count: b.count)
            for (j, y) in b.enumerated() {
                current[j + 1] = Swift.min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }

    public func bool(_ name: String) -> Bool { Config.parseBool(string(name))! }
    public func integer(_ name: String) -> Int64 { Int64(string(name))! }

    public var partition: String { string("partition-default") }
    public var unixHierarchySep: Bool { bool("unixhierarchysep") }
    public var hierarchySeparator: Character { unixHierarchySep ? "/" : "." }
    public var virtDomains: VirtDomains {
        let v = string("virtdomains").lowercased()
        return (v == "off" || Config.parseBool(v) == false) ? .off : .userid
    }
    public var defaultDomain: String { string("defaultdomain").lowercased() }
    public var mailOwner: String { string("mail_owner") }
    public var serverName: String {
        let s = string("servername")
        return s.isEmpty ? Host.name : s
    }
    /// The host in `Received:` lines: `servername`, else the fully qualified host name.
    public var receivedHost: String {
        let s = string("servername")
        return s.isEmpty ? Host.fullyQualifiedName : s
    }
    public var postUser: String { string("postuser") }
    public var downcaseRecipient: Bool { bool("lmtp_downcase_rcpt") }
    public var overQuotaIsPermanent: Bool { bool("lmtp_over_quota_perm_failure") }
    public var strictQuota: Bool { bool("lmtp_strict_quota") }
    public var quotaWarnPercent: Int64 { integer("quotawarnpercent") }
    /// `quota_count`: "dovecot" or "courier".
    public var quotaCount: String { string("quota_count").lowercased() }
    public var maxMessageSize: Int64 { integer("maxmessagesize") }
    public var autocreatePost: Bool { bool("autocreate_post") }
    public var autocreateQuota: Int64 { integer("autocreate_quota") }
    public var autocreateQuotaMessages: Int64 { integer("autocreate_quota_messages") }
    public var autocreateInboxFolders: [String] {
        string("autocreate_inbox_folders").split(separator: "|").map { $0.trimmingSpaces() }.filter { !$0.isEmpty }
    }
    /// autocreate_users: sasldb (only users the SASL database knows get an INBOX made).
    public var autocreateOnlySASLUsers: Bool { string("autocreate_users").lowercased() == "sasldb" }
    public var saslDatabasePath: String { string("sasl_sasldb_path") }
    public var duplicateSuppression: Bool { bool("duplicatesuppression") }
    public var duplicateExpire: Double { Config.parseDuration(string("duplicate_expire"))! }
    public var lockTimeout: Double { Double(integer("lock_timeout")) }
    /// The locks' wait, as a value to pass down (see Tool.lockPolicy).
    public var lockPolicy: DotLock.Options { DotLock.Options(timeout: lockTimeout) }
    public var syslogFacility: Int32 { Log.facility(named: string("syslog_facility"))! }
    /// `log_file`: syslog (empty), standard error, or a file.
    public var logDestination: Log.Destination {
        let v = string("log_file")
        if v.isEmpty { return .syslog }
        return v == "stderr" ? .stderr : .file(v)
    }

    // MARK: Loading

    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let file: String
        public let line: Int
        public let reason: String
        public var description: String { line > 0 ? "\(file):\(line): \(reason)" : "\(file): \(reason)" }
    }

    /// Loads per the rules at the top of this file. `explicitPath` is `-C`.
    public static func load(explicitPath: String?, environment: [String: String] = currentEnvironment(),
                            overrides: [String] = []) throws -> Config {
        var config = Config()
        if let path = explicitPath ?? environment["NESTBOX_CONF"].flatMap({ $0.isEmpty ? nil : $0 }) {
            guard let bytes = try? Files.read(path, limit: 1 << 20) else {
                throw ParseError(file: path, line: 0, reason: "cannot read: \(errnoText(errno))")
            }
            try config.parse(String(decoding: bytes, as: UTF8.self), file: path)
        } else if let bytes = try? Files.read(defaultPath, limit: 1 << 20) {
            try config.parse(String(decoding: bytes, as: UTF8.self), file: defaultPath)
        }
        for (i, item) in overrides.enumerated() {
            guard let eq = item.firstIndex(of: "=") else {
                throw ParseError(file: "-o", line: i + 1, reason: "expected key=value, got \"\(item)\"")
            }
            try config.set(String(item[..<eq]).trimmingSpaces(), String(item[item.index(after: eq)...]).trimmingSpaces(),
                           file: "-o", line: i + 1)
        }
        return config
    }

    public mutating func parse(_ text: String, file: String) throws {
        source = file
        var seen: [String: Int] = [:]
        var number = 0
        for raw in text.textLines() {
            number += 1
            let line = raw.trimmingSpaces()
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let colon = line.firstIndex(of: ":") else {
                throw ParseError(file: file, line: number, reason: "expected \"key: value\", got \"\(line.prefix(80))\"")
            }
            let key = String(line[..<colon]).trimmingSpaces()
            let value = String(line[line.index(after: colon)...]).trimmingSpaces()
            if let first = seen[key] {
                throw ParseError(file: file, line: number, reason: "\(key) is already set on line \(first)")
            }
            seen[key] = number
            try set(key, value, file: file, line: number)
        }
    }

    public mutating func set(_ key: String, _ value: String, file: String, line: Int) throws {
        guard let spec = Config.keys.first(where: { $0.name == key }) else {
            let hint = Config.suggestion(for: key).map { " (did you mean \($0)?)" } ?? ""
            throw ParseError(file: file, line: line, reason: "unknown key \"\(key.prefix(80))\"\(hint)")
        }
        do {
            try check(spec, value, file: file, line: line)
        } catch let e as ParseError {
            throw ParseError(file: e.file, line: e.line, reason: e.reason + Config.commentHint(value))
        }
        values[key] = value
        origins[key] = Origin(file: file, line: line)
    }

    /// Throws when `value` is not of `spec`'s kind or breaks one of its rules.
    private func check(_ spec: Key, _ value: String, file: String, line: Int) throws {
        let key = spec.name
        if value.utf8.contains(where: { $0 < 0x20 || $0 == 0x7f }) {
            throw ParseError(file: file, line: line, reason: "\(key): control character in value")
        }
        switch spec.kind {
        case .string:
            break
        case .bool:
            guard Config.parseBool(value) != nil else {
                throw ParseError(file: file, line: line, reason: "\(key): expected yes/no, on/off, true/false or 1/0, got \"\(value)\"")
            }
        case .integer:
            guard Int64(value) != nil else {
                throw ParseError(file: file, line: line, reason: "\(key): expected a whole number, got \"\(value)\"")
            }
        case .duration:
            guard Config.parseDuration(value) != nil else {
                throw ParseError(file: file, line: line, reason: "\(key): expected a duration like 3d, 12h, 30m or 45s, got \"\(value)\"")
            }
        case .octal:
            guard let m = Int(value, radix: 8), m >= 0, m <= 0o777 else {
                throw ParseError(file: file, line: line, reason: "\(key): expected an octal mode like 0660, got \"\(value)\"")
            }
        case .listeners:
            for item in value.split(separator: " ") where Listener.parse(String(item)) == nil {
                throw ParseError(file: file, line: line, reason: "\(key): expected host:port, got \"\(item)\"")
            }
        case .facility:
            guard Log.facility(named: value) != nil else {
                throw ParseError(file: file, line: line, reason: "\(key): unknown syslog facility \"\(value)\"")
            }
        }
        if let reason = spec.rules.lazy.compactMap({ Config.broken($0, value) }).first {
            throw ParseError(file: file, line: line, reason: "\(key): \(reason)")
        }
    }

    /// Why `value` (already of the key's kind) breaks `rule`; nil if it keeps it.
    static func broken(_ rule: Rule, _ value: String) -> String? {
        switch rule {
        case .minimum(let minimum):
            return Int64(value).map { $0 < minimum } == true ? "must be \(minimum) or more" : nil
        case .absolutePath:
            return value.hasPrefix("/") ? nil : "must be an absolute path, got \"\(value)\""
        case .oneOf(let words, let shown):
            return words.contains(value.lowercased()) ? nil : "expected \(shown), got \"\(value)\""
        case .loopbackOnly:
            let outside = value.split(separator: " ").first { Listener.parse(String($0))?.isLoopback == false }
            return outside.map { "\($0) is not a loopback address (LMTP has no authentication here)" }
        case .absolutePathOrEmpty:
            return value.isEmpty ? nil : broken(.absolutePath, value)
        case .logFile:
            return value.isEmpty || value == "stderr" || value.hasPrefix("/") ? nil
                : "expected empty (syslog), stderr or an absolute path, got \"\(value)\""
        case .wordsFrom(let words):
            let bad = value.split(separator: " ").first { !words.contains($0.lowercased()) }
            return bad.map { "expected words from \(words.joined(separator: ", ")), got \"\($0)\"" }
        case .retentionRules:
            return parseRules(value) == nil ? "expected items like Trash=30d or Junk=14d+flagged, got \"\(value)\"" : nil
        }
    }

    public static func parseBool(_ value: String) -> Bool? {
        switch value.lowercased() {
        case "yes", "on", "true", "1", "t", "y": return true
        case "no", "off", "false", "0", "f", "n": return false
        default: return nil
        }
    }

    /// "3d", "12h", "30m", "45s", "2w" or plain seconds.
    public static func parseDuration(_ text: String) -> Double? { parseDuration(text, plainUnit: 1) }

    /// A duration in seconds: numbers each followed by a unit (`s`, `m`, `h`, `d`, `w`), one
    /// after the other (`30d`, `1d12h`, `90m`), or one plain number counted in `plainUnit`
    /// seconds (ipurge's `-d 30` is days, cyr_expire's `-E 3` too). Nil when malformed.
    public static func parseDuration(_ text: String, plainUnit: Double) -> Double? {
        let t = text.trimmingSpaces().lowercased()
        if let n = Double(t), n >= 0, n.isFinite { return n * plainUnit }
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800]
        var total = 0.0
        var number = ""
        for c in t {
            if let unit = units[c] {
                guard let n = Double(number), n >= 0, n.isFinite else { return nil }
                total += n * unit
                number = ""
            } else if c.isASCII && (c.isNumber || c == ".") {
                number.append(c)
            } else {
                return nil
            }
        }
        return number.isEmpty && !t.isEmpty ? total : nil
    }

    /// One `purge_rules` item: folder name pattern, age in seconds, whether \Flagged expires too.
    public struct RetentionRule: Equatable, Sendable {
        public let name: String
        public let age: Double
        public let includeFlagged: Bool
    }

    /// `Trash=30d Junk=14d+flagged` as rules; nil when an item is malformed (empty: no rule).
    public static func parseRules(_ text: String) -> [RetentionRule]? {
        var rules: [RetentionRule] = []
        for item in text.split(separator: " ") {
            guard let eq = item.lastIndex(of: "=") else { return nil }
            let name = String(item[..<eq])
            var duration = String(item[item.index(after: eq)...])
            let flagged = duration.lowercased().hasSuffix("+flagged")
            if flagged { duration = String(duration.dropLast("+flagged".count)) }
            guard !name.isEmpty, let age = parseDuration(duration, plainUnit: 86400) else { return nil }
            rules.append(RetentionRule(name: name, age: age, includeFlagged: flagged))
        }
        return rules
    }

    public static func currentEnvironment() -> [String: String] {
        var env: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return env
    }
}

extension StringProtocol {
    /// The lines of a text file, LF or CRLF (in Swift "\r\n" is one Character, so a plain
    /// split on "\n" would not see CRLF line ends at all).
    public func textLines(omittingEmpty: Bool = false) -> [SubSequence] {
        split(omittingEmptySubsequences: omittingEmpty, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
    }

    /// The text without leading and trailing spaces and tabs (no Foundation needed).
    public func trimmingSpaces() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = lastIndex(where: { !isSpace($0) })!
        return String(self[first...last])
    }
}

/// A TCP listener address: `host:port`, `[v6]:port`.
public struct Listener: Equatable, Sendable, CustomStringConvertible {
    public let host: String
    public let port: Int

    public static func parse(_ text: String) -> Listener? {
        var host: String
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = String(text[..<colon])
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let port = Int(portText), port > 0, port < 65536 else { return nil }
        if host == "localhost" { host = "127.0.0.1" }
        return Listener(host: host, port: port)
    }

    public var isLoopback: Bool { host.hasPrefix("127.") || host == "::1" }
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
