// The SASL user database as nestbox-passwd changes it: names checked before anything is
// written, one writer at a time, the file's owner and mode kept, and a result that says what
// happened (saslpasswd2 silently creates on a change, changes on a create, and exits 0 on
// several failures: CYRUS-COMPAT.md).
//
// Invariants:
// - Writers take `<database>.lock` (a DotLock, removed after) around the existence check and the
//   write: libsasl2's Berkeley DB is opened without an environment, so two unlocked writers
//   can lose each other's records or corrupt a page. Readers (saslauthd, smtpd, deliveries)
//   take no lock, as libsasl2's own readers never do.
// - A database this code creates is 0640, owned by root (when run as root) and by the group
//   `sasl_sasldb_group`, from its first byte (umask 0137 while libsasl2 creates it). An
//   existing database keeps the owner, group and mode it had before every change.
// - A user exists while any record `user NUL realm NUL *` is left; `delete` removes them all,
//   SCRAM's `authPassword` and every `cmusaslsecret*` included, and checks that none is left.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSASLDB
import NestboxSupport

/// A user name and its realm, checked: no control characters, no `@` in either part, at most
/// `maximumLength` bytes each, neither empty.
public struct SASLName: Sendable, Equatable, CustomStringConvertible {
    public let user: String
    public let realm: String

    /// sasldb keys have no limit, but Postfix, saslauthd and IMAP logins cut names well below
    /// this; a longer name is a mistake (a pasted line), not a user.
    public static let maximumLength = 255

    public var description: String { "\(printable(user))@\(printable(realm))" }

    /// `typed` is `user` or `user@realm`; `realm` is -u; `defaultRealm` is used when neither
    /// names one (saslpasswd2: the host name).
    public init(_ typed: String, realm given: String?, defaultRealm: String) throws {
        var user = typed
        var realm = given
        if let at = typed.firstIndex(of: "@") {
            user = String(typed[..<at])
            let named = String(typed[typed.index(after: at)...])
            if named.contains("@") {
                throw NestboxFailure(.usage, "user name \(printable(typed)): realm given twice (more than one @)")
            }
            if let given, given != named {
                throw NestboxFailure(.usage, "user name \(printable(typed)): realm given twice (-u \(printable(given)) and @\(printable(named)))")
            }
            realm = named
        }
        try SASLName.check("user name", user, typed)
        let r = realm ?? defaultRealm
        try SASLName.check("realm", r, typed)
        self.user = user
        self.realm = r
    }

    static func check(_ what: String, _ value: String, _ typed: String) throws {
        if value.isEmpty { throw NestboxFailure(.usage, "user name \(printable(typed)): empty \(what)") }
        if value.utf8.contains(where: { $0 < 0x20 || $0 == 0x7f }) {
            throw NestboxFailure(.usage, "user name \(printable(typed)): control character in the \(what)")
        }
        if value.contains("@") { throw NestboxFailure(.usage, "\(what) \(printable(value)): @ is not allowed here") }
        if value.utf8.count > maximumLength {
            throw NestboxFailure(.usage, "\(what) \(printable(value)): \(value.utf8.count) bytes, at most \(maximumLength)")
        }
    }
}

public struct SASLUsers {
    public let database: SASLDatabase
    public let server: SASLServer
    /// The group of a database created here (sasl_sasldb_group); empty: root's.
    public let group: String
    public let lockPolicy: DotLock.Options
    /// How a `group` that does not exist is reported (the configuration names where it was set).
    let groupError: @Sendable (String) -> NestboxFailure

    /// The created database's mode.
    public static let mode: mode_t = 0o640

    public init(path: String, appName: String, group: String, lockPolicy: DotLock.Options,
                groupError: @escaping @Sendable (String) -> NestboxFailure = { NestboxFailure(.config, "sasl_sasldb_group: \($0)") }) throws {
        database = SASLDatabase(path: path)
        server = try SASLServer(appName: appName, databasePath: path)
        self.group = group
        self.lockPolicy = lockPolicy
        self.groupError = groupError
    }

    public enum Change: Sendable, Equatable { case create, change, delete }

    /// What a change did, for -v and the log.
    public struct Report: Sendable {
        public var createdDatabase = false
        public var removed: [String] = []
        public var stored: [String] = []
    }

