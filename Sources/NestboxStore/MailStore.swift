// Where mail lives, and what a recipient address means.
//
// Layout below the mail root (`partition-default`):
//   <root>/<user>/                 a user's Maildir++ root (INBOX), with virtdomains off or for
//                                  users of `defaultdomain`
//   <root>/<domain>/<user>/        with virtdomains, users of other domains
//   <root>/public/                 shared folders (`public` is not a user name)
//   <root>/.nestbox/spool/         messages being delivered
// Dovecot serves the same with `mail_location = maildir:<root>/%n` (or `%d/%n`).
//
// A recipient is `[<]local[+detail][@domain][>]`; the local part may be quoted. Local part and
// domain are lowercased when `lmtp_downcase_rcpt` is set; the detail never is.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public struct Recipient: Equatable, Sendable {
    public var user: String
    public var domain: String?
    public var detail: String?

    /// `user[@domain]`, as logs and ACLs name the owner.
    public var address: String { domain.map { "\(user)@\($0)" } ?? user }
}

public struct MailStore: Sendable {
    public let config: Config
    public var root: String { config.partition }
    public static let sharedUser = "public"

    public init(config: Config) {
        self.config = config
    }

    public var spoolDirectory: String { "\(root)/.nestbox/spool" }

    /// Makes the mail root and the internal directories if they are missing.
    public func prepare() throws {
        try makeParents(root)
        try Files.makeDirectory("\(root)/.nestbox")
        try Files.makeDirectory(spoolDirectory)
    }

    /// Removes spool files left by a process that died mid-delivery: older than 36 hours by
    /// ctime, Maildir's rule for tmp/ (a live delivery never takes that long). Returns how many.
    @discardableResult
    public func cleanSpool(olderThan age: Double = 36 * 3600) throws -> Int {
        var removed = 0
        for name in try Files.list(spoolDirectory) ?? [] {
            let path = "\(spoolDirectory)/\(name)"
            guard let st = try Files.status(path), (st.st_mode & S_IFMT) == S_IFREG else { continue }
            if wallSeconds() - Double(st.st_ctim.tv_sec) > age {
                Files.removeQuietly(path)
                removed += 1
            }
        }
        return removed
    }

    private func makeParents(_ path: String) throws {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if !Files.isDirectory(current) { try Files.makeDirectory(current) }
        }
    }

    /// Parses an address into a recipient. Throws 5.1.3 for anything that cannot name a user.
    public func parseRecipient(_ raw: String) throws -> Recipient {
        var text = raw.trimmingSpaces()
        if text.hasPrefix("<") && text.hasSuffix(">") && text.count >= 2 { text = String(text.dropFirst().dropLast()) }
        var local = text
        var domain: String? = nil
        if let at = text.lastIndex(of: "@"), !(text.hasPrefix("\"") && text[at...].contains("\"")) {
            local = String(text[..<at])
            domain = String(text[text.index(after: at)...])
        }
        if local.hasPrefix("\"") && local.hasSuffix("\"") && local.count >= 2 {
            var unquoted = ""
            var escaped = false
            for c in local.dropFirst().dropLast() {
                if escaped { unquoted.append(c); escaped = false }
                else if c == "\\" { escaped = true }
                else { unquoted.append(c) }
            }
            local = unquoted
        }
        var user = local
        var detail: String? = nil
        if let plus = local.firstIndex(of: "+") {
            user = String(local[..<plus])
            detail = String(local[local.index(after: plus)...])
            if detail!.isEmpty { detail = nil }
        }
        if config.downcaseRecipient {
            user = user.lowercased()
            domain = domain?.lowercased()
        }
        if let d = domain, d.isEmpty { domain = nil }
        guard !user.isEmpty else { throw Names.invalid("recipient", raw, "no user name") }
        return Recipient(user: user, domain: domain, detail: detail)
    }

    /// Whether the recipient lives in a per-domain area (virtdomains, not defaultdomain).
    public func usesDomainArea(_ r: Recipient) -> Bool {
        guard config.virtDomains == .userid, let d = r.domain else { return false }
        return d.lowercased() != config.defaultDomain
    }

    /// The user's Maildir++ root. Throws 5.1.3 for names that cannot be on disk.
    public func userRoot(_ r: Recipient) throws -> String {
        try Names.validateUser(r.user)
        if usesDomainArea(r), let d = r.domain {
            try Names.validateDomain(d)
            return "\(root)/\(d)/\(r.user)"
        }
        return "\(root)/\(r.user)"
    }

    /// The shared folders' root (per domain with virtdomains).
    public func sharedRoot(domain: String?) throws -> String {
        if config.virtDomains == .userid, let d = domain, d.lowercased() != config.defaultDomain {
            try Names.validateDomain(d)
            return "\(root)/\(d)/\(MailStore.sharedUser)"
        }
        return "\(root)/\(MailStore.sharedUser)"
    }

    /// The folder `name` below `mailRoot` (INBOX is the root itself).
    public func folder(_ name: String, in mailRoot: String) throws -> Folder {
        let levels = try Names.folderLevels(name, separator: config.hierarchySeparator)
        if levels.isEmpty { return Folder(path: mailRoot, mailRoot: mailRoot, name: "INBOX") }
        return Folder(path: "\(mailRoot)/\(Names.directoryName(levels))", mailRoot: mailRoot,
                      name: levels.joined(separator: String(config.hierarchySeparator)))
    }

    public func inbox(of mailRoot: String) -> Folder {
        Folder(path: mailRoot, mailRoot: mailRoot, name: "INBOX")
    }

    // MARK: Creating mailboxes

    /// Creates a user's INBOX with limits and default folders (subscribed). Idempotent.
    public func createUser(root mailRoot: String, limits: QuotaLimits?, folders: [String]) throws {
        try makeParents(Files.directoryName(mailRoot))
        try inbox(of: mailRoot).create()
        if let limits {
            let quota = QuotaRoot(root: mailRoot)
            if !Files.exists(quota.path) { try quota.recalculate(limits: limits) }
        }
        var subscribed: [[String]] = []
        for name in folders {
            do {
                let f = try folder(name, in: mailRoot)
                try f.create()
                subscribed.append(try Names.folderLevels(name, separator: config.hierarchySeparator).map(ModifiedUTF7.encode))
            } catch {
                Log.warning("autocreate_inbox_folders: \(Names.printable(name)): \(error)")
            }
        }
        if !subscribed.isEmpty { try Subscriptions.add(subscribed, root: mailRoot) }
    }
}

/// The `subscriptions` file of a mail root (version 2: `V\t2`, an empty line, then one mailbox
/// per line with its levels separated by TAB, in storage form).
public enum Subscriptions {
    public static func read(root: String) throws -> [[String]] {
        guard let bytes = try Files.read("\(root)/subscriptions", limit: 1 << 22) else { return [] }
        var lines = String(decoding: bytes, as: UTF8.self).textLines(omittingEmpty: true)
        if lines.first == "V\t2" { lines.removeFirst() }
        return lines.map { $0.split(separator: "\t").map(String.init) }
    }

    public static func add(_ mailboxes: [[String]], root: String) throws {
        let lock = try DotLock.acquire("\(root)/subscriptions.lock", watching: ["\(root)/subscriptions"])
        defer { lock.release() }
        var all = try read(root: root)
        for m in mailboxes where !all.contains(m) { all.append(m) }
        var text = "V\t2\n\n"
        for m in all { text += m.joined(separator: "\t") + "\n" }
        try Files.replace("\(root)/subscriptions", with: Array(text.utf8))
    }
}
