// The delivery pipeline shared by every front end (deliver's argv + stdin, LMTP transactions).
//
// 1. Each recipient is resolved: address -> user (or the shared area) -> target folder. A
//    +detail or -m folder is used only if that folder exists and the identity may post to it
//    (`p` in its dovecot-acl; the owner always may); otherwise the message goes to INBOX. An
//    invalid folder name from an address is not an error: it is logged and INBOX is used.
//    A user without INBOX is unknown unless autocreate_post and autocreate_quota >= 0 (and,
//    with autocreate_users: sasldb, the SASL database knows the user: SASLDatabase); such
//    an INBOX is created (whole: MailStore.createUser) when a message is stored, not when the
//    recipient is resolved. No level from the mail root down to the target folder may be a
//    symbolic link (a temporary failure naming it).
// 2. The message is spooled once (Spool.swift) and fsynced.
// 3. Per recipient: quota check (unless ignore-quota; strict counts the incoming message);
//    hard link of the spool file into the folder's tmp/; then, with dovecot-uidlist locked
//    (GroupCommit.swift), rename into new/ under its final name `<base>,S=<size>,W=<vsize>`
//    and append its UID; after the lock, fdatasync of the list and fsync of new/. From there
//    on the message is safely delivered. The quota delta goes to maildirsize under the same
//    lock just before the move (and is taken back if the move fails). A failure to append the UID or the quota
//    delta is logged but does not fail the delivery: the message is on disk, Dovecot gives it
//    a UID when it next looks, and reporting a failure would make Postfix deliver it twice.
// 4. Each recipient gets its own outcome; a failure before the rename removes what it created.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSASLDB
import NestboxSupport

public struct DeliveryTarget: Sendable {
    public var recipient: String
    public var folder: Folder
    public var quota: QuotaRoot
    /// `alice/Work`, `public/News`, for the log.
    public var label: String
    /// Set while the user's INBOX is still to be created (autocreate), with its limits:
    /// resolving creates nothing, `Delivery.prepare(_:)` does when a message is stored. Until
    /// then `folder` does not exist, so nothing may be spooled in its tmp/.
    public var inboxToCreate: QuotaLimits? = nil
}

public struct RecipientResult: Sendable {
    public var recipient: String
    public var outcome: Outcome
    public var mailbox: String?
    public var uid: UInt32?
    /// For the log: what happened, in the Postfix manner.
    public var detail: String

    public init(recipient: String, outcome: Outcome, mailbox: String? = nil, uid: UInt32? = nil, detail: String) {
        self.recipient = recipient
        self.outcome = outcome
        self.mailbox = mailbox
        self.uid = uid
        self.detail = detail
    }
}

public struct Delivery: Sendable {
    public let store: MailStore
    public var config: Config { store.config }
    /// nil when duplicatesuppression is off.
    public let duplicates: DuplicateDB?

    public init(store: MailStore) {
        self.store = store
        duplicates = store.config.duplicateSuppression
            ? DuplicateDB(directory: store.duplicatesDirectory, expiry: store.config.duplicateExpire) : nil
    }

    // MARK: Resolving