    /// Creates `name` (refusing an existing one: .userExists), changes its password (refusing
    /// a missing database: .noInput, a missing user: .userUnknown) or deletes every record of it.
    @discardableResult
    public func apply(_ change: Change, _ name: SASLName, password: String?, noPlain: Bool) throws -> Report {
        // Checked before the lock: a bad group must not leave a half-made database behind.
        let gid = try groupID()
        let lock = try DotLock.acquire(database.path + ".lock", watching: [database.path], options: lockPolicy)
        defer { lock.release() }
        var report = Report()
        var before = stat()
        let existed = stat(database.path, &before) == 0
        if !existed && errno != ENOENT { throw NestboxFailure.system("stat SASL database", database.path) }
        if !existed && change != .create {
            throw NestboxFailure(.noInput, "SASL database \(database.path) does not exist, so \(name) is unknown (create users with -c)")
        }
        let properties = existed ? try database.properties(user: name.user, realm: name.realm) : []
        switch change {
        case .create where !properties.isEmpty:
            throw NestboxFailure(.userExists, "\(name) already exists in \(database.path) (change a password without -c)")
        case .change where properties.isEmpty, .delete where properties.isEmpty:
            throw NestboxFailure(.userUnknown, "\(name) is not in \(database.path)\(change == .change ? " (create it with -c)" : "")")
        default:
            break
        }
        let oldMask = umask(0o137)
        defer {
            umask(oldMask)
            if existed { restore(before) }
        }
        if change == .delete {
            try server.removeProperties(name, properties)
            report.removed = properties
            let left = try database.properties(user: name.user, realm: name.realm)
            if !left.isEmpty {
                throw NestboxFailure(.temporary, "delete \(name) from \(database.path): still there: \(left.joined(separator: ", "))")
            }
            return report
        }
        try server.setPassword(name, password ?? "", create: change == .create, noPlain: noPlain)
        if !existed {
            report.createdDatabase = true
            try own(gid)
        }
        report.stored = try database.properties(user: name.user, realm: name.realm)
        if report.stored.isEmpty {
            throw NestboxFailure(.config, "set password of \(name): libsasl2 stored nothing (with -n, no mechanism plugin that keeps its own secret is installed: libsasl2-modules)")
        }
        if noPlain, report.stored.contains("userPassword") {
            throw NestboxFailure(.temporary, "set password of \(name): a plaintext userPassword was stored despite -n")
        }
        // A change with -n must not leave the old plaintext password behind.
        if noPlain, change == .change, properties.contains("userPassword") {
            try server.removeProperties(name, ["userPassword"])
            report.stored.removeAll { $0 == "userPassword" }
        }
        return report
    }

    /// Whether `password` is `name`'s (.userUnknown when there is no such user).
    public func check(_ name: SASLName, password: String) throws -> Bool {
        let properties = try database.properties(user: name.user, realm: name.realm)
        guard !properties.isEmpty else {
            throw NestboxFailure(.userUnknown, "\(name) is not in \(database.path)")
        }
        guard properties.contains("userPassword") else {
            throw NestboxFailure(.authenticationFailed, "\(name) has no plaintext userPassword (made with -n): PLAIN, LOGIN and saslauthd cannot check it, only SCRAM")
        }
        return try server.checkPassword(name, password)
    }

    // MARK: The file's owner and mode

    private func groupID() throws -> gid_t? {
        guard !group.isEmpty else { return nil }
        guard let entry = getgrnam(group) else {
            throw groupError("no such group on this system")
        }
        return entry.pointee.gr_gid
    }

    /// A new database: 0640, root and the configured group (root only can give it away).
    private func own(_ gid: gid_t?) throws {
        if geteuid() == 0 || gid != nil {
            let uid: uid_t = geteuid() == 0 ? 0 : uid_t.max
            if chown(database.path, uid, gid ?? (geteuid() == 0 ? 0 : gid_t.max)) != 0 {
                throw NestboxFailure.system("chown SASL database", database.path)
            }
        }
        if chmod(database.path, SASLUsers.mode) != 0 { throw NestboxFailure.system("chmod SASL database", database.path) }
    }

    /// Puts back the owner, group and mode the database had before a change.
    private func restore(_ before: stat) {
        var now = stat()
        guard stat(database.path, &now) == 0 else { return }
        if now.st_uid != before.st_uid || now.st_gid != before.st_gid {
            if chown(database.path, before.st_uid, before.st_gid) != 0 {
                Log.warning("chown \(database.path) back to \(before.st_uid):\(before.st_gid): \(errnoText(errno))")
            }
        }
        if now.st_mode & 0o7777 != before.st_mode & 0o7777 {
            if chmod(database.path, before.st_mode & 0o7777) != 0 {
                Log.warning("chmod \(database.path) back to \(String(before.st_mode & 0o7777, radix: 8)): \(errnoText(errno))")
            }
        }
    }
}
