#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// nestbox-reconstruct as an administrator meets it: a damaged dovecot-uidlist makes deliveries
/// fail temporarily, naming the command; the command repairs the folder keeping every UID and
/// flag Dovecot knew; a second run finds nothing; the weekly cron sample reports without
/// changing anything.
final class ReconstructCommandTests: XCTestCase {
    var fixture: DeliverFixture!
    var home = ""

    override func setUpWithError() throws {
        try super.setUpWithError()
        guard FileManager.default.isExecutableFile(atPath: Harness.binary("nestbox-reconstruct")) else {
            XCTFail("built program not found: \(Harness.binary("nestbox-reconstruct"))")
            throw LMTPTestError("no binary")
        }
        fixture = try DeliverFixture("reconstruct")
        home = try fixture.makeUser("alice")
    }

    override func tearDown() {
        fixture = nil
        super.tearDown()
    }

    func message(_ n: Int) -> String {
        "From: a@example.org\nSubject: number \(n)\nMessage-ID: <r\(n)@example.org>\n\nbody \(n)\n"
    }

    func reconstruct(_ arguments: [String]) throws -> Harness.Result {
        try Harness.run(Harness.binary("nestbox-reconstruct"), ["-C", fixture.configPath] + arguments)
    }

    /// Message-ID -> "uid flags" as Dovecot reports them.
    func dovecotView(_ dovecot: Dovecot) throws -> [String: String] {
        var view: [String: String] = [:]
        for m in try dovecot.fetch("uid flags hdr.message-id", mailbox: "INBOX") {
            let id = (m["hdr.message-id"] ?? "").trimmingCharacters(in: .whitespaces)
            view[id] = "\(m["uid"] ?? "?") \(m["flags"] ?? "")"
        }
        return view
    }

    func testDamagedListDefersDeliveryUntilReconstructRepairsItKeepingEveryUID() throws {
        for n in 1...5 { XCTAssertEqual(try fixture.deliver(["alice"], message(n)).status, 0) }
        let dovecot = try Dovecot(mailRoot: home)
        _ = try dovecot.doveadm(["flags", "add", "\\Seen \\Flagged", "mailbox", "INBOX", "uid", "2"])
        let before = try dovecotView(dovecot)
        XCTAssertEqual(before.count, 5)

        // The damage: a line that is no record at the end of the list.
        let list = "\(home)/dovecot-uidlist"
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: list))
        handle.seekToEndOfFile()
        handle.write(Data("garbage that is no record\n".utf8))
        try handle.close()

        let refused = try fixture.deliver(["alice"], message(6))
        XCTAssertEqual(refused.status, 75, refused.stdout + refused.stderr)
        XCTAssertTrue(refused.stdout.hasPrefix("4.3.0"), refused.stdout)
        XCTAssertTrue(refused.stderr.contains("nestbox-reconstruct"), "the log names the command: \(refused.stderr)")

        let repair = try reconstruct(["user/alice"])
        XCTAssertEqual(repair.status, 0, repair.stdout + repair.stderr)
        XCTAssertTrue(repair.stdout.contains("user/alice: "), repair.stdout)

        let accepted = try fixture.deliver(["alice"], message(6))
        XCTAssertEqual(accepted.status, 0, accepted.stdout + accepted.stderr)
        let after = try dovecotView(dovecot)
        for (id, uidAndFlags) in before { XCTAssertEqual(after[id], uidAndFlags, "\(id) changed") }
        XCTAssertEqual(after["<r6@example.org>"]?.split(separator: " ").first, "6")

        // Dovecot saw no reason to renumber.
        let status = try dovecot.doveadm(["mailbox", "status", "uidvalidity messages", "INBOX"])
        for complaint in ["UIDVALIDITY changed", "corrupt", "renumber", "Duplicate file"] {
            XCTAssertFalse(status.stderr.contains(complaint), status.stderr)
        }

        // Nothing left to do: a second run reports no problem and exits 0.
        let again = try reconstruct(["-q", "user/alice"])
        XCTAssertEqual(again.status, 0, again.stdout + again.stderr)
        XCTAssertEqual(again.stdout, "")
    }

    func testWeeklyCronSampleReportsAndChangesNothing() throws {
        for n in 1...3 { XCTAssertEqual(try fixture.deliver(["alice"], message(n)).status, 0) }
        let list = "\(home)/dovecot-uidlist"
        let damaged = Harness.read(list) + "garbage\n"
        try fixture.writeFile(list, damaged)

        // The command of the sample's schedule line, run against this mail root.
        let sample = Harness.read("\(Harness.packageRoot)/cron/nestbox-reconstruct")
        let line = try XCTUnwrap(sample.split(separator: "\n").first { !$0.hasPrefix("#") && $0.contains("nestbox-reconstruct") })
        let fields = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        let program = try XCTUnwrap(fields.firstIndex { $0.hasSuffix("/nestbox-reconstruct") })
        XCTAssertEqual(fields[program - 1], "root")
        let r = try reconstruct(Array(fields[(program + 1)...]))
        XCTAssertEqual(r.status, 1, "problems remain after a dry run: \(r.stdout) \(r.stderr)")
        XCTAssertTrue(r.stdout.contains("user/alice"), "the report names the mailbox: \(r.stdout)")
        XCTAssertEqual(Harness.read(list), damaged, "-n changed the list")
    }

    func testUnknownMailboxAndUsage() throws {
        let unknown = try reconstruct(["user/nobody"])
        XCTAssertEqual(unknown.status, 67, unknown.stderr)
        XCTAssertTrue(unknown.stderr.contains("user/nobody"), unknown.stderr)
        XCTAssertEqual(try reconstruct([]).status, 64)
        XCTAssertEqual(try reconstruct(["--all", "user/alice"]).status, 64)
    }

    func testJSONReport() throws {
        XCTAssertEqual(try fixture.deliver(["alice"], message(1)).status, 0)
        let r = try reconstruct(["--json", "-n", "--all"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(object["problemsRemaining"] as? Int, 0)
        let boxes = try XCTUnwrap(object["mailboxes"] as? [[String: Any]])
        XCTAssertEqual(boxes.map { $0["mailbox"] as? String }, ["user/alice"])
        XCTAssertEqual(boxes.first?["messages"] as? Int, 1)
    }
}