    /// Resolves a personal recipient. `folderName` is -m (it wins over the +detail).
    public func resolve(_ address: String, folderName: String?, identity: String?) throws -> DeliveryTarget {
        let r = try store.parseRecipient(address)
        if !config.postUser.isEmpty && r.user == config.postUser.lowercased() {
            guard let name = folderName ?? r.detail else { throw NestboxFailure(.userUnknown, "\(address): \(config.postUser) without a folder") }
            return try resolveShared(name, domain: r.domain, identity: identity, recipient: address)
        }
        let root = try store.userRoot(r)
        let inbox = store.inbox(of: root)
        var inboxToCreate: QuotaLimits? = nil
        // A mailbox this process cannot enter is no unknown user: say why, and defer.
        if !inbox.exists, let problem = store.accessProblem(reaching: inbox.path) {
            throw NestboxFailure(.temporary.with(text: problem), "\(r.address): \(problem)")
        }
        if !inbox.exists {
            guard config.autocreatePost && config.autocreateQuota >= 0 else {
                // The trap: autocreate_post on, autocreate_quota left at -1 (Cyrus's rule).
                let why = config.autocreatePost
                    ? " (autocreate_post is on, but autocreate_quota -1 turns autocreation off: set it to 0 for no limit)" : ""
                throw NestboxFailure(.userUnknown, "\(r.address): no mailbox at \(root)\(why)")
            }
            if config.autocreateOnlySASLUsers { try requireSASLUser(r) }
            // Created when a message is stored (prepare), not now: a transaction that is
            // reset after its RCPTs must not leave empty mailboxes behind.
            // Limits stored by nestbox-quota for the domain or as the default come first.
            inboxToCreate = try QuotaDefaults(store: store).limits(domain: store.usesDomainArea(r) ? r.domain : nil)
                ?? QuotaLimits(bytes: config.autocreateQuota * 1024,
                               messages: config.autocreateQuotaMessages > 0 ? config.autocreateQuotaMessages : nil)
        }
        var target = inbox
        if let wanted = folderName ?? r.detail {
            do {
                let f = try store.folder(wanted, in: root)
                if f.isRoot {
                    target = f
                } else if !f.exists {
                    Log.info("\(r.address): folder \(Names.printable(wanted)) does not exist; delivering to INBOX")
                } else if try ACL.read(folder: f.path).mayPost(identity, owner: r.address) || identity == r.user {
                    target = f
                } else {
                    Log.info("\(r.address): \(identity ?? "anonymous") may not post to \(Names.printable(wanted)); delivering to INBOX")
                }
            } catch let e as NestboxFailure {
                Log.warning("\(r.address): folder \(e.detail); delivering to INBOX")
            }
        }
        // No level from the mail root down to the mailbox may be a symbolic link.
        if inboxToCreate == nil { try target.checkLinks() } else { try Files.checkBeneath(store.root, root) }
        // The mailbox's name for logs and the duplicate key: the domain only where it matters.
        let owner = store.usesDomainArea(r) ? r.address : r.user
        let label = target.isRoot ? owner : "\(owner)/\(target.name)"
        return DeliveryTarget(recipient: address, folder: target, quota: config.quotaRoot(root), label: label,
                              inboxToCreate: inboxToCreate)
    }

    /// With autocreate_users: sasldb, a missing INBOX is made only for a user the SASL database
    /// knows: user and realm as `nestbox-passwd -u` and saslauthd name them (the recipient's
    /// domain with virtdomains; else defaultdomain, else the host name). Unknown: 5.1.1. A
    /// database that cannot be read (missing, unreadable, damaged) is a temporary failure, so a
    /// broken database defers mail instead of bouncing it. One read-only open per look-up.
    func requireSASLUser(_ r: Recipient) throws {
        let realm: String
        if config.virtDomains == .userid, let domain = r.domain {
            realm = domain
        } else {
            realm = config.defaultDomain.isEmpty ? config.serverName : config.defaultDomain
        }
        let database = SASLDatabase(path: config.saslDatabasePath)
        let known: Bool
        do {
            known = try database.knows(user: r.user, realm: realm)
        } catch let failure as NestboxFailure {
            throw NestboxFailure(.temporary, "\(r.address): autocreate_users: sasldb: \(failure.detail)")
        }
        guard known else {
            throw NestboxFailure(.userUnknown, "\(r.address): no mailbox, and \(Names.printable(r.user))@\(Names.printable(realm)) is not in \(database.path) (autocreate_users: sasldb)")
        }
    }

    /// Creates the INBOX a target is waiting for (`inboxToCreate`), with the autocreate folders,
    /// all or nothing (MailStore.createUser). Idempotent: nothing to do once the INBOX exists,
    /// whichever process made it; only the one that made it logs "created INBOX". A full disk
    /// throws 4.3.1 and leaves no mailbox behind.
    public func prepare(_ target: DeliveryTarget) throws {
        guard let limits = target.inboxToCreate else { return }
        let root = target.folder.mailRoot
        if try store.createUser(root: root, limits: limits, folders: config.autocreateInboxFolders) {
            Log.info("\(target.label): created INBOX at \(root) (quota \(limits.line))")
        }
    }

