// The LMTP session over store configurations: autocreated INBOXes, virtual domains, shared
// folders through postuser, case-sensitive local parts, limits from the configuration.

import XCTest
import NestboxSupport
import NestboxStore
import NestboxLMTP

final class StoreIntegrationTranscriptTests: LMTPTestCase {
    func testLimitsFromTheConfiguration() throws {
        var c = Config()
        try c.set("partition-default", "/tmp/unused", file: "t", line: 0)
        try c.set("lmtp_max_recipients", "2", file: "t", line: 0)
        try c.set("maxmessagesize", "500", file: "t", line: 0)
        let limits = LMTPSession.Limits(config: c)
        XCTAssertEqual(limits.maxRecipients, 2)
        XCTAssertEqual(limits.maxMessageSize, 500)
        XCTAssertEqual(limits.headerLimit, SpoolWriter.defaultHeaderLimit)
        XCTAssertEqual(LMTPSession.Limits(config: Config()).maxRecipients, 500)
        XCTAssertEqual(LMTPSession.Limits(config: Config()).maxMessageSize, 0)
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org> SIZE=501", "MAIL FROM:<a@example.org> SIZE=500",
                         "RCPT TO:<bob@example.com>", "RCPT TO:<bob@example.com>", "RCPT TO:<bob@example.com>"),
                   Reply.lhlo(size: 500) + [Reply.sizeOverLimit(500), Reply.mailOk, Reply.rcptOk, Reply.rcptOk,
                                            Reply.tooManyRecipients],
                   limits: limits, setup: { try $0.makeUser("bob") })
    }

    func testAutocreatedInbox() {
        let m = message(subject: "welcome")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<Newbie@example.com>",
                         "RCPT TO:<../x@example.com>", "RCPT TO:<public@example.com>", "RCPT TO:<.hidden@example.com>",
                         "DATA") + bytes(m + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.badAddress, Reply.badAddress, Reply.badAddress,
                                   Reply.startData, Reply.delivered],
                   options: ["autocreate_post": "yes", "autocreate_quota": "100", "autocreate_inbox_folders": "Sent|Trash"],
                   check: { env, _ in
                       XCTAssertEqual(FS.list(env.root), [".nestbox", "newbie"])
                       XCTAssertFalse(FS.exists("\(env.dir)/x"))
                       XCTAssertEqual(try env.bodies("newbie"), [stored(m)])
                       XCTAssertTrue(try env.folder("newbie", "Sent").exists)
                       XCTAssertTrue(try env.folder("newbie", "Trash").exists)
                       let q = try QuotaRoot(root: env.userRoot("newbie")).current()
                       XCTAssertEqual(q?.limits.bytes, 102_400)
                       XCTAssertEqual(q?.usage.messages, 1)
                   })
    }

    func testVirtualDomains() {
        let m = message(id: "vd@example.org", subject: "domains")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>",
                         "RCPT TO:<BOB@Other.Test>", "RCPT TO:<bob>", "RCPT TO:<carol@other.test>",
                         "RCPT TO:<bob@../x>", "RCPT TO:<bob@other.test/../..>", "RCPT TO:<bob@.other.test>", "DATA")
                   + bytes(m + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.rcptOk, Reply.userUnknown,
                                   Reply.badAddress, Reply.badAddress, Reply.badAddress, Reply.startData,
                                   // bob (default domain), bob@other.test, bob again: a duplicate.
                                   Reply.delivered, Reply.delivered, Reply.duplicate],
                   options: ["virtdomains": "userid", "defaultdomain": "example.com"],
                   setup: { env in
                       try env.makeUser("bob@example.com")
                       try env.makeUser("bob@other.test")
                   },
                   check: { env, _ in
                       XCTAssertTrue(FS.exists("\(env.root)/bob/cur"))
                       XCTAssertTrue(FS.exists("\(env.root)/domain/other.test/bob/cur"))
                       XCTAssertEqual(try env.bodies("bob@example.com"), [stored(m)])
                       XCTAssertEqual(try env.bodies("bob@other.test"), [stored(m)])
                   })
    }

    func testSharedFoldersThroughPostuser() {
        let m = message(subject: "shared")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bb+news@example.com>",
                         "RCPT TO:<bb+closed@example.com>", "RCPT TO:<bb+missing@example.com>", "RCPT TO:<bb@example.com>",
                         "RCPT TO:<bb+INBOX@example.com>", "RCPT TO:<bb+../x@example.com>", "DATA") + bytes(m + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, "550 5.7.1 Permission denied", "550 5.1.1 Mailbox unknown",
                                   Reply.userUnknown, "550 5.1.1 Mailbox unknown", "550 5.1.1 Mailbox unknown",
                                   Reply.startData, Reply.delivered],
                   options: ["postuser": "bb"],
                   setup: { env in
                       let shared = try env.store.sharedRoot(domain: nil)
                       let news = try env.store.folder("news", in: shared)
                       try news.create()
                       FS.write("\(news.path)/dovecot-acl", bytes("anyone p\n"))
                       try env.store.folder("closed", in: shared).create()
                   },
                   check: { env, _ in
                       let shared = try env.store.sharedRoot(domain: nil)
                       let news = try env.store.folder("news", in: shared).messages()
                       XCTAssertEqual(news.count, 1)
                       XCTAssertEqual(stripTrace(text(FS.read(news[0].path) ?? [])), stored(m))
                       XCTAssertEqual(try env.store.folder("closed", in: shared).messages().count, 0)
                   })
    }

    func testCaseSensitiveLocalParts() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<Bob@example.com>",
                         "RCPT TO:<bob@example.com>", "DATA") + bytes(message() + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.userUnknown, Reply.startData, Reply.delivered],
                   options: ["lmtp_downcase_rcpt": "no"],
                   setup: { try $0.makeUser("Bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("Bob").count, 1) })
    }
}
