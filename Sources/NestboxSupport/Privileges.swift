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

    /// When running as root, becomes `owner` for good; otherwise does nothing (the process
    /// already runs as whoever Postfix or the administrator chose). Always sets umask 077.
    public static func dropIfRoot(to owner: String) throws {
        umask(0o077)
        guard geteuid() == 0 || getuid() == 0 else { return }
        guard let account = lookup(owner) else {
            throw NestboxFailure(.config, "mail_owner \(owner): no such user")
        }
        guard account.uid != 0 else {
            throw NestboxFailure(.config, "mail_owner \(owner): refusing to deliver as root")
        }
        var gid = account.gid
        if setgroups(1, &gid) != 0 { throw NestboxFailure.system("setgroups", owner) }
        if setgid(account.gid) != 0 { throw NestboxFailure.system("setgid", owner) }
        if setuid(account.uid) != 0 { throw NestboxFailure.system("setuid", owner) }
        if setuid(0) == 0 || geteuid() == 0 {
            throw NestboxFailure(.temporary, "setuid \(owner): could not drop root privileges")
        }
    }
}
