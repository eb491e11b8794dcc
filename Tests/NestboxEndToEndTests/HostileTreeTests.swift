#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// Symbolic links planted in the mail root: a user directory, a folder, a domain area, a
/// Maildir's tmp/. None of them may be followed for writing: the delivery fails temporarily
/// (exit 75, 4.3.0) with a log line naming the link, and nothing appears where it points.
final class HostileTreeTests: XCTestCase {
    var fixture: DeliverFixture!
    /// Where the links point: outside the mail root.
    var outside = ""

    override func setUpWithError() throws {
        try super.setUpWithError()
        fixture = try DeliverFixture("hostile")
        outside = "\(fixture.dir)/outside"
        XCTAssertEqual(mkdir(outside, 0o755), 0)
        try Harness.chownToMailOwner(outside)
    }

    override func tearDown() {
        fixture = nil
        super.tearDown()
    }

    static let message = "From: a@example.org\nSubject: hostile\nMessage-ID: <hostile@example.org>\n\nbody\n"

    /// Every file and directory below `path`, relative, sorted.
    func tree(_ path: String) -> [String] {
        (FileManager.default.subpaths(atPath: path) ?? []).sorted()
    }

    /// Delivers to `arguments` and checks the refusal: 75, 4.3.0, the link named on stderr,
    /// and the tree behind the link exactly as it was.
    func assertRefused(_ arguments: [String], naming link: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let before = tree(outside)
        let r = try fixture.deliver(arguments, Self.message)
        XCTAssertEqual(r.status, 75, "\(r.stdout) \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stdout.contains("4.3.0"), r.stdout, file: file, line: line)
        XCTAssertTrue(r.stderr.contains("\(link) is a symbolic link"), r.stderr, file: file, line: line)
        XCTAssertEqual(tree(outside), before, "written through the link", file: file, line: line)
    }

    func makeMaildir(_ path: String) throws {
        for dir in [path] + ["cur", "new", "tmp"].map({ (path as NSString).appendingPathComponent($0) }) {
            XCTAssertEqual(mkdir(dir, 0o700), 0)
            try Harness.chownToMailOwner(dir)
        }
    }

    func testUserDirectoryThatIsALinkToAMaildirOutside() throws {
        try fixture.makeUser("alice")  // makes the mail root
        try makeMaildir("\(outside)/bob")
        XCTAssertEqual(symlink("\(outside)/bob", "\(fixture.root)/bob"), 0)
        try assertRefused(["bob"], naming: "\(fixture.root)/bob")
    }

    func testUserDirectoryThatIsADanglingLinkIsNotCreatedByAutocreate() throws {
        try fixture.set("autocreate_post", "yes")
        try fixture.set("autocreate_quota", "0")
        try fixture.makeUser("alice")  // makes the mail root
        XCTAssertEqual(symlink("\(outside)/carol", "\(fixture.root)/carol"), 0)
        try assertRefused(["carol"], naming: "\(fixture.root)/carol")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(outside)/carol"))
    }

    func testFolderThatIsALinkOutside() throws {
        try fixture.makeUser("alice")
        try makeMaildir("\(outside)/projects")
        try fixture.writeFile("\(outside)/projects/dovecot-acl", "anyone lrsp\n")
        XCTAssertEqual(symlink("\(outside)/projects", "\(fixture.root)/alice/.Work"), 0)
        try assertRefused(["alice+Work"], naming: "\(fixture.root)/alice/.Work")
        try assertRefused(["-m", "Work", "alice"], naming: "\(fixture.root)/alice/.Work")
        XCTAssertEqual(try fixture.messages("alice").count, 0)
    }

    func testTmpThatIsALinkOutside() throws {
        let home = try fixture.makeUser("alice")
        // The INBOX's own tmp/ replaced by a link to a directory outside the mail root.
        let spoolDir = (home as NSString).appendingPathComponent("tmp")
        XCTAssertEqual(rmdir(spoolDir), 0)
        XCTAssertEqual(symlink(outside, spoolDir), 0)
        try assertRefused(["alice"], naming: spoolDir)
    }

    func testDomainAreaThatIsALinkOutside() throws {
        try fixture.set("virtdomains", "userid")
        try fixture.set("autocreate_post", "yes")
        try fixture.set("autocreate_quota", "0")
        try fixture.makeUser("alice")
        let area = try fixture.store.userRoot(try fixture.store.parseRecipient("dan@example.net"))
        let domainDir = (area as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: (domainDir as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Harness.chownTreeToMailOwner(fixture.root)
        XCTAssertEqual(symlink(outside, domainDir), 0)
        try assertRefused(["dan@example.net"], naming: domainDir)
    }

    func testMailboxCreationNeverGoesThroughALink() throws {
        // The store's own creation, without the check a delivery makes first: the levels below
        // the mail root are made and opened without following a link.
        try fixture.set("virtdomains", "userid")
        try fixture.makeUser("alice")
        let store = fixture.store
        let userRoot = try store.userRoot(try store.parseRecipient("erin@example.com"))
        let domainDir = (userRoot as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: (domainDir as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        XCTAssertEqual(symlink(outside, domainDir), 0)
        XCTAssertThrowsError(try store.createUser(root: userRoot, limits: QuotaLimits(bytes: 1000), folders: ["Sent"])) { error in
            XCTAssertTrue("\(error)".contains("\(domainDir) is a symbolic link"), "\(error)")
        }
        XCTAssertEqual(tree(outside), [])
        XCTAssertEqual(tree("\(fixture.root)/.nestbox/create"), [], "the temporary tree is removed")
    }

    func testLMTPRecipientBehindALinkGetsA451AtRCPT() throws {
        try fixture.makeUser("alice")
        try makeMaildir("\(outside)/bob")
        XCTAssertEqual(symlink("\(outside)/bob", "\(fixture.root)/bob"), 0)
        let before = tree(outside)
        let transcript = "LHLO test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob>\r\nRCPT TO:<alice>\r\nDATA\r\n"
            + Self.message.replacingOccurrences(of: "\n", with: "\r\n") + ".\r\nQUIT\r\n"
        let r = try fixture.deliver(["-l"], transcript)
        let replies = r.stdout.split(separator: "\r\n").map(String.init)
        XCTAssertTrue(replies.contains { $0.hasPrefix("451 4.3.0") }, r.stdout)
        XCTAssertEqual(replies.filter { $0.hasPrefix("250 2.") && $0.contains("Ok") }.count >= 1, true, r.stdout)
        XCTAssertEqual(try fixture.messages("alice").count, 1)
        XCTAssertEqual(tree(outside), before)
    }
}
