// PIPELINING: many transactions in one feed, replies in order, UIDs in order. Duplicate
// suppression: (Message-ID, Date, mailbox) delivered once.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
import NestboxStore
import NestboxLMTP

final class PipeliningTranscriptTests: LMTPTestCase {
    func testHundredTransactionsInOneFeed() {
        var input = lines("LHLO client.test")
        var expected = Reply.lhlo()
        var messages: [String] = []
        for i in 1...100 {
            let m = message(id: "p\(i)@example.org", subject: "message \(i)", body: ["number \(i)", ".dot \(i)"])
            messages.append(m)
            input += lines("MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "DATA")
            input += bytes(m.replacingDots() + ".\r\n")
            expected += [Reply.mailOk, Reply.rcptOk, Reply.startData, Reply.delivered]
        }
        input += lines("QUIT")
        expected += [Reply.bye]
        XCTAssertEqual(expected.count, 8 + 400 + 1)
        transcript(input, expected,
                   setup: { try $0.makeUser("bob") },
                   check: { env, session in
                       XCTAssertTrue(session.isClosed)
                       let stored100 = try env.messages("bob")
                       XCTAssertEqual(stored100.map(\.uid), (1...100).map { UInt32($0) })
                       XCTAssertEqual(try env.bodies("bob"), messages.map(stored))
                       // Each Received names its own transaction.
                       let contents = try env.contents("bob")
                       for (i, c) in contents.enumerated() where !c.contains("with LMTP id T1-\(i + 1)\n") {
                           XCTFail("message \(i + 1): wrong Received: \(c.prefix(200))")
                       }
                   })
    }

    func testHundredChunkedTransactionsInOneFeedWithRefusals() {
        // Every third transaction has only an unknown recipient: its BDAT LAST is refused (and
        // read), the transaction ends, the next MAIL is fine.
        var input = lines("LHLO client.test")
        var expected = Reply.lhlo()
        var delivered: [String] = []
        for i in 1...100 {
            let m = message(id: "c\(i)@example.org", subject: "chunked \(i)")
            let known = i % 3 != 0
            input += lines("MAIL FROM:<a@example.org>", known ? "RCPT TO:<bob@example.com>" : "RCPT TO:<nobody@example.com>")
            let b = Array(m.utf8)
            if known {
                input += bytes("BDAT \(b.count) LAST\r\n") + b
                expected += [Reply.mailOk, Reply.rcptOk, Reply.delivered]
                delivered.append(m)
            } else {
                // Two chunks, both read and refused.
                input += bytes("BDAT 7\r\n") + b[..<7] + bytes("BDAT \(b.count - 7) LAST\r\n") + b[7...]
                expected += [Reply.mailOk, Reply.userUnknown, Reply.noRecipients, Reply.noRecipients]
            }
        }
        transcript(input, expected,
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in
                       XCTAssertEqual(delivered.count, 67)
                       XCTAssertEqual(try env.messages("bob").map(\.uid), (1...67).map { UInt32($0) })
                       XCTAssertEqual(try env.bodies("bob"), delivered.map(stored))
                   })
    }

    func testPipelinedEnvelopeWithErrorsInside() {
        // One batch: errors do not shift the replies of the commands after them.
        let m = message(subject: "batch")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org> FOO=1", "MAIL FROM:<a@example.org>",
                         "RCPT TO:<nobody@example.com>", "RCPT TO:<bob@example.com> X=1", "RCPT TO:<bob@example.com>",
                         "VRFY bob", "RCPT TO:<carol@example.com>", "DATA") + bytes(m + ".\r\n") + lines("RSET", "QUIT"),
                   Reply.lhlo() + [Reply.unsupported("FOO"), Reply.mailOk, Reply.userUnknown, Reply.unsupported("X"),
                                   Reply.rcptOk, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                                   Reply.rcptOk, Reply.startData, Reply.delivered, Reply.delivered, Reply.ok, Reply.bye],
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), [stored(m)])
                       XCTAssertEqual(try env.bodies("carol"), [stored(m)])
                   })
    }
}

final class DuplicateTranscriptTests: LMTPTestCase {
    func send(_ m: String, to users: [String] = ["bob"]) -> [UInt8] {
        lines(["MAIL FROM:<a@example.org>"] + users.map { "RCPT TO:<\($0)@example.com>" } + ["DATA"]) + bytes(m + ".\r\n")
    }

    func replies(_ outcomes: [String]) -> [String] {
        [Reply.mailOk] + Array(repeating: Reply.rcptOk, count: outcomes.count) + [Reply.startData] + outcomes
    }

