// Where mail lives, and what a recipient address means.
//
// Layout below the mail root (`partition-default`):
//   <root>/<user>/                  a user's Maildir++ root (INBOX): every user with virtdomains
//                                   off; with virtdomains, users without a domain or of
//                                   `defaultdomain`
//   <root>/public/                  shared folders (of `defaultdomain` with virtdomains)
//   <root>/domain/<domain>/<user>/  with virtdomains, users of every other domain
//   <root>/domain/<domain>/public/  with virtdomains, that domain's shared folders
//   <root>/.nestbox/spool/          messages being delivered
//   <root>/.nestbox/create/         mailboxes being created (see "Creating mailboxes" below)
//   <root>/.nestbox/locks/          each nestbox-lmtpd's lock file, linked as its dotlocks
//                                   (DotLockHitch.swift)
// The domain is lowercased for the path. `public` and `domain` are not user names, and neither
// is anything starting with `.` (Names.swift): so a user's root is never the shared area, a
// domain area or inside another user's Maildir, and nothing is ever created inside a Maildir's
// cur/, new/ or tmp/. Changing this layout moves every mailbox: Dovecot serves the same tree
// with `mail_location = maildir:<root>/%n`, and `maildir:<root>/domain/%d/%n` for hosted domains.
//
// A recipient is `[<]local[+detail][@domain][>]`; the local part may be quoted. Local part and
// domain are lowercased when `lmtp_downcase_rcpt` is set; the detail never is.
//
// Creating mailboxes is all or nothing. The whole INBOX (cur/ new/ tmp/, maildirsize with its
// limits, the default folders with their maildirfolder files, subscriptions) is built under a
// unique temporary name in <root>/.nestbox/create/ (the same file system, never seen as a
// user), fsynced, then renamed into place, and the parent directory is fsynced. Dovecot and
// every delivery see no mailbox or a complete one: a full disk or a crash half-way leaves a
// temporary tree, never an INBOX without its quota that later deliveries would take as made.
// If the rename finds the name taken (ENOTEMPTY, EEXIST), another process won: the temporary
// tree is removed and its mailbox used. Trees left by a crash are removed by the next creation
// once they are 36 hours old, Maildir's rule for tmp/ (a creation takes seconds).

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
    /// The directory holding the per-domain areas (virtdomains).
    public static let domainAreas = "domain"

    public init(config: Config) {
        self.config = config
    }

    /// Nestbox's own area below the mail root (never a user: names starting with `.` are not).
    public var internalDirectory: String { "\(root)/.nestbox" }
    public var spoolDirectory: String { "\(internalDirectory)/spool" }
    /// The duplicate suppression records (DuplicateDB.swift).
    public var duplicatesDirectory: String { "\(internalDirectory)/duplicates" }
    /// Where mailboxes are built before they are renamed into place.
    public var creationDirectory: String { "\(internalDirectory)/create" }
    /// Where long-running processes keep the file their dotlocks are links to (made by the
    /// first of them, DotLockHitch.swift).
    public var locksDirectory: String { "\(internalDirectory)/locks" }
    public static let locksRelative = ".nestbox/locks"

    /// Makes the mail root and the internal directories if they are missing. A failure this
    /// process's permissions explain says so, on the client's line too (`accessProblem`).
    public func prepare() throws {
        do {
            try makeParents(root)
            // Looked at before made: they exist at every delivery but the first.
            for dir in [internalDirectory, spoolDirectory, creationDirectory] where !Files.isDirectory(dir) {
                try Files.makeDirectory(dir)
            }
        } catch let failure as NestboxFailure {
            guard let reason = accessProblem() else { throw failure }
            throw NestboxFailure(failure.outcome.with(text: reason), reason)
        }
    }

    /// Why this process cannot use the mail root and Nestbox's directories in it, in one line
    /// that names nothing outside the mail root and that a DSN line or an LMTP reply may carry
    /// ("mail root /var/spool/nestbox not writable by uid 1000: owner root, mode 0755;
    /// mail_owner is vmail"); nil when the permissions allow what `prepare` does.
    public func accessProblem() -> String? {
        let who = Access.Who.current
        let suffix = "; mail_owner is \(config.mailOwner)"
        var st = stat()
        if lstat(root, &st) != 0 && errno == ENOENT {
            // Created by prepare: the nearest directory above must let us in and write.
            var above = Files.directoryName(root)
            while above != "/" && lstat(above, &st) != 0 && errno == ENOENT { above = Files.directoryName(above) }
            if Access.directoryProblem(above, label: "", for: who, writable: true) != nil {
                return "mail root \(root) does not exist and cannot be created by \(who.label)\(suffix)"
            }
            return nil
        }
        let levels = [(root, "mail root"), (internalDirectory, "directory"), (spoolDirectory, "directory"),
                      (creationDirectory, "directory")]
        for (i, (path, label)) in levels.enumerated() {
            // A level must be writable when something is still to be made in it.
            let writable = i == 0 ? !Files.exists(internalDirectory)
                : i == 1 ? !Files.exists(spoolDirectory) || !Files.exists(creationDirectory) : true
            if let problem = Access.directoryProblem(path, label: label, for: who, writable: writable) {
                return problem + suffix
            }
            if !Files.exists(path) { break }
        }
        return nil
    }

    /// Why this process cannot enter `path` (a mailbox's directory below the mail root) or a
    /// level above it down from the mail root, or (`writable`) create in it; nil when it can,
    /// or when a level is missing.
    public func accessProblem(reaching path: String, writable: Bool = false) -> String? {
        guard let relative = try? Files.relativePath(path, below: root) else { return nil }
        let who = Access.Who.current
        var current = root
        for level in [""] + relative.split(separator: "/").map(String.init) {
            if !level.isEmpty { current += "/" + level }
            guard Files.exists(current) else { return nil }
            if let problem = Access.directoryProblem(current, label: level.isEmpty ? "mail root" : "mailbox directory",
                                                     for: who, writable: writable && current == path) {
                return problem + "; mail_owner is \(config.mailOwner)"
            }
        }
        return nil
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

    /// mkdir -p; a directory it makes is fsynced into its parent.
    private func makeParents(_ path: String) throws {
        var current = ""
        for part in path.split(separator: "/") {
            let parent = current.isEmpty ? "/" : current
            current += "/" + part
            if !Files.isDirectory(current), try Files.makeDirectory(current) { try Files.fsyncDirectory(parent) }
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
        if usesDomainArea(r), let d = r.domain { return "\(try domainArea(d))/\(r.user)" }
        return "\(root)/\(r.user)"
    }

    /// The shared folders' root (per domain with virtdomains).
    public func sharedRoot(domain: String?) throws -> String {
        if config.virtDomains == .userid, let d = domain, d.lowercased() != config.defaultDomain {
            return "\(try domainArea(d))/\(MailStore.sharedUser)"
        }
        return "\(root)/\(MailStore.sharedUser)"
    }

    /// `<root>/domain/<domain>`, the domain lowercased.
    private func domainArea(_ domain: String) throws -> String {
        try Names.validateDomain(domain)
        return "\(root)/\(MailStore.domainAreas)/\(domain.lowercased())"
    }

    /// The folder `name` below `mailRoot` (INBOX is the root itself).
    public func folder(_ name: String, in mailRoot: String) throws -> Folder {
        let levels = try Names.folderLevels(name, separator: config.hierarchySeparator)
        if levels.isEmpty { return inbox(of: mailRoot) }
        return Folder(path: "\(mailRoot)/\(Names.directoryName(levels))", mailRoot: mailRoot,
                      name: levels.joined(separator: String(config.hierarchySeparator)), partition: root)
    }

    public func inbox(of mailRoot: String) -> Folder {
        Folder(path: mailRoot, mailRoot: mailRoot, name: "INBOX", partition: root)
    }

    // MARK: Creating mailboxes

    /// Creates a mailbox root (a user's INBOX, or the shared area) with `limits` in maildirsize
    /// and `folders` created and subscribed, all or nothing (see the top of this file). Returns
    /// false, changing nothing, when the INBOX exists already or another process made it first.
    /// A folder name that is not valid is logged and skipped; any other failure is thrown
    /// (a full disk as 4.3.1) and leaves nothing at `mailRoot`.
    @discardableResult
    public func createUser(root mailRoot: String, limits: QuotaLimits?, folders: [String]) throws -> Bool {
        if inbox(of: mailRoot).exists { return false }
        let parent = Files.directoryName(mailRoot)
        // The mail root as configured; below it, every level is made and opened without
        // following a link, and the mailbox is renamed into place relative to its parent's
        // descriptor: it lands below the mail root or nowhere.
        try makeParents(root)
        let parentFD = try Files.makeDirectoryBeneath(root, try Files.relativePath(parent, below: root))
        defer { close(parentFD) }
        let creationFD = try Files.makeDirectoryBeneath(root, try Files.relativePath(creationDirectory, below: root))
        defer { close(creationFD) }
        cleanCreations()
        let building = try makeCreationTree()
        do {
            try build(building, limits: limits, folders: folders)
        } catch {
            MailStore.removeTree(building)
            throw error
        }
        if renameat(creationFD, Files.baseName(building), parentFD, Files.baseName(mailRoot)) != 0 {
            let code = errno
            MailStore.removeTree(building)
            guard code == ENOTEMPTY || code == EEXIST else { throw NestboxFailure.system("rename \(building) to", mailRoot, errno: code) }
            guard inbox(of: mailRoot).exists else {
                throw NestboxFailure(.temporary, "create INBOX \(mailRoot): something that is not a mailbox is in the way")
            }
            return false
        }
        try Files.fsync(parentFD, path: parent)
        return true
    }

    /// Fills the temporary tree `mailRoot`; every directory and file in it is fsynced.
    private func build(_ mailRoot: String, limits: QuotaLimits?, folders: [String]) throws {
        try inbox(of: mailRoot).create()
        if let limits { try QuotaRoot(root: mailRoot).recalculate(limits: limits) }
        var subscribed: [[String]] = []
        for name in folders {
            let f: Folder
            let levels: [String]
            do {
                f = try folder(name, in: mailRoot)
                levels = try Names.folderLevels(name, separator: config.hierarchySeparator)
            } catch {
                Log.warning("autocreate_inbox_folders: \(Names.printable(name)): \(error)")
                continue
            }
            if f.isRoot { continue }
            try f.create()
            subscribed.append(levels.map(ModifiedUTF7.encode))
        }
        if !subscribed.isEmpty { try Subscriptions.add(subscribed, root: mailRoot, lockPolicy: config.lockPolicy) }
    }

    /// A new, empty directory with a unique name in the creation directory.
    private func makeCreationTree() throws -> String {
        while true {
            let path = "\(creationDirectory)/\(Int(wallSeconds())).P\(getpid())Q\(UniqueCounter.next()).\(hexString(randomBytes(4)))"
            if mkdir(path, Files.directoryMode) == 0 { return path }
            if errno != EEXIST { throw NestboxFailure.system("mkdir", path) }
        }
    }

    /// Removes the temporary trees of creations that died (crash, kill) more than `age`
    /// seconds ago, by the mtime of the tree's top directory (its last change: nothing else
    /// touches these trees). Returns how many.
    @discardableResult
    public func cleanCreations(olderThan age: Double = 36 * 3600) -> Int {
        var removed = 0
        for name in (try? Files.list(creationDirectory)) ?? [] {
            let path = "\(creationDirectory)/\(name)"
            guard let st = try? Files.status(path) else { continue }
            if wallSeconds() - Double(st.st_mtim.tv_sec) > age {
                MailStore.removeTree(path)
                removed += 1
            }
        }
        return removed
    }

    /// rm -rf, never following a symbolic link; errors are ignored (what stays is retried by
    /// the next cleanup).
    static func removeTree(_ path: String) {
        guard let st = try? Files.status(path) else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for name in (try? Files.list(path)) ?? [] { removeTree("\(path)/\(name)") }
            rmdir(path)
        } else {
            unlink(path)
        }
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

    public static func add(_ mailboxes: [[String]], root: String, lockPolicy: DotLock.Options = DotLock.Options()) throws {
        let lock = try DotLock.acquire("\(root)/subscriptions.lock", watching: ["\(root)/subscriptions"], options: lockPolicy)
        defer { lock.release() }
        var all = try read(root: root)
        for m in mailboxes where !all.contains(m) { all.append(m) }
        var text = "V\t2\n\n"
        for m in all { text += m.joined(separator: "\t") + "\n" }
        try Files.replace("\(root)/subscriptions", with: Array(text.utf8))
    }
}
