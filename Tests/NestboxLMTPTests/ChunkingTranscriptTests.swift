// BDAT (RFC 3030 CHUNKING): exactly the announced octets, no dot-unstuffing, no terminator;
// refused chunks are still read; one reply per recipient after the LAST chunk.

import XCTest
import NestboxSupport
import NestboxStore
import NestboxLMTP

final class ChunkingTranscriptTests: LMTPTestCase {
    let envelope = lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>")
    let envelopeReplies = Reply.lhlo() + [Reply.mailOk, Reply.rcptOk]

    func bdat(_ chunk: [UInt8], last: Bool = false) -> [UInt8] {
        bytes("BDAT \(chunk.count)\(last ? " LAST" : "")\r\n") + chunk
    }

    func testChunks() {
        let m = Array(message(subject: "chunks", body: ["line one", "line two", "", "end"]).utf8)
        // Cut after the CR of the first CRLF, then anywhere.
        let cr = m.firstIndex(of: 13)! + 1
        let parts = [Array(m[..<cr]), Array(m[cr..<(cr + 17)]), Array(m[(cr + 17)..<(m.count - 5)]), Array(m[(m.count - 5)...])]
        XCTAssertEqual(parts.flatMap { $0 }, m)
        transcript(envelope + bdat(parts[0]) + bdat(parts[1]) + bdat(parts[2]) + bdat(parts[3], last: true) + lines("NOOP"),
                   envelopeReplies + [Reply.octets(parts[0].count), Reply.octets(parts[1].count), Reply.octets(parts[2].count),
                                      Reply.delivered, Reply.ok],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(text(m))]) })
    }

    /// The reply to a non-LAST BDAT names the chunk's size (RFC 3030), however its octets
    /// arrive: in one piece, or in several reads.
    func testOctetCountIsTheChunkSize() {
        let m = Array(message(subject: "count").utf8)
        transcript(envelope + bdat(Array(m[..<50])) + bdat(Array(m[50...]), last: true),
                   envelopeReplies + [Reply.octets(50), Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(text(m))]) })
        // The chunk in three feeds, the same way in both runs.
        transcript([.send(envelope + bytes("BDAT 50\r\n") + m[..<20], envelopeReplies),
                    .send(Array(m[20..<45]), []),
                    .send(Array(m[45..<50]), [Reply.octets(50)]),
                    .send(bdat(Array(m[50...]), last: true), [Reply.delivered])],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(text(m))]) })
    }

    func testBDATZeroLAST() {
        let m = Array(message(subject: "zero").utf8)
        transcript(envelope + bdat(m) + bytes("BDAT 0 LAST\r\n") + lines("NOOP"),
                   envelopeReplies + [Reply.octets(m.count), Reply.delivered, Reply.ok],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(text(m))]) })
        // As the last thing in the input (no octets follow at all).
        transcript(envelope + bdat(m) + bytes("BDAT 0 LAST\r\n"),
                   envelopeReplies + [Reply.octets(m.count), Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 1) })
        // Empty chunks along the way are fine too.
        transcript(envelope + bytes("BDAT 0\r\n") + bdat(m) + bytes("BDAT 0\r\nBDAT 0 LAST\r\n"),
                   envelopeReplies + [Reply.octets(0), Reply.octets(m.count), Reply.octets(0), Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(text(m))]) })
        // Nothing at all: an empty message.
        transcript(envelope + bytes("BDAT 0 LAST\r\nMAIL FROM:<a@example.org>\r\n"),
                   envelopeReplies + [Reply.emptyMessage, Reply.mailOk],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 0) })
    }

    func testNoTrailingNewline() {
        transcript(envelope + bdat(bytes("Subject: x\r\n\r\nno newline at the end"), last: true),
                   envelopeReplies + [Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), ["Subject: x\n\nno newline at the end\n"])
                       let m = try env.messages("bob")[0]
                       XCTAssertEqual(m.size, FS.size(m.path))
                   })
        // Ending in a lone CR: kept, and a newline is added.
        transcript(envelope + bdat(bytes("Subject: x\r\n\r\nends in CR\r"), last: true),
                   envelopeReplies + [Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), ["Subject: x\n\nends in CR\r\n"]) })
    }

    func testNoDotUnstuffingAndNoTerminator() {
        let chunk = bytes("Subject: dots\r\n\r\nbefore\r\n.\r\n..x\r\n..\r\n.\r\nafter\r\n")
        transcript(envelope + bdat(chunk, last: true) + lines("NOOP"),
                   envelopeReplies + [Reply.delivered, Reply.ok],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), ["Subject: dots\n\nbefore\n.\n..x\n..\n.\nafter\n"])
                   })
    }

    func testChunkThatLooksLikeCommands() {
        let chunk = bytes("QUIT\r\nRSET\r\nMAIL FROM:<x@y>\r\n")
        transcript(envelope + bdat(chunk, last: true) + lines("NOOP"),
                   envelopeReplies + [Reply.delivered, Reply.ok],
                   setup: { try $0.makeUser("bob") },
                   check: { env, session in
                       XCTAssertFalse(session.isClosed)
                       // No header field: a blank line is put first, so that it all stays body text.
                       XCTAssertEqual(try env.bodies("bob"), ["\nQUIT\nRSET\nMAIL FROM:<x@y>\n"])
                   })
    }

    func testBDATWithoutMAILConsumesTheChunk() {
        let chunk = bytes("NOOP\r\nQUIT\r\n")
        transcript(lines("LHLO client.test") + bdat(chunk) + lines("NOOP") + bdat(chunk, last: true) + lines("NOOP")
                   + bytes("BDAT 0 LAST\r\nNOOP\r\n"),
                   Reply.lhlo() + [Reply.needMail, Reply.ok, Reply.needMail, Reply.ok, Reply.needMail, Reply.ok],
                   check: { _, session in XCTAssertFalse(session.isClosed) })
        // Before LHLO too.
        transcript(bdat(chunk) + lines("NOOP"), [Reply.needMail, Reply.ok])
    }

    func testBDATWithoutValidRecipient() {
        let m = Array(message(subject: "late rcpt").utf8)
        // Not LAST: refused, the transaction stays; a recipient can still be added.
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<nobody@example.com>")
                   + bdat(bytes("QUIT\r\n")) + lines("RCPT TO:<bob@example.com>") + bdat(m, last: true),
                   Reply.lhlo() + [Reply.mailOk, Reply.userUnknown, Reply.noRecipients, Reply.rcptOk, Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(text(m))]) })
        // LAST: refused and the transaction is over.
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<nobody@example.com>")
                   + bdat(m, last: true) + lines("RCPT TO:<bob@example.com>", "MAIL FROM:<a@example.org>"),
                   Reply.lhlo() + [Reply.mailOk, Reply.userUnknown, Reply.noRecipients, Reply.needMail, Reply.mailOk],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 0) })
    }

    func testDATAAfterBDATIsRefused() {
        transcript(envelope + bdat(bytes("Subject: x\r\n\r\nab")) + lines("DATA") + bdat(bytes("cd\r\n"), last: true),
                   envelopeReplies + [Reply.octets(16), Reply.dataAfterBDAT, Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), ["Subject: x\n\nabcd\n"]) })
    }

    func testRSETDuringChunks() {
        let m = Array(message(subject: "after reset").utf8)
        transcript([.send(envelope + bdat(bytes("Subject: dropped\r\n")), envelopeReplies + [Reply.octets(18)]),
                    .check { env, _ in XCTAssertEqual(env.spoolFiles.count, 1) },
                    .send(lines("RSET"), [Reply.ok]),
                    .check { env, _ in XCTAssertEqual(env.spoolFiles, []) },
                    .send(bdat(m, last: true), [Reply.needMail]),
                    .send(lines("MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>") + bdat(m, last: true),
                          [Reply.mailOk, Reply.rcptOk, Reply.delivered])],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(text(m))]) })
    }

    func testConnectionLostInAChunk() {
        transcript([.send(envelope + bytes("BDAT 1000 LAST\r\nSubject: cut\r\n\r\nhalf"), envelopeReplies),
                    .check { env, _ in XCTAssertEqual(env.spoolFiles.count, 1) },
                    .lose,
                    .send(bytes(String(repeating: "x", count: 990)), [])],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in
                       XCTAssertEqual(try env.messages("bob").count, 0)
                       XCTAssertEqual(env.spoolFiles, [])
                   })
    }

    func testChunkedMessageOverMaxMessageSize() {
        let limit: Int64 = 100
        let first = bytes("Subject: big\r\n\r\n" + String(repeating: "a", count: 80) + "\r\n")
        let second = bytes(String(repeating: "b", count: 50) + "\r\n")
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "RCPT TO:<carol@example.com>")
                   + bdat(first) + bdat(second) + bdat(bytes("end\r\n"), last: true)
                   + lines("MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>") + bdat(bytes("Subject: s\r\n\r\nok\r\n"), last: true),
                   Reply.lhlo(size: limit) + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.octets(first.count), Reply.octets(second.count),
                                              Reply.tooBig(limit), Reply.tooBig(limit), Reply.mailOk, Reply.rcptOk, Reply.delivered],
                   limits: .init(maxMessageSize: limit),
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), ["Subject: s\n\nok\n"])
                       XCTAssertEqual(try env.messages("carol").count, 0)
                   })
    }

    func testNULInAChunk() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "RCPT TO:<carol@example.com>")
                   + bdat(bytes("Subject: nul\r\n\r\na") + [0] + bytes("b\r\n"), last: true) + lines("NOOP"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.rcptOk, Reply.nulInMessage, Reply.nulInMessage, Reply.ok],
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.messages("bob").count, 0)
                       XCTAssertEqual(try env.messages("carol").count, 0)
                   })
    }

    func testChunkedMultiRecipient() {
        let m = Array(message(subject: "chunked, three").utf8)
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>",
                         "RCPT TO:<nobody@example.com>", "RCPT TO:<carol@example.com>", "RCPT TO:<carol@example.com>")
                   + bdat(Array(m[..<10])) + bdat(Array(m[10...]), last: true),
                   // carol has room for one more: both RCPTs pass, the second delivery finds her full.
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.userUnknown, Reply.rcptOk, Reply.rcptOk,
                                   Reply.octets(10), Reply.delivered, Reply.delivered, Reply.mailboxFull],
                   setup: { env in
                       try env.makeUser("bob")
                       try env.makeUser("carol")
                       try env.fill("carol", count: 1, size: 10, limits: QuotaLimits(bytes: nil, messages: 2))
                   },
                   check: { env, _ in
                       XCTAssertEqual(try env.bodies("bob"), [stored(text(m))])
                       XCTAssertEqual(try env.messages("carol").count, 2)
                   })
    }
}
