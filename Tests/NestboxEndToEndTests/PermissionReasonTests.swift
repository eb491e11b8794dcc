import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// A delivery that fails because of ownership or modes says why on the line the administrator
/// sees (the DSN line pipe(8) puts in `postqueue -p` and its log, the LMTP reply), in one safe
/// line naming only the mail root or what is below it: not "4.3.0 Temporary local error", and
/// not "mkdir .../.nestbox: Permission denied" when the directory exists but cannot be entered.
final class PermissionReasonTests: XCTestCase {
    /// nestbox-deliver started as `nobody` (a wrong `user=` in master.cf, a run by hand).
    func deliverAsNobody(_ f: DeliverFixture, _ user: String = "alice") throws -> Harness.Result {
        XCTAssertTrue(Harness.isRoot, "these tests switch to nobody")
        return try Harness.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups",
                                                    Harness.binary("nestbox-deliver"), "-C", f.configPath, user],
                               input: Data(sampleMessage.utf8))
    }

    func makeRootOwnedMailRoot(_ f: DeliverFixture, mode: mode_t) {
        XCTAssertEqual(mkdir(f.root, mode), 0)
        chmod(f.root, mode)
        XCTAssertEqual(chown(f.root, 0, 0), 0)
    }

    /// A mail root owned by root: 0755 cannot be written, 0700 not even entered.
    func testMailRootOwnedByRoot() throws {
        for (mode, what) in [(mode_t(0o755), "not writable"), (0o700, "cannot be entered")] {
            let f = try DeliverFixture("permroot")
            makeRootOwnedMailRoot(f, mode: mode)
            let r = try deliverAsNobody(f)
            XCTAssertEqual(r.status, 75, r.stdout + r.stderr)
            XCTAssertEqual(r.stdout, "4.3.0 mail root \(f.root) \(what) by uid 65534 (nobody): owner root, mode 0\(String(mode, radix: 8)); mail_owner is vmail\n")
        }
    }

    /// The mail root is the mail owner's and open to all, its .nestbox exists but is private:
    /// the reason is that .nestbox cannot be entered (mkdir of it would say EEXIST, of its
    /// spool "Permission denied", neither of which says what is wrong).
    func testExistingDirectoryThatCannotBeEnteredIsNamedAsSuch() throws {
        let f = try DeliverFixture("permnb")
        try f.makeUser("alice")
        try f.store.prepare()
        try Harness.chownTreeToMailOwner(f.root)
        chmod(f.root, 0o755)
        let r = try deliverAsNobody(f)
        XCTAssertEqual(r.status, 75, r.stdout + r.stderr)
        XCTAssertEqual(r.stdout, "4.3.0 directory \(f.root)/.nestbox cannot be entered by uid 65534 (nobody): owner vmail, mode 0700; mail_owner is vmail\n")
        XCTAssertEqual(try f.messages("alice").count, 0)
    }

    /// A mailbox directory that belongs to root (restored from a backup as root, say) defers
    /// with the reason, through nestbox-deliver and through LMTP, instead of bouncing the mail
    /// as "User unknown" because its cur/ could not be seen.
    func testMailboxTheMailOwnerCannotEnterDefersWithTheReason() throws {
        let f = try DeliverFixture("permbox")
        let alice = try f.makeUser("alice")
        try f.store.prepare()
        try Harness.chownTreeToMailOwner(f.root)
        XCTAssertEqual(chown(alice, 0, 0), 0)
        chmod(alice, 0o700)
        let uid = getpwnam(Harness.mailOwner)!.pointee.pw_uid
        let reason = "mailbox directory \(alice) cannot be entered by uid \(uid) (vmail): owner root, mode 0700; mail_owner is vmail"

        let r = try Harness.run(Harness.binary("nestbox-deliver"), ["-C", f.configPath, "alice"], input: Data(sampleMessage.utf8))
        XCTAssertEqual(r.status, 75, r.stdout + r.stderr)
        XCTAssertEqual(r.stdout, "4.3.0 \(reason)\n")

        let session = ["LHLO x", "MAIL FROM:<s@example.org>", "RCPT TO:<alice>", "QUIT"].map { $0 + "\r\n" }.joined()
        let l = try Harness.run(Harness.binary("nestbox-lmtpd"), ["-C", f.configPath, "-L", "-i"], input: Data(session.utf8))
        XCTAssertEqual(l.status, 0, l.stderr)
        let replies = l.stdout.split(separator: "\r\n").map(String.init)
        XCTAssertTrue(replies.contains("451 4.3.0 \(reason)"), l.stdout)

        // Mended, the retry delivers.
        XCTAssertEqual(chown(alice, uid, getpwnam(Harness.mailOwner)!.pointee.pw_gid), 0)
        XCTAssertEqual(try f.deliver(["alice"], sampleMessage).status, 0)
    }
}