    /// Resolves a shared folder (deliver -m without users, or `postuser+folder`).
    public func resolveShared(_ name: String, domain: String?, identity: String?, recipient: String? = nil) throws -> DeliveryTarget {
        let root = try store.sharedRoot(domain: domain)
        let f: Folder
        do {
            f = try store.folder(name, in: root)
        } catch let e as NestboxFailure {
            throw NestboxFailure(.userUnknown.with(text: "Mailbox unknown"), "shared \(e.detail)")
        }
        guard f.exists, !f.isRoot else {
            throw NestboxFailure(.userUnknown.with(text: "Mailbox unknown"), "shared folder \(Names.printable(name)) does not exist")
        }
        try f.checkLinks()
        guard try ACL.read(folder: f.path).mayPost(identity, owner: nil) else {
            throw NestboxFailure(.noPermission, "\(identity ?? "anonymous") has no p right on shared folder \(f.name)")
        }
        return DeliveryTarget(recipient: recipient ?? "\(MailStore.sharedUser)/\(f.name)", folder: f,
                              quota: config.quotaRoot(root), label: "\(MailStore.sharedUser)/\(f.name)")
    }

    // MARK: Storing

    /// Delivers the spooled message into one target. Never throws: the outcome says it all.
    /// `ignoreQuota` skips the quota check (-q, IGNOREQUOTA).
    public func store(_ message: SpooledMessage, into target: DeliveryTarget, ignoreQuota: Bool) -> RecipientResult {
        var result = RecipientResult(recipient: target.recipient, outcome: .delivered, mailbox: target.label, uid: nil, detail: "delivered")
        // On its way to the folder's commit round (GroupCommit.swift) unless it ends before.
        GroupCommit.shared.expect(target.folder)
        var expected = true
        defer { if expected { GroupCommit.shared.unexpect(target.folder) } }
        let duplicateKey = duplicates == nil ? nil
            : DuplicateDB.key(messageID: message.messageID, date: message.date, mailbox: target.label)
        if let db = duplicates, let key = duplicateKey, db.contains(key) {
            result.detail = "duplicate suppressed"
            return result
        }
        do {
            try prepare(target)
            if !ignoreQuota, let refusal = try quotaRefusal(target, incomingSize: message.size, again: true) { throw refusal }
            let folder = target.folder
            let base = MaildirName.newBase(host: config.serverName)
            let final = MaildirName.stem(base: base, size: message.size, virtualSize: message.virtualSize)
            // Before the rename: a crash after it finds the record, and the file it names.
            if let db = duplicates, let key = duplicateKey { db.recordPending(key, messagePath: "\(folder.path)/new/\(final)") }
            let staged = try stage(message, into: folder, base: base)
            // The quota delta is appended in the commit round, under the lock, just before the
            // move: a kill between the two over-counts one message, which the Maildir++
            // recalculation rules repair as soon as it matters (over quota with a stale or
            // multi-line maildirsize); the other order would under-count, which nothing notices.
            do {
                expected = false
                result.uid = try GroupCommit.shared.commit(staged, as: final, in: folder, label: target.label,
                                                           quota: target.quota, size: message.size,
                                                           lockPolicy: config.lockPolicy, expected: true)
                if staged == message.path { message.consumed() }
            } catch let failure as GroupCommit.Failure {
                if failure.moved {
                    Files.removeQuietly("\(folder.path)/new/\(final)")
                    if staged == message.path { message.consumed() }
                    countQuota(target, bytes: -message.size, messages: -1)
                } else if staged != message.path {
                    Files.removeQuietly(staged)
                }
                throw failure.error
            }
            if let db = duplicates, let key = duplicateKey { db.record(key) }
        } catch let failure as NestboxFailure {
            result.outcome = failure.outcome
            result.detail = failure.detail
            // A local error the permissions explain: the reason goes on the client's line too.
            if failure.outcome == .temporary, let problem = accessProblem(target.folder) {
                result.outcome = .temporary.with(text: problem)
                result.detail = "\(failure.detail) (\(problem))"
            }
        } catch {
            result.outcome = .temporary
            result.detail = "\(error)"
        }
        return result
    }

    /// Why this process cannot store into `folder` (reach it, write it and its tmp/ and new/).
    func accessProblem(_ folder: Folder) -> String? {
        store.accessProblem(reaching: folder.path, writable: true)
            ?? store.accessProblem(reaching: "\(folder.path)/tmp", writable: true)
            ?? store.accessProblem(reaching: "\(folder.path)/new", writable: true)
    }

