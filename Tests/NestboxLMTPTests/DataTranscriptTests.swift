// DATA: framing (dot-unstuffing, the terminator, line ends), what lands on disk, one reply per
// accepted recipient in RCPT order, whole-message refusals, and a connection lost mid-message.

import XCTest
import NestboxSupport
import NestboxStore
import NestboxLMTP

final class DataTranscriptTests: LMTPTestCase {
    let envelope = lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "DATA")
    let envelopeReplies = Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.startData]

    func testDotUnstuffing() {
        let sent = "Subject: dots\r\n\r\n..x\r\n..\r\n...\r\n. leading space\r\n.\tx\r\nx.\r\n.x\r\n\r\n.\r\n"
        let want = "Subject: dots\n\n.x\n.\n..\n leading space\n\tx\nx.\nx\n\n"
        transcript(envelope + bytes(sent) + lines("NOOP"), envelopeReplies + [Reply.delivered, Reply.ok],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [want]) })
    }

    func testLineWithOnlyTwoDotsIsADot() {
        transcript(envelope + bytes("Subject: x\r\n\r\n..\r\n.\r\n"), envelopeReplies + [Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), ["Subject: x\n\n.\n"]) })
    }

    func testNotATerminator() {
        // ". " and ".x" and "x." are no terminators; neither is "." in the middle of a line.
        let sent = "Subject: t\r\n\r\na\r\n. \r\nb.\r\n.\r\r\nc\r\n.\r\n"
        transcript(envelope + bytes(sent), envelopeReplies + [Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), ["Subject: t\n\na\n \nb.\n\r\nc\n"]) })
    }

    func testCRLFAndBareLFMixed() {
        let sent = "Subject: mixed\nX-A: 1\r\n\nline 1\r\nline 2\nline\r3\r\n\r\n\nend\n.\n"
        transcript(envelope + bytes(sent) + bytes("NOOP\n"), envelopeReplies + [Reply.delivered, Reply.ok],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in
                       let m = try env.messages("bob")
                       XCTAssertEqual(m.count, 1)
                       let content = FS.read(m[0].path) ?? []
                       XCTAssertEqual(stripTrace(text(content)), "Subject: mixed\nX-A: 1\n\nline 1\nline 2\nline\r3\n\n\nend\n")
                       // S= is the size on disk, W= counts every LF as CRLF.
                       XCTAssertEqual(m[0].size, Int64(content.count))
                       XCTAssertEqual(m[0].size, FS.size(m[0].path))
                       XCTAssertEqual(m[0].virtualSize, Int64(content.count + content.filter { $0 == 10 }.count))
                   })
    }

    func testStoredMessageAndTraceFields() {
        let m = "Return-Path: <forged@example.net>\r\n" + message(id: "trace@example.org", subject: "trace")
        transcript(envelope + bytes(m + ".\r\n"), envelopeReplies + [Reply.delivered],
                   setup: { try $0.makeUser("bob", limits: QuotaLimits(bytes: 1_000_000)) },
                   check: { env, _ in
                       let c = try env.contents("bob")
                       XCTAssertEqual(c.count, 1)
                       XCTAssertTrue(c[0].hasPrefix("Return-Path: <a@example.org>\nReceived: from client.test (127.0.0.1)\n\tby mx.test (Nestbox) with LMTP id T1-1\n\tfor <bob@example.com>; "), c[0])
                       XCTAssertFalse(c[0].contains("forged"), "the message's own Return-Path must be dropped")
                       XCTAssertEqual(stripTrace(c[0]), stored(message(id: "trace@example.org", subject: "trace")))
                       let msgs = try env.messages("bob")
                       XCTAssertEqual(msgs.map(\.uid), [1])
                       XCTAssertEqual(msgs[0].subdirectory, "new")
                       XCTAssertEqual(try env.tmpFiles("bob"), [])
                       // maildirsize counts the delivery.
                       let q = try QuotaRoot(root: env.userRoot("bob")).current()
                       XCTAssertEqual(q?.usage.messages, 1)
                       XCTAssertEqual(q?.usage.bytes, msgs[0].size)
                   })
    }

    func testEmptyMessage() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>",
                         "RCPT TO:<carol@example.com>", "DATA", ".", "MAIL FROM:<a@example.org>"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.startData, Reply.emptyMessage,
                                   Reply.emptyMessage, Reply.mailOk],
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.messages("bob").count, 0)
                       XCTAssertEqual(try env.messages("carol").count, 0)
                   })
    }

    func testTerminatorAtEveryKindOfBoundary() {
        // Several messages in a row in one session, the terminator with CRLF and with LF.
        let a = message(subject: "a"), b = message(subject: "b")
        transcript(envelope + bytes(a + ".\r\n")
                   + lines("MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "DATA") + bytes(b + ".\nNOOP\r\n"),
                   envelopeReplies + [Reply.delivered, Reply.mailOk, Reply.rcptOk, Reply.startData, Reply.delivered, Reply.ok],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(a), stored(b)]) })
    }

    // MARK: One reply per recipient

    /// bob: plain; dave: strict quota that RCPT accepts (no SIZE) but delivery refuses;
    /// nobody: unknown at RCPT (no reply after DATA); carol: over quota with IGNOREQUOTA; erin:
    /// plain. After ".": four replies, in RCPT order.
    func testMixedOutcomesInRCPTOrder() {
        let big = message(subject: "mixed", body: Array(repeating: String(repeating: "m", count: 70), count: 30))
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>",
                         "RCPT TO:<dave@example.com>", "RCPT TO:<nobody@example.com>",
                         "RCPT TO:<carol@example.com>", "RCPT TO:<carol+x@example.com> IGNOREQUOTA",
                         "RCPT TO:<erin@example.com>", "DATA") + bytes(big + ".\r\n") + lines("NOOP"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.userUnknown, Reply.mailboxFull,
                                   Reply.rcptOk, Reply.rcptOk, Reply.startData,
                                   Reply.delivered, Reply.mailboxFull, Reply.delivered, Reply.delivered, Reply.ok],
                   options: ["lmtp_strict_quota": "yes"],
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("dave", limits: QuotaLimits(bytes: 1000))
                       try env.makeUser("carol")
                       try env.fill("carol", count: 1, size: 2000, limits: QuotaLimits(bytes: 1000))
                       try env.makeUser("erin")
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), [stored(big)])
                       XCTAssertEqual(try env.messages("dave").count, 0)
                       XCTAssertEqual(try env.tmpFiles("dave"), [])
                       XCTAssertEqual(try env.messages("carol").count, 2)  // the filler and this one
                       XCTAssertEqual(try env.bodies("erin"), [stored(big)])
                   })
    }

    /// A delivery-time failure does not change the replies of the others: the same user twice,
    /// one message allowed, no Message-ID (so no duplicate): delivered, then over quota.
    func testSameUserTwiceHitsTheQuotaAtDelivery() {
        let m = message(subject: "twice")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<carol@example.com>",
                         "RCPT TO:<bob@example.com>", "RCPT TO:<carol@example.com>", "DATA") + bytes(m + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.rcptOk, Reply.startData,
                                   Reply.delivered, Reply.delivered, Reply.mailboxFull],
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol", limits: QuotaLimits(bytes: nil, messages: 1))
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("carol"), [stored(m)])
                       XCTAssertEqual(try env.bodies("bob"), [stored(m)])
                   })
    }

    // MARK: Whole-message refusals

    func testNULInTheMessage() {
        let input = lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>",
                          "RCPT TO:<carol@example.com>", "DATA")
            + bytes("Subject: nul\r\n\r\nbefore ") + [0] + bytes(" after\r\nmore\r\n.\r\n")
            + lines("MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "DATA") + bytes(message(subject: "clean") + ".\r\n")
        transcript(input,
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.startData,
                                   Reply.nulInMessage, Reply.nulInMessage,
                                   Reply.mailOk, Reply.rcptOk, Reply.startData, Reply.delivered],
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), [stored(message(subject: "clean"))])
                       XCTAssertEqual(try env.messages("carol").count, 0)
                       XCTAssertEqual(try env.tmpFiles("bob"), [])
                       XCTAssertEqual(try env.tmpFiles("carol"), [])
                   })
    }

    func testNULInTheHeader() {
        transcript(envelope + bytes("Subject: a") + [0] + bytes("b\r\n\r\nbody\r\n.\r\n"),
                   envelopeReplies + [Reply.nulInMessage],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 0) })
    }

    func testMessageOverMaxMessageSize() {
        let limit: Int64 = 300
        let big = message(subject: "big", body: Array(repeating: String(repeating: "b", count: 60), count: 10))
        XCTAssertGreaterThan(big.utf8.count, Int(limit))
        let small = message(subject: "small")
        let input = lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>",
                          "RCPT TO:<carol@example.com>", "DATA") + bytes(big + ".\r\n")
            + lines("MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "DATA") + bytes(small + ".\r\n")
        transcript(input,
                   Reply.lhlo(size: limit) + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.startData,
                                              Reply.tooBig(limit), Reply.tooBig(limit),
                                              Reply.mailOk, Reply.rcptOk, Reply.startData, Reply.delivered],
                   limits: .init(maxMessageSize: limit),
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                   },
                   check: { env, session in
                       XCTAssertFalse(session.inTransaction)
                       XCTAssertEqual(try env.bodies("bob"), [stored(small)])
                       XCTAssertEqual(try env.messages("carol").count, 0)
                   })
    }

    func testMessageOfExactlyMaxMessageSize() {
        // The limit counts the octets as sent (CRLF), after dot-unstuffing.
        let m = "Subject: x\r\n\r\n" + String(repeating: "y", count: 84) + "\r\n..\r\n"
        let limit = Int64(m.utf8.count - 1)  // the unstuffed dot does not count
        XCTAssertEqual(limit, 103)
        transcript(envelope + bytes(m + ".\r\n"), Reply.lhlo(size: limit) + [Reply.mailOk, Reply.rcptOk, Reply.startData, Reply.delivered],
                   limits: .init(maxMessageSize: limit), setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 1) })
        transcript(envelope + bytes(m + ".\r\n"), Reply.lhlo(size: limit - 1) + [Reply.mailOk, Reply.rcptOk, Reply.startData, Reply.tooBig(limit - 1)],
                   limits: .init(maxMessageSize: limit - 1), setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 0) })
    }

    func testHeaderSectionOverTheLimit() {
        let headerLimit = 200
        let m = "Subject: long\r\nX-Long: " + String(repeating: "h", count: 300) + "\r\n\r\nbody\r\n"
        let ok = message(subject: "short")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>",
                         "RCPT TO:<carol@example.com>", "DATA") + bytes(m + ".\r\n")
                   + lines("MAIL FROM:<a@example.org>", "RCPT TO:<carol@example.com>", "DATA") + bytes(ok + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.startData,
                                   Reply.headerTooLarge, Reply.headerTooLarge,
                                   Reply.mailOk, Reply.rcptOk, Reply.startData, Reply.delivered],
                   limits: .init(headerLimit: headerLimit),
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.messages("bob").count, 0)
                       XCTAssertEqual(try env.bodies("carol"), [stored(ok)])
                   })
        // A big body is no header: the same limit lets it through.
        let bigBody = message(subject: "body", body: Array(repeating: String(repeating: "b", count: 100), count: 10))
        transcript(envelope + bytes(bigBody + ".\r\n"), envelopeReplies + [Reply.delivered],
                   limits: .init(headerLimit: headerLimit), setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(bigBody)]) })
    }

    /// When a message breaks two limits, the refusal must not depend on how the octets were cut
    /// into reads: the limit crossed first in the stream decides (a per-byte reader can only
    /// answer that way).
    func testFirstLimitCrossedDecidesTheRefusal() {
        // NUL at octet 16, size limit crossed at octet 101, both in one line.
        let nulThenSize = "Subject: x\r\n\r\na\u{0}" + String(repeating: "b", count: 200) + "\r\n.\r\n"
        transcript(envelope + bytes(nulThenSize), Reply.lhlo(size: 100) + [Reply.mailOk, Reply.rcptOk, Reply.startData, Reply.nulInMessage],
                   limits: .init(maxMessageSize: 100), setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 0) })
        // Header limit (100) crossed before the size limit (300), in one header line.
        let headerThenSize = "X-Long: " + String(repeating: "h", count: 400) + "\r\n\r\nbody\r\n.\r\n"
        transcript(envelope + bytes(headerThenSize), Reply.lhlo(size: 300) + [Reply.mailOk, Reply.rcptOk, Reply.startData, Reply.headerTooLarge],
                   limits: .init(maxMessageSize: 300, headerLimit: 100), setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 0) })
        // Header limit (100) crossed before a NUL, in one header line.
        let headerThenNUL = "X-Long: " + String(repeating: "h", count: 200) + "\u{0}\r\n\r\nbody\r\n.\r\n"
        transcript(envelope + bytes(headerThenNUL), envelopeReplies + [Reply.headerTooLarge],
                   limits: .init(headerLimit: 100), setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 0) })
        // The same through BDAT: one chunk, NUL early, over the size limit.
        let chunk = bytes("Subject: x\r\n\r\n\u{0}" + String(repeating: "c", count: 300) + "\r\n")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "BDAT \(chunk.count) LAST") + chunk,
                   Reply.lhlo(size: 100) + [Reply.mailOk, Reply.rcptOk, Reply.nulInMessage],
                   limits: .init(maxMessageSize: 100), setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 0) })
    }

    // MARK: Lost connections

    func testConnectionLostInTheMiddleOfDATA() {
        let half = "Subject: half\r\nX-A: b\r\n\r\nfirst line\r\nsecond li"
        transcript([.send(envelope + bytes(half), envelopeReplies),
                    .check { env, session in
                        XCTAssertTrue(session.inTransaction)
                        // One recipient: the message streams into its folder's tmp/.
                        XCTAssertEqual(try env.tmpFiles("bob").count, 1, "the message streams into tmp/")
                    },
                    .lose,
                    .check { env, session in
                        XCTAssertTrue(session.isClosed)
                        XCTAssertFalse(session.inTransaction)
                        XCTAssertEqual(env.spoolFiles, [])
                    },
                    .send(bytes("ne\r\n.\r\n") + lines("NOOP"), [])],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in
                       XCTAssertEqual(try env.messages("bob").count, 0)
                       XCTAssertEqual(try env.tmpFiles("bob"), [])
                       XCTAssertEqual(FS.list(env.spoolDirectory), [])
                   })
    }

    func testConnectionLostWithABigHalfMessage() {
        // More than the 64 KiB flushed to the spool file before the connection goes away.
        let line = String(repeating: "z", count: 998) + "\r\n"
        let half = "Subject: big half\r\n\r\n" + String(repeating: line, count: 200)
        transcript([.send(envelope + bytes(half), envelopeReplies),
                    .check { env, _ in
                        let tmp = try env.tmpFiles("bob")
                        XCTAssertEqual(tmp.count, 1)
                        let size = tmp.first.flatMap { FS.size("\(env.root)/bob/tmp/\($0)") } ?? 0
                        XCTAssertGreaterThan(size, 65536)
                    },
                    .lose],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 0) })
    }

    func testConnectionLostBeforeTheReplies() {
        // Lost right at the terminator's "." (no LF yet): not complete, nothing stored.
        transcript([.send(envelope + bytes(message(subject: "almost") + "."), envelopeReplies), .lose],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 0) })
    }
}
