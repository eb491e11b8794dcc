// Commands outside the message: greeting, LHLO, sequence errors, the small commands, syntax
// errors, MAIL parameters and the command line limits.

import XCTest
import NestboxSupport
import NestboxStore
import NestboxLMTP

final class CommandTranscriptTests: LMTPTestCase {
    func testGreeting() throws {
        let env = try MailEnv()
        defer { env.remove() }
        let session = makeSession(env, limits: .init(), number: 1)
        XCTAssertEqual(text(session.greeting()), Reply.greeting + "\r\n")
        XCTAssertFalse(session.isClosed)
        XCTAssertFalse(session.inTransaction)
    }

    func testLHLOCapabilitiesExact() {
        transcript(lines("LHLO client.test"), Reply.lhlo())
        transcript(lines("lhlo client.test"), Reply.lhlo())
        // With a size limit, SIZE carries it.
        transcript(lines("LHLO client.test"), Reply.lhlo(size: 10_485_760), limits: .init(maxMessageSize: 10_485_760))
    }

    func testLHLOWithoutHostnameIsASyntaxError() {
        transcript(lines("LHLO", "LHLO   ", "MAIL FROM:<a@example.org>"),
                   ["501 5.5.4 Syntax: LHLO hostname", "501 5.5.4 Syntax: LHLO hostname", Reply.sendLHLO])
    }

    func testHELOAndEHLOAreRefused() {
        transcript(lines("HELO client.test", "EHLO client.test", "ehlo client.test", "MAIL FROM:<a@example.org>"),
                   ["500 5.5.1 This is LMTP: use LHLO", "500 5.5.1 This is LMTP: use LHLO",
                    "500 5.5.1 This is LMTP: use LHLO", Reply.sendLHLO])
    }