    /// Appends a delta to the target's maildirsize; a failure is only logged (the next
    /// recalculation repairs the usage).
    private func countQuota(_ target: DeliveryTarget, bytes: Int64, messages: Int64) {
        do {
            try target.quota.append(bytes: bytes, messages: messages)
        } catch {
            Log.warning("\(target.label): maildirsize not updated by \(bytes) bytes, \(messages) messages: \(error)")
        }
    }

    /// The refusal when the target's quota is already used up (or, with lmtp_strict_quota,
    /// would be by a message of `incomingSize`); nil when there is room or no quota.
    /// `again`: the delivery looked at RCPT already (QuotaRoot.current).
    public func quotaRefusal(_ target: DeliveryTarget, incomingSize: Int64?, again: Bool = false) throws -> NestboxFailure? {
        guard let state = try target.quota.current(again: again) else { return nil }
        let incoming = config.strictQuota ? QuotaUsage(bytes: incomingSize ?? 0, messages: 1) : nil
        guard state.isOver(adding: incoming) else { return nil }
        let row: Outcome = config.overQuotaIsPermanent ? .overQuotaPermanent : .overQuota
        return NestboxFailure(row, "over quota: \(state.usage.bytes) bytes, \(state.usage.messages) messages of \(state.limits.line)")
    }

    /// The message's file in `folder`/tmp, ready for GroupCommit to move into new/: the spool
    /// file itself when it was spooled there (one recipient), else a hard link to it (a copy,
    /// fsynced, across file systems) named `base`. Removes what it made on failure.
    func stage(_ message: SpooledMessage, into folder: Folder, base: String) throws -> String {
        // The spool file itself: moved by GroupCommit relative to tmp/ and new/ opened level by
        // level without following a link, so nothing is made by path here.
        if message.isSpooled && message.homeFolder == folder.path {
            return message.path
        }
        // Checked at resolve time; again here, as the link is made by path.
        try folder.checkLinks()
        let tmp = "\(folder.path)/tmp/\(base)"
        if Glibc.link(message.path, tmp) != 0 {
            let code = errno
            guard code == EXDEV || code == EPERM || code == EMLINK else { throw NestboxFailure.system("link \(message.path) to", tmp, errno: code) }
            try copy(message.path, to: tmp)
        }
        return tmp
    }

    private func copy(_ from: String, to: String) throws {
        guard let input = try Files.openForReading(from) else { throw NestboxFailure.system("open", from, errno: ENOENT) }
        defer { close(input) }
        let output = try Files.createExclusive(to)
        do {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
                if n < 0 { if errno == EINTR { continue }; throw NestboxFailure.system("read", from) }
                if n == 0 { break }
                try buffer.withUnsafeBytes { try Files.writeAll(output, UnsafeRawBufferPointer(rebasing: $0[0..<n]), path: to) }
            }
            try Files.fsync(output, path: to)
            try Files.close(output, path: to)
        } catch {
            close(output)
            Files.removeQuietly(to)
            throw error
        }
    }

    // MARK: Trace headers and logs

    /// RFC 5322 date of now, in local time.
    public static func rfc5322Date() -> String {
        var t = time(nil)
        var tmv = tm()
        localtime_r(&t, &tmv)
        var buffer = [CChar](repeating: 0, count: 64)
        let n = strftime(&buffer, buffer.count, "%a, %d %b %Y %H:%M:%S %z", &tmv)
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// One log line per recipient, `key=value` in the Postfix manner.
    public static func logLine(id: String, sender: String?, result: RecipientResult, message: SpooledMessage?,
                               queueID: String? = nil) -> String {
        var parts = ["\(id): from=<\(sender ?? "")>", "to=<\(Names.printable(result.recipient))>"]
        if let queueID { parts.append("queue_id=\(queueID)") }
        if let m = result.mailbox { parts.append("mailbox=\(Names.printable(m))") }
        if let uid = result.uid { parts.append("uid=\(uid)") }
        if let message {
            parts.append("size=\(message.size)")
            if let id = message.messageID { parts.append("msgid=\(Names.printable(id))") }
        }
        let status: String
        if result.outcome.isSuccess { status = "sent (\(result.detail))" }
        else if result.outcome.isTemporary { status = "deferred (\(result.outcome.dsnLine): \(result.detail))" }
        else { status = "bounced (\(result.outcome.dsnLine): \(result.detail))" }
        parts.append("status=\(status)")
        return parts.joined(separator: " ")
    }
}
