import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// Expunge read back by the real doveadm: the survivors keep their UIDs and flags, and
/// Dovecot's quota usage is exactly the survivors' sizes.
final class ExpungeInteropTests: XCTestCase {
    let policy = DotLock.Options(timeout: 10, staleAfter: 120)

    /// Five messages delivered by nestbox-deliver to a user with a maildirsize limit; \Deleted
    /// set on UIDs 2 and 4 by doveadm and on 5 by our store, \Seen on 3 by doveadm. With
    /// `primed`, Dovecot has fetched every size first (its cache knows them).
    private func populated(primed: Bool) throws -> (DeliverFixture, String, Dovecot) {
        let f = try DeliverFixture("expunge")
        let root = try f.makeUser("alice", limits: QuotaLimits(bytes: 10_485_760, messages: 1000))
        for i in 1...5 {
            let msg = "From: s@example.org\r\nSubject: message \(i)\r\nMessage-ID: <\(i)@example.org>\r\n\r\n"
                + String(repeating: "line \(i)\r\n", count: i * 7)
            XCTAssertEqual(try f.deliver(["-r", "s@example.org", "alice"], msg).status, 0)
        }
        let dove = try Dovecot(mailRoot: root)
        if primed { _ = try dove.fetch("uid size.physical size.virtual", mailbox: "INBOX") }
        _ = try dove.doveadm(["flags", "add", "\\Deleted", "mailbox", "INBOX", "uid", "2,4"])
        _ = try dove.doveadm(["flags", "add", "\\Seen", "mailbox", "INBOX", "uid", "3"])
        try f.store.inbox(of: root).setFlags(uid: 5, flags: ["\\Deleted"], keywords: [])
        try Harness.chownTreeToMailOwner(root)
        return (f, root, dove)
    }

    private func check(primed: Bool) throws {
        let (f, root, dove) = try populated(primed: primed)
        let inbox = f.store.inbox(of: root)
        let before = try inbox.messages()
        let sizes = Dictionary(uniqueKeysWithValues: before.map { ($0.uid!, $0.size) })
        let validity = try XCTUnwrap(try inbox.uidList.read()).header.uidValidity

        let result = try inbox.expunge(options: policy) { $0.has(.deleted) }
        try Harness.chownTreeToMailOwner(root)
        XCTAssertEqual(result.removed.compactMap(\.uid).sorted(), [2, 4, 5])
        XCTAssertEqual(result.bytes, sizes[2]! + sizes[4]! + sizes[5]!)

        let fetched = try dove.fetch("uid flags", mailbox: "INBOX")
        XCTAssertEqual(fetched.map { $0["uid"] }, ["1", "3"], "survivors keep their UIDs")
        let flags = fetched.map { Set(($0["flags"] ?? "").split(separator: " ").map(String.init)).subtracting(["\\Recent"]) }
        XCTAssertEqual(flags, [[], ["\\Seen"]])
        XCTAssertEqual(try dove.status("uidvalidity", mailbox: "INBOX"), String(validity))
        XCTAssertEqual(try dove.status("uidnext", mailbox: "INBOX"), "6", "N is not lowered")

        let r = try dove.doveadm(["-f", "tab", "quota", "get"])
        var rows: [String: [String]] = [:]
        for line in r.stdout.split(separator: "\n").dropFirst() {
            let cols = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            if cols.count >= 4 { rows[cols[1]] = cols }
        }
        let survivors = sizes[1]! + sizes[3]!
        XCTAssertEqual(rows["MESSAGE"]?[2], "2", r.stdout)
        XCTAssertEqual(rows["STORAGE"]?[2], String((survivors + 1023) / 1024), r.stdout)
        // Exact, in bytes, in the maildirsize Dovecot and we share.
        let usage = try XCTUnwrap(try QuotaRoot(root: root).current()).usage
        XCTAssertEqual(usage, QuotaUsage(bytes: survivors, messages: 2))

        // Deliveries go on after the expunge with the next UID.
        XCTAssertEqual(try f.deliver(["alice"], sampleMessage).status, 0)
        XCTAssertEqual(try dove.fetch("uid", mailbox: "INBOX").compactMap { $0["uid"] }, ["1", "3", "6"])
    }

    func testExpungeReadBackByDoveadm() throws { try check(primed: false) }

    func testExpungeAfterDovecotCachedTheSizes() throws { try check(primed: true) }
}
