import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// Dovecot reads what Nestbox wrote and Nestbox reads what Dovecot changed, through the real
/// `doveadm` on the same Maildir.
final class DovecotInteropTests: XCTestCase {
    /// Three messages delivered by nestbox-deliver, flags and keywords set by our store.
    private func populated() throws -> (DeliverFixture, String, Dovecot) {
        let f = try DeliverFixture("dovecot")
        let root = try f.makeUser("alice", limits: QuotaLimits(bytes: 10_485_760, messages: 1000), folders: ["Work", "Ärger"])
        for i in 1...3 {
            let msg = "From: s@example.org\r\nSubject: message \(i)\r\nMessage-ID: <\(i)@example.org>\r\n\r\nbody \(i)\r\n\u{e4}\u{f6}\u{fc} 8-bit line\r\n"
            XCTAssertEqual(try f.deliver(["-r", "s@example.org", "alice"], msg).status, 0)
        }
        XCTAssertEqual(try f.deliver(["-a", "alice", "-m", "Ärger", "alice"], sampleMessage).status, 0)
        let inbox = f.store.inbox(of: root)
        try inbox.setFlags(uid: 2, flags: ["\\Seen", "\\Flagged"], keywords: ["$Label1", "Project-X"])
        try inbox.setFlags(uid: 3, flags: ["\\Deleted", "\\Answered"], keywords: ["Project-X"])
        try Harness.chownTreeToMailOwner(root)
        return (f, root, try Dovecot(mailRoot: root))
    }

    func testDoveadmSeesOurUIDsFlagsKeywordsSizesAndBodies() throws {
        let (f, root, dove) = try populated()
        let ours = try f.store.inbox(of: root).messages()
        let theirs = try dove.fetch("uid flags size.physical size.virtual guid body", mailbox: "INBOX")
        XCTAssertEqual(theirs.count, ours.count)
        for (o, t) in zip(ours, theirs) {
            XCTAssertEqual(t["uid"], o.uid.map(String.init))
            XCTAssertEqual(t["size.physical"], String(o.size))
            XCTAssertEqual(t["size.virtual"], o.virtualSize.map(String.init))
            XCTAssertEqual(t["guid"], o.name.stem, "Dovecot's GUID of a Maildir message is its stem")
            let flags = Set((t["flags"] ?? "").split(separator: " ").map(String.init)).subtracting(["\\Recent"])
            XCTAssertEqual(flags, Set(o.flags + o.keywords), "uid \(o.uid!)")
            let file = Harness.read(o.path)
            let body = String(file[file.range(of: "\n\n")!.upperBound...])
            let trimmed = { (s: String) in String(s.reversed().drop { $0 == "\n" }.reversed()) }
            XCTAssertEqual(trimmed(t["body"] ?? ""), trimmed(body), "uid \(o.uid!)")
        }
        let list = try XCTUnwrap(try f.store.inbox(of: root).uidList.read())
        XCTAssertEqual(try dove.status("uidvalidity", mailbox: "INBOX"), String(list.header.uidValidity))
        XCTAssertEqual(try dove.status("uidnext", mailbox: "INBOX"), String(list.nextUID))
        // The non-ASCII folder (modified UTF-7 on disk) is the same folder for Dovecot.
        let folder = try dove.fetch("uid size.physical", mailbox: "Ärger")
        let ourFolder = try f.store.folder("Ärger", in: root).messages()
        XCTAssertEqual(folder.map { $0["uid"] }, ourFolder.map { $0.uid.map(String.init) })
        XCTAssertEqual(folder.map { $0["size.physical"] }, ourFolder.map { String($0.size) })
        // Dovecot did not have to renumber anything: the uidlist still has our records.
        let after = try XCTUnwrap(try f.store.inbox(of: root).uidList.read())
        XCTAssertEqual(after.header.uidValidity, list.header.uidValidity)
        XCTAssertEqual(Array(after.records.prefix(list.records.count)).map { $0.uid }, list.records.map { $0.uid })
    }

