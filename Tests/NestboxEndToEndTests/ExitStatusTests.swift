import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// One test per row of the exit-status table: the status Postfix's pipe(8) acts on and the
/// exit code agree, and a temporary condition is never 74 or 78-with-a-5.x.x status.
final class ExitStatusTests: XCTestCase {
    func testRow0Delivered() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        let r = try f.deliver(["alice"], sampleMessage)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.stdout, "")
    }

    func testRow64Usage() throws {
        let f = try DeliverFixture()
        for args in [["-x", "alice"], [], ["-r"], ["-C"]] {
            let r = try f.deliver(args, sampleMessage)
            XCTAssertEqual(r.status, 64, "\(args)")
            XCTAssertTrue(r.stdout.hasPrefix("4.3.5 "), "\(args): \(r.stdout)")
        }
        let help = try Harness.run(Harness.binary("nestbox-deliver"), ["--help"])
        XCTAssertEqual(help.status, 0)
        XCTAssertTrue(help.stdout.contains("usage: nestbox-deliver"))
        let version = try Harness.run(Harness.binary("nestbox-deliver"), ["--version"])
        XCTAssertTrue(version.stdout.hasPrefix("nestbox-deliver "))
    }

    func testRow65DataError() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        let r = try f.deliver(["alice"], data: Data([83, 58, 32, 0, 10]))
        XCTAssertEqual(r.status, 65)
        XCTAssertEqual(r.stdout, "5.6.0 Message contains NUL bytes\n")
        let huge = "X-Big: " + String(repeating: "h", count: 70) + "\n"
        let header = String(repeating: huge, count: 16000) + "\nbody\n"  // header section over 1 MiB
        let r2 = try f.deliver(["alice"], header)
        XCTAssertEqual(r2.status, 65)
        XCTAssertEqual(r2.stdout, "5.6.0 Message header section too large\n")
    }

    func testRow67UnknownUserAndBadAddress() throws {
        let f = try DeliverFixture()
        let r = try f.deliver(["nobody"], sampleMessage)
        XCTAssertEqual(r.status, 67)
        XCTAssertEqual(r.stdout, "5.1.1 User unknown\n")
        let bad = try f.deliver(["../x"], sampleMessage)
        XCTAssertEqual(bad.status, 67)
        XCTAssertEqual(bad.stdout, "5.1.3 Bad recipient address syntax\n")
    }

    func testRows73And75Quota() throws {
        let f = try DeliverFixture()
        let root = try f.makeUser("alice", limits: QuotaLimits(bytes: 1000))
        XCTAssertEqual(try f.deliver(["alice"], sampleMessage).status, 0)  // 0 < 1000
        let big = sampleMessage + String(repeating: "z", count: 2000) + "\n"
        XCTAssertEqual(try f.deliver(["alice"], big).status, 0, "non-strict: usage was below the limit")
        let over = try f.deliver(["alice"], sampleMessage)
        XCTAssertEqual(over.status, 75)
        XCTAssertEqual(over.stdout, "4.2.2 Mailbox full\n")
        XCTAssertEqual(try f.deliver(["-q", "alice"], sampleMessage).status, 0, "-q ignores quota")
        try f.set("lmtp_over_quota_perm_failure", "yes")
        let perm = try f.deliver(["alice"], sampleMessage)
        XCTAssertEqual(perm.status, 73)
        XCTAssertEqual(perm.stdout, "5.2.2 Mailbox full\n")
        // Strict: the incoming message counts.
        try f.set("lmtp_over_quota_perm_failure", "no")
        try f.set("lmtp_strict_quota", "yes")
        try QuotaRoot(root: root).setLimits(QuotaLimits(bytes: 1_000_000))
        try Harness.chownTreeToMailOwner(root)
        let used = try XCTUnwrap(try QuotaRoot(root: root).current()).usage.bytes
        try QuotaRoot(root: root).setLimits(QuotaLimits(bytes: used + 100))
        try Harness.chownTreeToMailOwner(root)
        XCTAssertEqual(try f.deliver(["alice"], big).status, 75, "strict: would go over")
        try f.set("lmtp_strict_quota", "no")
        XCTAssertEqual(try f.deliver(["alice"], big).status, 0, "non-strict: still below")
        // Message count limit.
        try QuotaRoot(root: root).setLimits(QuotaLimits(bytes: 0, messages: 2))
        try Harness.chownTreeToMailOwner(root)
        XCTAssertEqual(try f.deliver(["alice"], sampleMessage).status, 75)
    }

    func testRow73TooBig() throws {
        let f = try DeliverFixture(settings: ["maxmessagesize": "1000"])
        try f.makeUser("alice")
        let r = try f.deliver(["alice"], sampleMessage + String(repeating: "x", count: 2000))
        XCTAssertEqual(r.status, 73)
        XCTAssertTrue(r.stdout.hasPrefix("5.3.4 Message too big"), r.stdout)
        XCTAssertEqual(try f.messages("alice").count, 0)
    }

    func testRow75DiskFullIsCoveredAndLockTimeoutIsTemporary() throws {
        // Disk full: DeliverTests.testFullDiskIsATemporaryFailureAndLeavesNothing. Here: a live
        // lock holder that never lets go must give 75 / 4.x, never a bounce. The lock names this
        // (live) test process, so it is not stale; a small timeout keeps the test short.
        let f = try DeliverFixture()
        let root = try f.makeUser("alice")
        let lock = try DotLock.acquire("\(root)/dovecot-uidvalidity.lock")
        defer { lock.release() }
        // No uidlist yet: the first delivery needs a new UIDVALIDITY and waits for that lock;
        // the message itself is already safe in new/, so delivery still succeeds (UID later).
        let start = Date()
        let r = try f.deliver(["-o", "lock_timeout=1", "alice"], sampleMessage)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertLessThan(Date().timeIntervalSince(start), 30)
        XCTAssertTrue(r.stderr.contains("no UID recorded yet"), r.stderr)
        lock.release()
        // Dovecot's rules then give it a UID on the next delivery's sync.
        XCTAssertEqual(try f.deliver(["alice"], sampleMessage).status, 0)
        try f.store.inbox(of: root).assignUIDs()
        XCTAssertEqual(try f.messages("alice").compactMap { $0.uid }.count, 2)
    }

    func testRow77NoPermission() throws {
        let f = try DeliverFixture()
        try f.store.createUser(root: "\(f.root)/public", limits: nil, folders: ["Closed"])
        try Harness.chownTreeToMailOwner(f.root)
        let r = try f.deliver(["-m", "Closed"], sampleMessage)
        XCTAssertEqual(r.status, 77)
        XCTAssertEqual(r.stdout, "5.7.1 Permission denied\n")
    }

    func testRow78Config() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        let bad = "\(f.dir)/bad.conf"
        try "partition-default: \(f.root)\n# comment\nno_such_key: 1\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let r = try Harness.run(Harness.binary("nestbox-deliver"), ["-C", bad, "alice"], input: Data(sampleMessage.utf8))
        XCTAssertEqual(r.status, 78)
        XCTAssertEqual(r.stdout, "4.3.5 Local configuration error: \(bad):3: unknown key \"no_such_key\"\n")
        for (text, line) in [("unixhierarchysep: maybe\n", 1), ("\n\npartition-default relative\n", 3),
                             ("maxmessagesize: 10\nmaxmessagesize: 20\n", 2), ("partition-default: mail\n", 1)] {
            try text.write(toFile: bad, atomically: true, encoding: .utf8)
            let r = try Harness.run(Harness.binary("nestbox-deliver"), ["-C", bad, "alice"], input: Data(sampleMessage.utf8))
            XCTAssertEqual(r.status, 78, text)
            XCTAssertTrue(r.stdout.hasPrefix("4.3.5 Local configuration error: \(bad):\(line): "), r.stdout)
        }
        let env = try Harness.run(Harness.binary("nestbox-deliver"), ["alice"], input: Data(sampleMessage.utf8),
                                  environment: ["NESTBOX_CONF": bad])
        XCTAssertEqual(env.status, 78, "NESTBOX_CONF is read")
        let missing = try Harness.run(Harness.binary("nestbox-deliver"), ["-C", "\(f.dir)/none.conf", "alice"], input: Data(sampleMessage.utf8))
        XCTAssertEqual(missing.status, 78)
        XCTAssertTrue(missing.stdout.contains("none.conf: cannot read"), missing.stdout)
        XCTAssertEqual(try f.messages("alice").count, 0, "nothing touched")
    }

    func testSampleConfigurationIsValidAndComplete() throws {
        let path = "\(Harness.packageRoot)/conf/nestbox.conf"
        var config = Config()
        try config.parse(Harness.read(path), file: path)
        let text = Harness.read(path)
        for key in Config.keys {
            XCTAssertTrue(text.contains("\n\(key.name):"), "conf/nestbox.conf lacks \(key.name)")
        }
    }
}
