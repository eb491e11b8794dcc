// Mailbox names as administrators type them (Cyrus's habits, CYRUS-COMPAT.md), resolved to the
// folders of MailRoot's enumeration.
//
// The canonical name of a mailbox, with separator `/` (`unixhierarchysep: yes`) or `.` (no):
//   user/alice               alice's INBOX          user.alice
//   user/alice/Lists/Work    her folder Lists/Work  user.alice.Lists.Work
//   News/Today               shared folder          News.Today
// and, with `virtdomains: userid`, `@<domain>` after the name for every domain but the default
// one (`user/bob@example.org`, `News@example.org`); `@<defaultdomain>` is accepted and dropped.
// A shared area's own INBOX has no name.
// Typed forms accepted besides the canonical one: a bare user name (`alice`, `alice@example.org`)
// for that user's INBOX when such a user exists (otherwise it is a shared folder's name), and
// `user/alice/INBOX` for `user/alice`.
// Patterns use IMAP LIST rules (RFC 3501 6.3.8): `*` matches anything, `%` anything but the
// separator; they are matched against canonical names. Without `@`, a pattern matches the
// default area only; `user/*@*` matches every domain. Matching is case-sensitive (folder names
// are), except domains; a typed name (not a pattern) may also spell `user` and `INBOX` in any case.

import NestboxSupport

public struct ResolvedMailbox: Equatable, Sendable {
    /// The canonical name (see the top of this file).
    public var name: String
    public var owner: MailboxOwner
    public var folder: Folder

    public static func == (a: ResolvedMailbox, b: ResolvedMailbox) -> Bool {
        a.name == b.name && a.owner == b.owner && a.folder.path == b.folder.path
    }
}

public struct MailboxNames: Sendable {
    public let mailRoot: MailRoot
    /// `defaultdomain`, lowercased ("" when unset).
    public let defaultDomain: String
    public var separator: Character { mailRoot.separator }
    public static let userPrefix = "user"

    public init(mailRoot: MailRoot, defaultDomain: String = "") {
        self.mailRoot = mailRoot
        self.defaultDomain = defaultDomain.lowercased()
    }

    public init(config: Config) {
        self.init(mailRoot: MailRoot(config: config), defaultDomain: config.defaultDomain)
    }

    /// Every mailbox of the mail root: each user's folders, then the shared folders.
    public func all() throws -> [ResolvedMailbox] {
        var out: [ResolvedMailbox] = []
        for owner in try mailRoot.users() + mailRoot.sharedAreas() {
            for folder in try mailRoot.folders(of: owner) {
                guard let name = canonicalName(owner, folder) else { continue }
                out.append(ResolvedMailbox(name: name, owner: owner, folder: folder))
            }
        }
        return out
    }

    /// The canonical name of `folder` of `owner`; nil for a shared area's INBOX.
    public func canonicalName(_ owner: MailboxOwner, _ folder: Folder) -> String? {
        let sep = String(separator)
        var local: String
        if owner.isShared {
            if folder.isRoot { return nil }
            local = folder.name
        } else {
            local = MailboxNames.userPrefix + sep + owner.user
            if !folder.isRoot { local += sep + folder.name }
        }
        if let d = owner.domain, d != defaultDomain { local += "@" + d }
        return local
    }

    /// The mailboxes `typed` names: one for a name, any number for a pattern (`*`, `%`); none
    /// when nothing exists by that name.
    public func resolve(_ typed: String) throws -> [ResolvedMailbox] {
        let (local, domain) = split(typed)
        let everything = try all()
        if local.contains("*") || local.contains("%") {
            return everything.filter { m in
                let (name, d) = split(m.name)
                return MailboxNames.matches(pattern: local, name, separator: separator)
                    && domainMatches(domain, d)
            }
        }
        var wanted = [canonical(local, domain: domain)]
        // A bare user name: that user's INBOX, if the user exists.
        if !local.contains(separator), let user = everything.first(where: {
            !$0.owner.isShared && $0.owner.user == local && $0.owner.domain.flatMap(normalizedDomain) == domain && $0.folder.isRoot
        }) {
            wanted = [user.name]
        }
        return everything.filter { wanted.contains($0.name) }
    }