    func testDoveadmQuotaShowsOurLimitsAndUsage() throws {
        let (f, root, dove) = try populated()
        let r = try dove.doveadm(["-f", "tab", "quota", "get"])
        var rows: [String: [String]] = [:]
        for line in r.stdout.split(separator: "\n").dropFirst() {
            let cols = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            if cols.count >= 4 { rows[cols[1]] = cols }
        }
        let usage = try XCTUnwrap(try QuotaRoot(root: root).current()).usage
        let total = try f.store.inbox(of: root).messages().reduce(Int64(0)) { $0 + $1.size }
            + (try f.store.folder("Ärger", in: root).messages().reduce(Int64(0)) { $0 + $1.size })
        XCTAssertEqual(usage, QuotaUsage(bytes: total, messages: 4))
        // doveadm prints STORAGE in KiB, rounded up; the limit 10 MiB is 10240.
        XCTAssertEqual(rows["STORAGE"]?[2], String((usage.bytes + 1023) / 1024), r.stdout)
        XCTAssertEqual(rows["STORAGE"]?[3], "10240", r.stdout)
        XCTAssertEqual(rows["MESSAGE"]?[2], "4", r.stdout)
        XCTAssertEqual(rows["MESSAGE"]?[3], "1000", r.stdout)
    }

    func testFlagsAndKeywordsDovecotSetsAreReadBack() throws {
        let (f, root, dove) = try populated()
        _ = try dove.doveadm(["flags", "add", "\\Seen $Forwarded NewKeyword", "mailbox", "INBOX", "uid", "1"])
        _ = try dove.doveadm(["flags", "remove", "\\Flagged", "mailbox", "INBOX", "uid", "2"])
        _ = try dove.doveadm(["flags", "add", "\\Deleted", "mailbox", "Ärger", "uid", "1"])
        let ours = try f.store.inbox(of: root).messages()
        let m1 = try XCTUnwrap(ours.first { $0.uid == 1 })
        XCTAssertEqual(m1.name.flagLetters, "Scd", "Dovecot renamed the file (it may stay in new/); a, b are ours")
        XCTAssertEqual(Set(m1.flags), ["\\Seen"])
        XCTAssertEqual(Set(m1.keywords), ["$Forwarded", "NewKeyword"])
        let m2 = try XCTUnwrap(ours.first { $0.uid == 2 })
        XCTAssertEqual(Set(m2.flags), ["\\Seen"])
        XCTAssertEqual(Set(m2.keywords), ["$Label1", "Project-X"])
        let inFolder = try f.store.folder("Ärger", in: root).messages()
        XCTAssertEqual(inFolder.first?.flags, ["\\Deleted"])
        XCTAssertTrue(inFolder.first?.name.has("T") ?? false, "\\Deleted is T on disk")
        // And Nestbox keeps delivering into the mailbox Dovecot has touched, with the next UID.
        XCTAssertEqual(try f.deliver(["alice"], sampleMessage).status, 0)
        let uids = try dove.fetch("uid", mailbox: "INBOX").compactMap { $0["uid"] }
        XCTAssertEqual(uids, ["1", "2", "3", "4"])
    }

    func testMailboxesDovecotCreatedAcceptOurDeliveries() throws {
        let f = try DeliverFixture("dovecot")
        let root = "\(f.root)/carol"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try Harness.chownTreeToMailOwner(f.root)
        let dove = try Dovecot(mailRoot: root, user: "carol")
        _ = try dove.doveadm(["mailbox", "create", "INBOX"])
        _ = try dove.doveadm(["mailbox", "create", "Lists/Debian"])
        let saved = try Harness.run("/usr/bin/doveadm", ["-c", dove.configPath, "save", "-m", "INBOX"],
                                    input: Data("Subject: via doveadm\n\nsaved by Dovecot\n".utf8),
                                    environment: ["USER": "carol", "HOME": root])
        XCTAssertEqual(saved.status, 0, saved.stderr)
        try f.writeFile("\(root)/.Lists.Debian/dovecot-acl", "anyone p\n")
        XCTAssertEqual(try f.deliver(["carol"], sampleMessage).status, 0)
        XCTAssertEqual(try f.deliver(["carol+Lists/Debian"], sampleMessage).status, 0)
        XCTAssertEqual(try dove.fetch("uid", mailbox: "INBOX").compactMap { $0["uid"] }, ["1", "2"])
        XCTAssertEqual(try dove.fetch("uid", mailbox: "Lists/Debian").compactMap { $0["uid"] }, ["1"])
        let ours = try f.store.inbox(of: root).messages()
        XCTAssertEqual(ours.map { $0.uid }, [1, 2])
    }
}
