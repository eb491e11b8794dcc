#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest

/// autocreate_users: sasldb through nestbox-deliver: an INBOX is made only for a user the SASL
/// database knows (5.1.1 and nothing on disk otherwise), and a database that cannot be read
/// defers (4.3.0 / 75) instead of bouncing.
final class SASLAutocreateTests: XCTestCase {
    var fixture: DeliverFixture!
    var database = ""

    override func setUpWithError() throws {
        try super.setUpWithError()
        try Harness.ensureMailOwner()
        fixture = try DeliverFixture("sasl-autocreate")
        database = "\(fixture.dir)/sasldb2"
        // Deliveries run as the mail owner: the database's group is its group.
        let group = String(cString: try XCTUnwrap(getgrgid(try XCTUnwrap(getpwnam(Harness.mailOwner)).pointee.pw_gid)).pointee.gr_name)
        for (k, v) in ["autocreate_post": "yes", "autocreate_quota": "0", "autocreate_users": "sasldb",
                       "sasl_sasldb_path": database, "sasl_sasldb_group": group, "defaultdomain": "example.org"] {
            try fixture.set(k, v)
        }
    }

    override func tearDown() {
        fixture = nil
        super.tearDown()
    }

    func addUser(_ name: String) throws {
        let r = try Harness.run(Harness.binary("nestbox-passwd"), ["-C", fixture.configPath, "-c", name], input: Data("pw\n".utf8))
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    let message = "From: a@example.net\nSubject: hello\nMessage-ID: <sasl@example.net>\n\nbody\n"

    func testOnlyUsersTheDatabaseKnowsGetAnInbox() throws {
        try addUser("alice")
        let known = try fixture.deliver(["alice@example.org"], message)
        XCTAssertEqual(known.status, 0, known.stdout + known.stderr)
        XCTAssertEqual(try fixture.messages("alice").count, 1)

        let typo = try fixture.deliver(["alcie@example.org"], message)
        XCTAssertEqual(typo.status, 67, typo.stdout + typo.stderr)
        XCTAssertTrue(typo.stdout.hasPrefix("5.1.1 "), typo.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(fixture.root)/alcie"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: fixture.root).filter { !$0.hasPrefix(".") }.sorted(), ["alice"])

        // A user in another realm is another user.
        try addUser("bob@example.net")
        let otherRealm = try fixture.deliver(["bob"], message)
        XCTAssertEqual(otherRealm.status, 67, otherRealm.stdout)
    }

    func testVirtualDomainsTakeTheRealmFromTheRecipient() throws {
        try fixture.set("virtdomains", "userid")
        try addUser("carol@virt.test")
        XCTAssertEqual(try fixture.deliver(["carol@virt.test"], message).status, 0)
        let wrongDomain = try fixture.deliver(["carol@other.test"], message)
        XCTAssertEqual(wrongDomain.status, 67, wrongDomain.stdout)
        XCTAssertTrue(wrongDomain.stdout.hasPrefix("5.1.1 "), wrongDomain.stdout)
    }

    func testUnreadableOrMissingDatabaseDefers() throws {
        let missing = try fixture.deliver(["alice"], message)
        XCTAssertEqual(missing.status, 75, missing.stdout)
        XCTAssertTrue(missing.stdout.hasPrefix("4.3.0 "), missing.stdout)
        try addUser("alice")
        chmod(database, 0o600)  // root's only: the mail owner cannot read it
        let unreadable = try fixture.deliver(["alice"], message)
        XCTAssertEqual(unreadable.status, 75, unreadable.stdout + unreadable.stderr)
        XCTAssertTrue(unreadable.stdout.hasPrefix("4.3.0 "), unreadable.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(fixture.root)/alice"))
        // An existing INBOX needs no look-up at all.
        chmod(database, 0o640)
        XCTAssertEqual(try fixture.deliver(["alice"], message).status, 0)
        chmod(database, 0o600)
        XCTAssertEqual(try fixture.deliver(["alice"], message).status, 0)
    }
}

/// Postfix -> pipe(8) -> nestbox-deliver with autocreate_users: sasldb: mail to a user in the
/// SASL database creates the mailbox; to one who is not bounces 5.1.1 and creates nothing.
final class PostfixSASLAutocreateTests: PostfixTestCase {
    override var expectedRelay: String? { "nestbox" }

    override func setUpWithError() throws {
        try super.setUpWithError()
        try Harness.ensureMailOwner()
        let group = String(cString: try XCTUnwrap(getgrgid(try XCTUnwrap(getpwnam(Harness.mailOwner)).pointee.pw_gid)).pointee.gr_name)
        try startPipeInstance(label: "nbsasl", settings: [
            "virtdomains": "userid",
            // pipe(8) passes local users without their domain: their realm is defaultdomain.
            "defaultdomain": Self.localDomain,
            "autocreate_post": "yes",
            "autocreate_quota": "0",
            "autocreate_users": "sasldb",
            "sasl_sasldb_path": "\(base)/sasldb2",
            "sasl_sasldb_group": group,
        ])
    }

    func testKnownUserGetsAMailboxUnknownBounces511() throws {
        let add = try Harness.run(Harness.binary("nestbox-passwd"), ["-C", nestboxConf, "-c", "-u", Self.localDomain, "ida"],
                                  input: Data("pw\n".utf8))
        XCTAssertEqual(add.status, 0, add.stderr)

        let token = Self.token()
        let qid = try send(to: "ida@\(Self.localDomain)", subject: "first mail \(token)", body: "Welcome. \(token)")
        try requireStatus(qid: qid, recipient: "ida@\(Self.localDomain)", "sent", dsn: "2.0.0")
        let found = try waitForMessage(in: "\(mailRoot)/ida/new", containing: token)
        XCTAssertEqual(filesContaining(token, under: mailRoot), ["ida/new/\(found)"])

        let rcpt = "idaa@\(Self.localDomain)"
        let bounced = try send(to: rcpt, subject: "typo", body: "Nobody reads this. \(Self.token())")
        try requireStatus(qid: bounced, recipient: rcpt, "bounced", dsn: "5.1.1")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(mailRoot)/idaa"), "no mailbox for a user the database does not know")
    }
}
