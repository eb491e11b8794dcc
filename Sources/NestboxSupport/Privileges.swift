// Dropping root. Started as root, a program switches to the mail owner before it opens any
// mail file, and verifies that it cannot get root back. Nothing is ever delivered as root:
// a mail owner that resolves to uid 0 is a configuration error.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum Privileges {
    public struct Account: Sendable {
        public let name: String
        public let uid: uid_t
        public let gid: gid_t
    }

    public static func lookup(_ name: String) -> Account? {
        guard let pw = getpwnam(name) else { return nil }
        return Account(name: name, uid: pw.pointee.pw_uid, gid: pw.pointee.pw_gid)
    }

    /// The mail owner's account; a configuration error naming `mail_owner` where it was
    /// written when it does not exist or is root.
    public static func mailOwner(_ config: Config) throws -> Account {
        guard let account = lookup(config.mailOwner) else { throw config.failure("mail_owner", "no such user") }
        guard account.uid != 0 else { throw config.failure("mail_owner", "refusing to deliver as root (uid 0)") }
        return account
    }

    /// When running as root, becomes the mail owner for good; otherwise does nothing (the
    /// process already runs as whoever Postfix or the administrator chose). Always sets umask 077.
    public static func dropIfRoot(config: Config) throws {
        umask(0o077)
        guard geteuid() == 0 || getuid() == 0 else { return }
        let account = try mailOwner(config)
        let owner = account.name
        var gid = account.gid
        if setgroups(1, &gid) != 0 { throw NestboxFailure.system("setgroups", owner) }
        if setgid(account.gid) != 0 { throw NestboxFailure.system("setgid", owner) }
        if setuid(account.uid) != 0 { throw NestboxFailure.system("setuid", owner) }
        if setuid(0) == 0 || geteuid() == 0 {
            throw NestboxFailure(.temporary, "setuid \(owner): could not drop root privileges")
        }
    }
}
