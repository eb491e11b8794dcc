// RCPT: resolution through the real store, address syntax, quota at RCPT time, the recipient
// limit, and the null sender.

import XCTest
import NestboxSupport
import NestboxStore
import NestboxLMTP

final class RecipientTranscriptTests: LMTPTestCase {
    func testKnownAndUnknownRecipients() {
        let m = message(subject: "two users")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>",
                         "RCPT TO:<nobody@example.com>", "RCPT TO:<Carol@Example.COM>", "RCPT TO:carol@example.com",
                         "DATA") + bytes(m + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.userUnknown, Reply.rcptOk,
                                   "501 5.5.4 Syntax: RCPT TO:<address>", Reply.startData, Reply.delivered, Reply.delivered],
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), [stored(m)])
                       XCTAssertEqual(try env.bodies("carol"), [stored(m)])
                       XCTAssertFalse(FS.exists("\(env.root)/nobody"), "an unknown user must not be created")
                       // Two recipients: no "for <...>" in Received.
                       XCTAssertFalse(try env.contents("bob")[0].contains("\tfor <"))
                   })
    }

    func testAddressesThatCannotNameAUser() {
        let bad = ["../x@example.com", "..@example.com", ".@example.com", ".hidden@example.com", ".nestbox@example.com",
                   "public@example.com", "bob/../carol@example.com", "~bob@example.com", "@example.com",
                   "+detail@example.com", "\"bob smith\"@example.com", "\"bob@x\"@example.com", "bob\tx@example.com"]
        transcript(lines(["LHLO client.test", "MAIL FROM:<a@example.org>"] + bad.map { "RCPT TO:<\($0)>" }
                         + ["DATA", "RCPT TO:<bob@example.com>"]),
                   Reply.lhlo() + [Reply.mailOk] + Array(repeating: Reply.badAddress, count: bad.count)
                   + [Reply.noRecipients, Reply.rcptOk],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in
                       XCTAssertFalse(FS.exists("\(env.dir)/x"))
                       XCTAssertEqual(FS.list(env.root), [".nestbox", "bob"])
                       XCTAssertEqual(FS.list("\(env.root)/.nestbox"), ["create", "spool"])
                   })
    }

    func testQuotedLocalParts() {
        let m = message(subject: "quoted")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>",
                         "RCPT TO:<\"bob\"@example.com>",
                         "RCPT TO:<\"b\\ob\"@example.com>",
                         "RCPT TO:<\"Bob\">",
                         "RCPT TO:<\"bob>\"@example.com>",
                         "RCPT TO:<\"bob smith\"@example.com>",
                         "DATA") + bytes(m + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.rcptOk, Reply.userUnknown,
                                   Reply.badAddress, Reply.startData, Reply.delivered, Reply.delivered, Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in
                       // No Message-ID: never a duplicate, so bob has it three times.
                       XCTAssertEqual(try env.bodies("bob"), [stored(m), stored(m), stored(m)])
                       XCTAssertEqual(try env.messages("bob").map(\.uid), [1, 2, 3])
                   })
    }

    func testEightBitLocalParts() {
        let m = message(subject: "8bit")
        transcript(bytes("LHLO client.test\r\nMAIL FROM:<j\u{f6}rg@example.org> SMTPUTF8\r\n")
                   + bytes("RCPT TO:<j\u{fc}rgen@example.com>\r\n")          // UTF-8
                   + bytes("RCPT TO:<J\u{dc}RGEN@example.com>\r\n")          // UTF-8, upper case
                   + bytes("RCPT TO:<j") + [0xFC] + bytes("rgen@example.com>\r\n")   // Latin-1: not UTF-8
                   + bytes("RCPT TO:<") + [0xFF, 0xFE] + bytes("@example.com>\r\n")  // never UTF-8
                   + bytes("RCPT TO:<a\u{85}b@example.com>\r\n")              // C1 control
                   + bytes("RCPT TO:<jos\u{e9}@example.com>\r\n")             // valid, no such user
                   + bytes("DATA\r\n" + m + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.badAddress, Reply.badAddress,
                                   Reply.badAddress, Reply.userUnknown, Reply.startData, Reply.delivered, Reply.delivered],
                   setup: { try $0.makeUser("j\u{fc}rgen") },
                   check: { env, _ in
                       XCTAssertTrue(FS.exists("\(env.root)/j\u{fc}rgen/cur"))
                       XCTAssertEqual(try env.bodies("j\u{fc}rgen"), [stored(m), stored(m)])
                       XCTAssertTrue(try env.contents("j\u{fc}rgen")[0].hasPrefix("Return-Path: <j\u{f6}rg@example.org>\n"))
                       XCTAssertEqual(FS.list(env.root), [".nestbox", "j\u{fc}rgen"])
                   })
    }

    func testNullSender() {
        let m = message(subject: "bounce")
        transcript(lines("LHLO client.test", "MAIL FROM:<>", "RCPT TO:<bob@example.com>", "DATA") + bytes(m + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.startData, Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in
                       let c = try env.contents("bob")
                       XCTAssertEqual(c.count, 1)
                       XCTAssertTrue(c[0].hasPrefix("Return-Path: <>\nReceived: from client.test (127.0.0.1)\n\tby mx.test (Nestbox) with LMTP id T1-1\n\tfor <bob@example.com>; "), c[0])
                       XCTAssertEqual(stripTrace(c[0]), stored(m))
                   })
    }

    func testRCPTParameters() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com> IGNOREQUOTA",
                         "RCPT TO:<bob@example.com> ignorequota", "RCPT TO:<bob@example.com> IGNOREQUOTA=yes",
                         "RCPT TO:<bob@example.com> NOTIFY=NEVER", "RCPT TO:<bob@example.com> ORCPT=rfc822;bob@example.com",
                         "RCPT TO:<nobody@example.com> FOO"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.unsupported("IGNOREQUOTA"),
                                   Reply.unsupported("NOTIFY"), Reply.unsupported("ORCPT"), Reply.unsupported("FOO")],
                   setup: { try $0.makeUser("bob") })
    }

    // MARK: Quota

    func testOverQuotaAtRCPTAndIGNOREQUOTA() {
        let first = message(subject: "first"), second = message(subject: "second")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<carol@example.com>", "DATA")
                   + bytes(first + ".\r\n")
                   // carol has one message of one allowed: full.
                   + lines("MAIL FROM:<a@example.org>", "RCPT TO:<carol@example.com>", "RCPT TO:<carol@example.com> IGNOREQUOTA",
                           "DATA") + bytes(second + ".\r\n")
                   + lines("MAIL FROM:<a@example.org>", "RCPT TO:<carol@example.com>", "DATA"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.startData, Reply.delivered,
                                   Reply.mailOk, Reply.mailboxFull, Reply.rcptOk, Reply.startData, Reply.delivered,
                                   Reply.mailOk, Reply.mailboxFull, Reply.noRecipients],
                   setup: { try $0.makeUser("carol", limits: QuotaLimits(bytes: nil, messages: 1)) },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("carol"), [stored(first), stored(second)])
                       let q = try QuotaRoot(root: env.userRoot("carol")).current()
                       XCTAssertEqual(q?.usage.messages, 2)
                   })
    }

    func testOverQuotaPermanentFailure() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<carol@example.com>",
                         "RCPT TO:<carol@example.com> IGNOREQUOTA"),
                   Reply.lhlo() + [Reply.mailOk, "552 5.2.2 Mailbox full", Reply.rcptOk],
                   options: ["lmtp_over_quota_perm_failure": "yes"],
                   setup: { env in
                       try env.makeUser("carol")
                       try env.fill("carol", count: 2, size: 600, limits: QuotaLimits(bytes: 1000))
                   })
    }

    func testStrictQuotaCountsTheDeclaredSize() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org> SIZE=2000", "RCPT TO:<dave@example.com>",
                         "RCPT TO:<dave@example.com> IGNOREQUOTA", "RSET",
                         "MAIL FROM:<a@example.org> SIZE=500", "RCPT TO:<dave@example.com>", "RSET",
                         "MAIL FROM:<a@example.org>", "RCPT TO:<dave@example.com>"),
                   Reply.lhlo() + [Reply.mailOk, Reply.mailboxFull, Reply.rcptOk, Reply.ok,
                                   Reply.mailOk, Reply.rcptOk, Reply.ok, Reply.mailOk, Reply.rcptOk],
                   options: ["lmtp_strict_quota": "yes"],
                   setup: { try $0.makeUser("dave", limits: QuotaLimits(bytes: 1000)) })
        // Without strict quota, the declared size does not matter while there is room.
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org> SIZE=2000", "RCPT TO:<dave@example.com>"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk],
                   setup: { try $0.makeUser("dave", limits: QuotaLimits(bytes: 1000)) })
    }

    // MARK: The recipient limit

    func testRecipientLimit() {
        let m = message(id: "limit@example.org", subject: "limit")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<nobody@example.com>",
                         "RCPT TO:<u1@example.com>", "RCPT TO:<u2@example.com>", "RCPT TO:<u3@example.com>",
                         "RCPT TO:<u4@example.com>", "RCPT TO:<nobody@example.com>", "RCPT TO:<../x>", "DATA")
                   + bytes(m + ".\r\n")
                   + lines("MAIL FROM:<a@example.org>", "RCPT TO:<u4@example.com>", "RCPT TO:<u1@example.com>",
                           "RCPT TO:<u2@example.com>", "RCPT TO:<u3@example.com>", "RSET",
                           "MAIL FROM:<a@example.org>", "RCPT TO:<u3@example.com>"),
                   Reply.lhlo() + [Reply.mailOk, Reply.userUnknown, Reply.rcptOk, Reply.rcptOk, Reply.rcptOk,
                                   Reply.tooManyRecipients, Reply.tooManyRecipients, Reply.tooManyRecipients,
                                   Reply.startData, Reply.delivered, Reply.delivered, Reply.delivered,
                                   Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.rcptOk, Reply.tooManyRecipients, Reply.ok,
                                   Reply.mailOk, Reply.rcptOk],
                   limits: .init(maxRecipients: 3),
                   setup: { env in for u in ["u1", "u2", "u3", "u4"] { try env.makeUser(u) } },
                   check: { env, _ in
                       for u in ["u1", "u2", "u3"] { XCTAssertEqual(try env.bodies(u), [stored(m)], u) }
                       XCTAssertEqual(try env.messages("u4").count, 0)
                   })
    }

    /// 1000 RCPTs for one user with the default limit of 500: 500 accepted, 500 refused; the
    /// message is stored once and the other 499 copies are duplicates.
    func testThousandRecipientsForOneUser() {
        let m = message(id: "thousand@example.org", subject: "many")
        let input = lines(["LHLO client.test", "MAIL FROM:<a@example.org>"]
                          + Array(repeating: "RCPT TO:<bob@example.com>", count: 1000) + ["DATA"])
            + bytes(m + ".\r\n") + lines("QUIT")
        let expected = Reply.lhlo() + [Reply.mailOk] + Array(repeating: Reply.rcptOk, count: 500)
            + Array(repeating: Reply.tooManyRecipients, count: 500) + [Reply.startData, Reply.delivered]
            + Array(repeating: Reply.duplicate, count: 499) + [Reply.bye]
        XCTAssertEqual(expected.filter { $0 == Reply.rcptOk }.count, 500)
        transcript(input, expected,
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), [stored(m)])
                       XCTAssertEqual(try env.tmpFiles("bob"), [])
                   })
    }

    /// 1000 RCPTs over 10 users with a limit of 1000: all accepted; each user gets the message
    /// once (the first of its RCPTs), every later one is a duplicate.
    func testThousandRecipientsOverTenUsers() {
        let m = message(id: "ten@example.org", subject: "many users")
        let users = (0..<10).map { "user\($0)" }
        let rcpts = (0..<1000).map { "RCPT TO:<\(users[$0 % 10])@example.com>" }
        let expected = Reply.lhlo() + [Reply.mailOk] + Array(repeating: Reply.rcptOk, count: 1000) + [Reply.startData]
            + Array(repeating: Reply.delivered, count: 10) + Array(repeating: Reply.duplicate, count: 990)
        transcript(lines(["LHLO client.test", "MAIL FROM:<a@example.org>"] + rcpts + ["DATA"]) + bytes(m + ".\r\n"),
                   expected,
                   limits: .init(maxRecipients: 1000),
                   setup: { env in for u in users { try env.makeUser(u) } },
                   check: { env, _ in
                       for u in users { XCTAssertEqual(try env.bodies(u), [stored(m)], u) }
                   })
    }

    /// Without a Message-ID nothing is a duplicate: 200 RCPTs for 2 users give 100 copies each.
    func testManyRecipientsWithoutMessageIDAreAllStored() {
        let m = message(subject: "no id")
        let rcpts = (0..<200).map { $0 % 2 == 0 ? "RCPT TO:<bob@example.com>" : "RCPT TO:<carol@example.com>" }
        transcript(lines(["LHLO client.test", "MAIL FROM:<a@example.org>"] + rcpts + ["DATA"]) + bytes(m + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk] + Array(repeating: Reply.rcptOk, count: 200) + [Reply.startData]
                   + Array(repeating: Reply.delivered, count: 200),
                   limits: .init(maxRecipients: 200),
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.messages("bob").map(\.uid), (1...100).map { UInt32($0) })
                       XCTAssertEqual(try env.messages("carol").count, 100)
                   })
    }

    // MARK: +detail

    func testDetailFolders() {
        let m = message(id: "detail@example.org", subject: "detail")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob+lists@example.com>",
                         "RCPT TO:<bob+private@example.com>", "RCPT TO:<bob+missing@example.com>", "DATA")
                   + bytes(m + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.rcptOk, Reply.startData,
                                   // bob/lists, then bob (INBOX: no p right on private), then bob again.
                                   Reply.delivered, Reply.delivered, Reply.duplicate],
                   setup: { env in
                       try env.makeUser("bob", folders: ["lists", "private"])
                       FS.write("\(try env.folder("bob", "lists").path)/dovecot-acl", bytes("anyone p\n"))
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob", folder: "lists"), [stored(m)])
                       XCTAssertEqual(try env.bodies("bob"), [stored(m)])
                       XCTAssertEqual(try env.messages("bob", folder: "private").count, 0)
                   })
    }
}