    func testSameMessageIDAndDateTwice() {
        let m = message(id: "dup@example.org", subject: "dup")
        transcript(lines("LHLO client.test") + send(m) + send(m),
                   Reply.lhlo() + replies([Reply.delivered]) + replies([Reply.duplicate]),
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(m)]) })
    }

    func testSameMessageIDWithoutDateTwice() {
        let m = message(id: "nodate@example.org", date: nil, subject: "no date")
        transcript(lines("LHLO client.test") + send(m) + send(m),
                   Reply.lhlo() + replies([Reply.delivered]) + replies([Reply.duplicate]),
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(m)]) })
    }

    func testSuppressionOff() {
        let m = message(id: "dup@example.org", subject: "dup")
        transcript(lines("LHLO client.test") + send(m) + send(m),
                   Reply.lhlo() + replies([Reply.delivered]) + replies([Reply.delivered]),
                   options: ["duplicatesuppression": "no"],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), [stored(m), stored(m)])
                       XCTAssertFalse(FS.exists("\(env.root)/.nestbox/duplicates"))
                   })
    }

    func testDifferentDateIsNotADuplicate() {
        let a = message(id: "dup@example.org", date: "Mon, 1 Jan 2024 10:00:00 +0000", subject: "dup")
        let b = message(id: "dup@example.org", date: "Mon, 1 Jan 2024 10:00:01 +0000", subject: "dup")
        transcript(lines("LHLO client.test") + send(a) + send(b) + send(a) + send(b),
                   Reply.lhlo() + replies([Reply.delivered]) + replies([Reply.delivered])
                   + replies([Reply.duplicate]) + replies([Reply.duplicate]),
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(a), stored(b)]) })
    }

    func testNoMessageIDIsNeverADuplicate() {
        let m = message(subject: "no id")
        transcript(lines("LHLO client.test") + send(m) + send(m),
                   Reply.lhlo() + replies([Reply.delivered]) + replies([Reply.delivered]),
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(m), stored(m)]) })
    }

    func testDuplicateIsPerMailbox() {
        let m = message(id: "two@example.org", subject: "two users")
        transcript(lines("LHLO client.test") + send(m, to: ["bob"]) + send(m, to: ["carol", "bob", "Carol"]),
                   Reply.lhlo() + replies([Reply.delivered]) + replies([Reply.delivered, Reply.duplicate, Reply.duplicate]),
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), [stored(m)])
                       XCTAssertEqual(try env.bodies("carol"), [stored(m)])
                   })
    }

    func testFoldedAndSpacedMessageIDIsTheSameKey() {
        let a = message(id: "fold@example.org", subject: "fold")
        let b = a.replacingFirst("Message-ID: <fold@example.org>", with: "Message-ID:\r\n   <fold@example.org>  ")
        XCTAssertNotEqual(a, b)
        transcript(lines("LHLO client.test") + send(a) + send(b),
                   Reply.lhlo() + replies([Reply.delivered]) + replies([Reply.duplicate]),
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(a)]) })
    }

    /// Postfix retries after a connection lost before it read the replies: the retry, on a new
    /// connection, is recognised.
    func testRetryOnANewConnection() {
        let m = message(id: "retry@example.org", subject: "retry")
        transcript([.send(lines("LHLO client.test") + send(m, to: ["bob", "carol"]),
                          Reply.lhlo() + replies([Reply.delivered, Reply.delivered])),
                    .lose,
                    .reconnect,
                    .send(lines("LHLO client.test") + send(m, to: ["bob", "carol"]),
                          Reply.lhlo() + replies([Reply.duplicate, Reply.duplicate]))],
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), [stored(m)])
                       XCTAssertEqual(try env.bodies("carol"), [stored(m)])
                   })
    }

    func testSameMessageByDATAThenByBDAT() {
        let m = message(id: "both@example.org", subject: "both ways")
        let b = Array(m.utf8)
        transcript(lines("LHLO client.test") + send(m)
                   + lines("MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "BDAT \(b.count) LAST") + b,
                   Reply.lhlo() + replies([Reply.delivered]) + [Reply.mailOk, Reply.rcptOk, Reply.duplicate],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 1) })
    }

    func testExpiredRecordIsNotADuplicate() {
        let m = message(id: "old@example.org", subject: "old")
        transcript([.send(lines("LHLO client.test") + send(m), Reply.lhlo() + replies([Reply.delivered])),
                    .check { env, _ in
                        // Two hours old: beyond duplicate_expire=1h. The records' times are
                        // moved back in place (as many digits: the length field stays right).
                        let dir = "\(env.root)/.nestbox/duplicates"
                        var aged = 0
                        for name in FS.list(dir) where name.hasSuffix(".log") {
                            let text = String(decoding: FS.read("\(dir)/\(name)") ?? [], as: UTF8.self)
                            let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
                                let f = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
                                guard f.count == 4, let seconds = Int(f[2]) else { return String(line) }
                                aged += 1
                                return "\(f[0]) \(f[1]) \(seconds - 7200) \(f[3])"
                            }
                            FS.write("\(dir)/\(name)", Array(lines.joined(separator: "\n").utf8))
                        }
                        XCTAssertEqual(aged, 2, "pending, then final")
                    },
                    .send(send(m), replies([Reply.delivered])),
                    .send(send(m), replies([Reply.duplicate]))],
                   options: ["duplicate_expire": "1h"],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(m), stored(m)]) })
    }

    func testDuplicateOfAnOverQuotaUserIsStillSuppressed() {
        // The second copy is answered "duplicate suppressed" even though the first filled the box.
        let m = message(id: "q@example.org", subject: "quota")
        transcript(lines("LHLO client.test") + send(m, to: ["carol", "carol"]),
                   Reply.lhlo() + replies([Reply.delivered, Reply.duplicate]),
                   setup: { try $0.makeUser("carol", limits: QuotaLimits(bytes: nil, messages: 1)) },
                   check: { env, _ in XCTAssertEqual(try env.messages("carol").count, 1) })
    }
}

extension String {
    /// Dot-stuffs a CRLF message for DATA.
    func replacingDots() -> String {
        var out = ""
        var atLineStart = true
        for c in self {
            if atLineStart && c == "." { out.append(".") }
            out.append(c)
            atLineStart = c == "\r\n" || c == "\n"
        }
        return out
    }

    func replacingFirst(_ target: String, with replacement: String) -> String {
        let t = Array(target.utf8), s = Array(self.utf8)
        guard t.count <= s.count else { return self }
        for i in 0...(s.count - t.count) where Array(s[i..<(i + t.count)]) == t {
            return text(Array(s[..<i]) + Array(replacement.utf8) + Array(s[(i + t.count)...]))
        }
        return self
    }
}