    func testCommandsBeforeLHLO() {
        transcript(lines("MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "DATA", "BDAT 3 LAST")
                   + bytes("abc") + lines("NOOP", "RSET", "VRFY bob", "LHLO client.test", "MAIL FROM:<a@example.org>"),
                   [Reply.sendLHLO, Reply.needMail, Reply.needMail, Reply.needMail, Reply.ok, Reply.ok,
                    "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"]
                   + Reply.lhlo() + [Reply.mailOk])
    }

    func testSequenceErrors() {
        transcript(lines("LHLO client.test",
                         "RCPT TO:<bob@example.com>",            // RCPT before MAIL
                         "DATA",                                 // DATA before MAIL
                         "MAIL FROM:<a@example.org>",
                         "DATA",                                 // DATA without RCPT
                         "MAIL FROM:<b@example.org>",            // nested
                         "RCPT TO:<nobody@example.com>",
                         "DATA",                                 // still no valid RCPT
                         "QUIT"),
                   Reply.lhlo() + [Reply.needMail, Reply.needMail, Reply.mailOk, Reply.noRecipients, Reply.nested,
                                   Reply.userUnknown, Reply.noRecipients, Reply.bye],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 0) })
    }

    func testRSETEndsTheTransaction() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "RSET",
                         "DATA", "RCPT TO:<bob@example.com>", "MAIL FROM:<b@example.org>", "RSET", "RSET"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.ok, Reply.needMail, Reply.needMail, Reply.mailOk,
                                   Reply.ok, Reply.ok],
                   setup: { try $0.makeUser("bob") },
                   check: { env, session in
                       XCTAssertFalse(session.inTransaction)
                       XCTAssertEqual(try env.messages("bob").count, 0)
                   })
    }

    func testLHLOAgainResetsTheTransaction() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "LHLO again.test", "MAIL FROM:<b@example.org>"),
                   Reply.lhlo() + [Reply.mailOk] + Reply.lhlo() + [Reply.mailOk])
    }

    func testNOOPVRFYHELPSTARTTLSAndUnknown() {
        transcript(lines("LHLO client.test", "NOOP", "noop with arguments", "VRFY bob", "VRFY", "HELP", "HELP MAIL",
                         "STARTTLS", "FOO bar", "XCLIENT NAME=x", "SEND FROM:<a@b>", "TURN", "",
                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "\u{e9}t\u{e9}"),
                   Reply.lhlo() + [Reply.ok, Reply.ok,
                                   "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                                   "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                                   "214 2.0.0 See RFC 2033", "214 2.0.0 See RFC 2033",
                                   "502 5.5.1 STARTTLS not offered",
                                   Reply.unrecognized("FOO"), Reply.unrecognized("XCLIENT"), Reply.unrecognized("SEND"),
                                   Reply.unrecognized("TURN"), Reply.unrecognized(""),
                                   Reply.unrecognized("ABCDEFGHIJKLMNOPQRST"),
                                   Reply.unrecognized("\\xc3\\x89T\\xc3\\x89")])
    }

    func testSmallCommandsKeepTheTransaction() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "NOOP", "VRFY x", "HELP", "FOO",
                         "RCPT TO:<bob@example.com>", "NOOP", "DATA") + bytes(message(subject: "kept") + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.ok,
                                   "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                                   "214 2.0.0 See RFC 2033", Reply.unrecognized("FOO"), Reply.rcptOk, Reply.ok,
                                   Reply.startData, Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.bodies("bob"), [stored(message(subject: "kept"))]) })
    }

    func testQUITCloses() {
        transcript([.send(lines("LHLO client.test", "QUIT"), Reply.lhlo() + [Reply.bye]),
                    .check { _, session in XCTAssertTrue(session.isClosed) },
                    .send(lines("NOOP", "LHLO x"), [])])
        // Pipelined input after QUIT is ignored, in the same feed.
        transcript(lines("LHLO client.test", "quit", "NOOP", "MAIL FROM:<a@example.org>"), Reply.lhlo() + [Reply.bye],
                   check: { _, session in XCTAssertTrue(session.isClosed) })
    }

    func testQUITInATransactionStoresNothing() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "QUIT"),
                   Reply.lhlo() + [Reply.mailOk, Reply.rcptOk, Reply.bye],
                   setup: { try $0.makeUser("bob") },
                   check: { env, session in
                       XCTAssertTrue(session.isClosed)
                       XCTAssertFalse(session.inTransaction)
                       XCTAssertEqual(try env.messages("bob").count, 0)
                   })
    }

    func testSyntaxErrors() {
        transcript(lines("LHLO client.test",
                         "MAIL",
                         "MAIL FROM",
                         "MAIL FROM:",
                         "MAIL FROM:a@example.org",
                         "MAIL TO:<a@example.org>",
                         "MAIL FROM:<a@example.org",
                         "MAIL FROM:<\"a>@example.org>",
                         "RCPT TO:<bob@example.com>",  // no MAIL was accepted
                         "MAIL FROM:<a@example.org>",
                         "RCPT",
                         "RCPT TO:",
                         "RCPT TO:<>",
                         "RCPT TO:bob@example.com",
                         "RCPT FROM:<bob@example.com>",
                         "DATA now",
                         "BDAT",
                         "BDAT x",
                         "BDAT -1",
                         "BDAT +5",
                         "BDAT 5 MORE",
                         "BDAT 5 LAST x",
                         "BDAT 99999999999999999999999",
                         "RCPT TO:<bob@example.com>"),
                   Reply.lhlo() + Array(repeating: "501 5.5.4 Syntax: MAIL FROM:<address>", count: 7)
                   + [Reply.needMail, Reply.mailOk]
                   + Array(repeating: "501 5.5.4 Syntax: RCPT TO:<address>", count: 5)
                   + ["501 5.5.4 Syntax: DATA"]
                   + Array(repeating: "501 5.5.4 Syntax: BDAT size [LAST]", count: 7)
                   + [Reply.rcptOk],
                   setup: { try $0.makeUser("bob") })
    }

    func testMAILFromTolerances() {
        // A space after the colon (as Postfix tolerates), lower case, a source route, the null sender.
        transcript(lines("LHLO client.test", "MAIL FROM: <a@example.org>", "RSET", "mail from:<a@example.org>", "RSET",
                         "MAIL FROM:<@relay.example,@other.example:a@example.org>", "RSET", "MAIL FROM:<>"),
                   Reply.lhlo() + [Reply.mailOk, Reply.ok, Reply.mailOk, Reply.ok, Reply.mailOk, Reply.ok, Reply.mailOk])
    }

    func testMAILSenderWithControlCharacter() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a\u{1}b@example.org>", "MAIL FROM:<a\tb@example.org>",
                         "MAIL FROM:<a@example.org>"),
                   Reply.lhlo() + ["501 5.1.7 Bad sender address syntax", "501 5.1.7 Bad sender address syntax", Reply.mailOk])
    }

    func testMAILParameters() {
        transcript(lines("LHLO client.test",
                         "MAIL FROM:<a@example.org> SIZE=1000", "RSET",
                         "MAIL FROM:<a@example.org> BODY=7BIT", "RSET",
                         "MAIL FROM:<a@example.org> BODY=8BITMIME", "RSET",
                         "MAIL FROM:<a@example.org> body=8bitmime size=12", "RSET",
                         "MAIL FROM:<a@example.org> AUTH=<>", "RSET",
                         "MAIL FROM:<j\u{f6}rg@example.org> SMTPUTF8", "RSET",
                         "MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME AUTH=<> SMTPUTF8", "RSET",
                         "MAIL FROM:<a@example.org> BODY=BINARYMIME",
                         "MAIL FROM:<a@example.org> BODY",
                         "MAIL FROM:<a@example.org> SIZE",
                         "MAIL FROM:<a@example.org> SIZE=abc",
                         "MAIL FROM:<a@example.org> SIZE=-1",
                         "MAIL FROM:<a@example.org> RET=HDRS",
                         "MAIL FROM:<a@example.org> ENVID=x",
                         "MAIL FROM:<a@example.org> XYZZY",
                         "MAIL FROM:<a@example.org> SIZE=10 FOO=1",
                         "MAIL FROM:<a@example.org>"),  // none of the refused ones opened a transaction
                   Reply.lhlo() + Array(repeating: [Reply.mailOk, Reply.ok], count: 7).flatMap { $0 }
                   + ["501 5.5.4 BODY must be 7BIT or 8BITMIME", "501 5.5.4 BODY must be 7BIT or 8BITMIME",
                      "501 5.5.4 Bad SIZE parameter", "501 5.5.4 Bad SIZE parameter", "501 5.5.4 Bad SIZE parameter",
                      Reply.unsupported("RET"), Reply.unsupported("ENVID"), Reply.unsupported("XYZZY"),
                      Reply.unsupported("FOO"), Reply.mailOk])
    }

    func testMAILSizeOverTheLimit() {
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org> SIZE=1001", "MAIL FROM:<a@example.org> SIZE=1000",
                         "RSET", "MAIL FROM:<a@example.org> SIZE=0"),
                   Reply.lhlo(size: 1000) + [Reply.sizeOverLimit(1000), Reply.mailOk, Reply.ok, Reply.mailOk],
                   limits: .init(maxMessageSize: 1000))
        // No limit: any SIZE is fine.
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org> SIZE=1000000000000"),
                   Reply.lhlo() + [Reply.mailOk])
    }

    // MARK: Command line limits

    func testTenThousandCharacterLineIsRefusedAndTheSessionContinues() {
        let long = "NOOP " + String(repeating: "x", count: 9995)
        XCTAssertEqual(long.utf8.count, 10_000)
        transcript(lines("LHLO client.test", long, "NOOP"), Reply.lhlo() + [Reply.lineTooLong, Reply.ok])
        // In a transaction: the long line is refused, the transaction goes on.
        let longRcpt = "RCPT TO:<" + String(repeating: "b", count: 9990) + ">"
        transcript(lines("LHLO client.test", "MAIL FROM:<a@example.org>", longRcpt, "RCPT TO:<bob@example.com>", "DATA")
                   + bytes(message() + ".\r\n"),
                   Reply.lhlo() + [Reply.mailOk, Reply.lineTooLong, Reply.rcptOk, Reply.startData, Reply.delivered],
                   setup: { try $0.makeUser("bob") },
                   check: { env, _ in XCTAssertEqual(try env.messages("bob").count, 1) })
        // A long line ending in a bare LF, and one with a NUL inside: still just too long.
        transcript(bytes("LHLO client.test\r\n" + String(repeating: "y", count: 10_000) + "\n")
                   + bytes(String(repeating: "z", count: 5000)) + [0] + bytes("z\r\nNOOP\r\n"),
                   Reply.lhlo() + [Reply.lineTooLong, Reply.lineTooLong, Reply.ok])
    }

    /// Command.maxLineLength (2048) is the longest line accepted, without its CRLF.
    func testLineLengthBoundary() {
        let exactly = "NOOP " + String(repeating: "x", count: Command.maxLineLength - 5)
        XCTAssertEqual(exactly.utf8.count, Command.maxLineLength)
        let over = exactly + "x"
        // Bare LF: 2048 accepted, 2049 refused.
        transcript(bytes("LHLO client.test\r\n" + exactly + "\n" + over + "\nNOOP\n"),
                   Reply.lhlo() + [Reply.ok, Reply.lineTooLong, Reply.ok])
        // CRLF: the same limit must hold however the line arrives (whole, or byte by byte).
        transcript(lines("LHLO client.test", exactly, over, "NOOP"),
                   Reply.lhlo() + [Reply.ok, Reply.lineTooLong, Reply.ok])
    }

    func testNULInACommandLine() {
        transcript(bytes("LHLO client.test\r\nNO") + [0] + bytes("OP\r\nMAIL FROM:<a@example.org>") + [0]
                   + bytes("\r\n") + [0] + bytes("\r\nMAIL FROM:<a@example.org>\r\n"),
                   Reply.lhlo() + [Reply.nulInCommand, Reply.nulInCommand, Reply.nulInCommand, Reply.mailOk])
    }

    func testBareLFCommandLinesAndStrayCR() {
        // Only one CR before the LF is part of the line end; another one belongs to the verb.
        transcript(bytes("LHLO client.test\nNOOP\nNOOP\r\r\nMAIL FROM:<a@example.org>\n"),
                   Reply.lhlo() + [Reply.ok, Reply.unrecognized("NOOP\\x0d"), Reply.mailOk])
    }

    func testInputAfterConnectionLostIsIgnored() {
        transcript([.send(lines("LHLO client.test"), Reply.lhlo()),
                    .lose,
                    .check { _, s in XCTAssertTrue(s.isClosed) },
                    .send(lines("NOOP"), [])])
    }

    func testCloseForIdleTimeout() throws {
        let env = try MailEnv()
        defer { env.remove() }
        try env.makeUser("bob")
        let session = makeSession(env, limits: .init(), number: 1)
        var out: [UInt8] = []
        session.feed(lines("LHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<bob@example.com>", "DATA",
                           "Subject: half")[...], into: &out)
        XCTAssertEqual(env.spoolFiles.count, 1)
        XCTAssertEqual(text(session.close(reason: "421 4.4.2 mx.test Idle timeout, closing connection")),
                       "421 4.4.2 mx.test Idle timeout, closing connection\r\n")
        XCTAssertTrue(session.isClosed)
        XCTAssertEqual(env.spoolFiles, [])
        XCTAssertEqual(try env.messages("bob").count, 0)
        out = []
        session.feed(lines(".")[...], into: &out)
        XCTAssertEqual(out, [])
        XCTAssertEqual(try env.messages("bob").count, 0)
    }
}