    /// The canonical spelling of a typed non-pattern name: `user` prefix and a trailing
    /// `INBOX` level normalized, the default domain dropped.
    private func canonical(_ local: String, domain: String?) -> String {
        var levels = local.split(separator: separator, omittingEmptySubsequences: false).map(String.init)
        if levels.count >= 2, levels[0].lowercased() == MailboxNames.userPrefix {
            levels[0] = MailboxNames.userPrefix
            if levels.count >= 3, levels[2].uppercased() == "INBOX" { levels.remove(at: 2) }
        }
        var name = levels.joined(separator: String(separator))
        if let domain { name += "@" + domain }
        return name
    }

    /// Splits `name@domain` (only with virtdomains); the domain lowercased, nil for the default.
    private func split(_ typed: String) -> (String, String?) {
        guard mailRoot.virtDomains == .userid, let at = typed.lastIndex(of: "@") else { return (typed, nil) }
        let d = normalizedDomain(String(typed[typed.index(after: at)...]))
        return (String(typed[..<at]), d)
    }

    private func normalizedDomain(_ d: String) -> String? {
        let lower = d.lowercased()
        return lower.isEmpty || lower == defaultDomain ? nil : lower
    }

    private func domainMatches(_ pattern: String?, _ domain: String?) -> Bool {
        guard let pattern else { return domain == nil }
        if pattern == "*" || pattern == "%" { return true }
        guard let domain else { return false }
        return MailboxNames.matches(pattern: pattern, domain, separator: "@")
    }

    /// IMAP LIST matching: `*` any characters, `%` any characters but `separator`.
    public static func matches(pattern: String, _ name: String, separator: Character) -> Bool {
        let p = Array(pattern), n = Array(name)
        // memo[i][j]: pattern from i matches name from j.
        var memo = [[Bool?]](repeating: [Bool?](repeating: nil, count: n.count + 1), count: p.count + 1)
        func go(_ i: Int, _ j: Int) -> Bool {
            if let known = memo[i][j] { return known }
            let result: Bool
            if i == p.count {
                result = j == n.count
            } else if p[i] == "*" {
                result = go(i + 1, j) || (j < n.count && go(i, j + 1))
            } else if p[i] == "%" {
                result = go(i + 1, j) || (j < n.count && n[j] != separator && go(i, j + 1))
            } else {
                result = j < n.count && p[i] == n[j] && go(i + 1, j + 1)
            }
            memo[i][j] = result
            return result
        }
        return go(0, 0)
    }
}

/// The mailboxes a tool's arguments select, each once, in the order added; the names that
/// matched nothing, as typed, for the "no such mailbox" lines and exit 67.
public struct MailboxSelection: Sendable {
    public let names: MailboxNames
    /// Every mailbox of the mail root (MailboxNames.all), read once.
    public let everything: [ResolvedMailbox]
    public private(set) var mailboxes: [ResolvedMailbox] = []
    public private(set) var unknown: [String] = []

    public init(_ names: MailboxNames) throws {
        self.names = names
        everything = try names.all()
    }

    /// Adds `m` unless it is there already.
    public mutating func add(_ m: ResolvedMailbox) {
        if !mailboxes.contains(where: { $0.folder.path == m.folder.path }) { mailboxes.append(m) }
    }

    /// The mailboxes `typed` names (MailboxNames.resolve); when none, `shown` (what the
    /// administrator typed) is kept as unknown. Adds nothing: the caller decides.
    public mutating func resolve(_ typed: String, shown: String) throws -> [ResolvedMailbox] {
        let found = try names.resolve(typed)
        if found.isEmpty { unknown.append(shown) }
        return found
    }
}
