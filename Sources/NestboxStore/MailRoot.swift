// The mail root as maintenance sees it: every user's Maildir++ root, the shared areas, and the
// folders of each, found on disk (the layout is MailStore.swift's).
//
// - A user is a directory `<root>/<user>` holding `cur/`; with `virtdomains: userid` also
//   `<root>/domain/<domain>/<user>` (users of `<root>/<user>` are then those of
//   `defaultdomain`, or of no domain). Names that Names.validateUser refuses (`public`,
//   `domain`, anything starting with `.`, such as `.nestbox`) are never users.
// - The shared area is `<root>/public` (and `<root>/domain/<domain>/public`); it is listed
//   apart from the users.
// - A root's folders are INBOX (the root itself) and every `.A.B` directory beside it that holds
//   `cur/`, its levels decoded from modified UTF-7 (Names.folderName). A directory whose name
//   does not decode is not a folder of ours and is skipped.
// Enumeration takes no lock and follows no symbolic link: a link where a user or a folder should
// be is skipped (nothing below the mail root is ever used through a link).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

/// A Maildir++ root found in the mail root: a user's INBOX or a shared area.
public struct MailboxOwner: Hashable, Sendable {
    /// The user name; `public` for a shared area.
    public var user: String
    /// nil for the default area (`<root>/<user>`, `<root>/public`).
    public var domain: String?
    /// The Maildir++ root (INBOX) directory.
    public var root: String
    public var isShared: Bool { user == MailStore.sharedUser }

    /// `user[@domain]`.
    public var address: String { domain.map { "\(user)@\($0)" } ?? user }
}

public struct MailRoot: Sendable {
    /// The mail root (`partition-default`).
    public let path: String
    public let virtDomains: Config.VirtDomains
    /// The hierarchy separator of folder display names (`/`, or `.` without unixhierarchysep).
    public let separator: Character

    public init(path: String, virtDomains: Config.VirtDomains = .off, separator: Character = "/") {
        self.path = path
        self.virtDomains = virtDomains
        self.separator = separator
    }

    public init(config: Config) {
        self.init(path: config.partition, virtDomains: config.virtDomains, separator: config.hierarchySeparator)
    }

    // MARK: Users and shared areas

    /// Every user, default area first, then by domain and name.
    public func users() throws -> [MailboxOwner] {
        var out: [MailboxOwner] = []
        for area in try areas() {
            for name in try Files.list(area.directory)?.sorted() ?? [] {
                guard (try? Names.validateUser(name)) != nil else { continue }
                let root = "\(area.directory)/\(name)"
                guard MailRoot.isMaildir(root) else { continue }
                out.append(MailboxOwner(user: name, domain: area.domain, root: root))
            }
        }
        return out
    }

    /// Every shared area that exists (`public`, then each domain's).
    public func sharedAreas() throws -> [MailboxOwner] {
        try areas().compactMap { area in
            let root = "\(area.directory)/\(MailStore.sharedUser)"
            return MailRoot.isMaildir(root) || MailRoot.isDirectory(root)
                ? MailboxOwner(user: MailStore.sharedUser, domain: area.domain, root: root) : nil
        }
    }

    /// The directories holding users: the root, then (virtdomains) each domain area.
    private func areas() throws -> [(domain: String?, directory: String)] {
        var out: [(String?, String)] = [(nil, path)]
        guard virtDomains == .userid else { return out }
        let domains = "\(path)/\(MailStore.domainAreas)"
        for d in try Files.list(domains)?.sorted() ?? [] where (try? Names.validateDomain(d)) != nil {
            if MailRoot.isDirectory("\(domains)/\(d)") { out.append((d, "\(domains)/\(d)")) }
        }
        return out
    }

    // MARK: Folders

    /// The folders of a Maildir++ root: INBOX first, then by display name.
    public func folders(of owner: MailboxOwner) throws -> [Folder] {
        var out: [Folder] = []
        if MailRoot.isMaildir(owner.root) {
            out.append(Folder(path: owner.root, mailRoot: owner.root, name: "INBOX", partition: path))
        }
        var named: [Folder] = []
        for directory in try MailRoot.folderDirectories(owner.root, requireCur: true) {
            let base = Files.baseName(directory)
            guard let name = Names.folderName(directory: base, separator: separator) else { continue }
            named.append(Folder(path: directory, mailRoot: owner.root, name: name, partition: path))
        }
        return out + named.sorted { $0.name < $1.name }
    }

    /// The Maildir++ folder directories beside `root` (`.A.B`), not following links: those
    /// holding `cur/`, or (without `requireCur`) `cur/` or `new/`, as the quota counts them.
    public static func folderDirectories(_ root: String, requireCur: Bool) throws -> [String] {
        var out: [String] = []
        for name in try Files.list(root) ?? [] where name.hasPrefix(".") && name != "." && name != ".." {
            let p = "\(root)/\(name)"
            guard isDirectory(p) else { continue }
            if isDirectory("\(p)/cur") || (!requireCur && isDirectory("\(p)/new")) { out.append(p) }
        }
        return out
    }

    /// A directory (not a link to one) holding a `cur/` directory.
    static func isMaildir(_ path: String) -> Bool {
        isDirectory(path) && isDirectory("\(path)/cur")
    }

    /// A directory itself, not a symbolic link to one (Files.isDirectory uses lstat).
    static func isDirectory(_ path: String) -> Bool { Files.isDirectory(path) }
}
