import XCTest
import NestboxSupport
@testable import NestboxLMTP

/// The reply table word for word: the transcripts take their expectations from it, so a change
/// of wording shows up here.
final class ReplyTableTests: XCTestCase {
    func testEveryReplyWordForWord() {
        let table: [(String, String)] = [
            (LMTPReply.greeting("mx.test"), "220 mx.test LMTP Nestbox ready"),
            (LMTPReply.ok, "250 2.0.0 Ok"),
            (LMTPReply.mailOk, "250 2.1.0 Ok"),
            (LMTPReply.rcptOk, "250 2.1.5 Ok"),
            (LMTPReply.startData, "354 Start mail input; end with <CRLF>.<CRLF>"),
            (LMTPReply.bye, "221 2.0.0 Bye"),
            (LMTPReply.help, "214 2.0.0 See RFC 2033"),
            (LMTPReply.cannotVerify, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
            (LMTPReply.useLHLO, "500 5.5.1 This is LMTP: use LHLO"),
            (LMTPReply.sendLHLO, "503 5.5.1 Send LHLO first"),
            (LMTPReply.needMail, "503 5.5.1 Need MAIL command"),
            (LMTPReply.nested, "503 5.5.1 Nested MAIL command"),
            (LMTPReply.noRecipients, "503 5.5.1 No valid recipients"),
            (LMTPReply.dataAfterBDAT, "503 5.5.1 DATA after BDAT"),
            (LMTPReply.noSTARTTLS, "502 5.5.1 STARTTLS not offered"),
            (LMTPReply.badSize, "501 5.5.4 Bad SIZE parameter"),
            (LMTPReply.badBody, "501 5.5.4 BODY must be 7BIT or 8BITMIME"),
            (LMTPReply.badSender, "501 5.1.7 Bad sender address syntax"),
            (LMTPReply.tooManyRecipients, "452 4.5.3 Too many recipients"),
            (LMTPReply.lineTooLong, "500 5.5.2 Line too long"),
            (LMTPReply.nulInCommand, "500 5.5.2 NUL character in command line"),
            (LMTPReply.syntax("Syntax: DATA"), "501 5.5.4 Syntax: DATA"),
            (LMTPReply.sizeOverLimit(1000), "552 5.3.4 Message size exceeds fixed limit of 1000 bytes"),
            (LMTPReply.octets(42), "250 2.0.0 42 octets received"),
            (LMTPReply.unsupported("FOO"), "555 5.5.4 Unsupported parameter FOO"),
            (LMTPReply.unrecognized("XYZZY"), "500 5.5.2 Command unrecognized: XYZZY"),
            (LMTPReply.stored("delivered"), "250 2.0.0 Ok: delivered"),
            (LMTPReply.outcome(.userUnknown), "550 5.1.1 User unknown"),
            (LMTPReply.outcome(.overQuota), "452 4.2.2 Mailbox full"),
            (LMTPReply.outcome(.badAddress), "501 5.1.3 Bad recipient address syntax"),
            (LMTPReply.idleTimeout("mx.test"), "421 4.4.2 mx.test Idle timeout, closing connection"),
            (LMTPReply.shuttingDown("mx.test"), "421 4.3.2 mx.test Shutting down"),
            (LMTPReply.tooManyConnections("mx.test"), "421 4.3.2 mx.test Too many connections, try again later"),
            (LMTPReply.internalError("mx.test"), "421 4.3.0 mx.test Internal error, closing"),
        ]
        for (reply, expected) in table { XCTAssertEqual(reply, expected) }
        XCTAssertEqual(LMTPReply.lhlo(host: "mx.test", maxMessageSize: 0),
                       ["250-mx.test", "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-8BITMIME", "250-SIZE",
                        "250-CHUNKING", "250-SMTPUTF8", "250 IGNOREQUOTA"])
        XCTAssertEqual(LMTPReply.lhlo(host: "h", maxMessageSize: 5)[4], "250-SIZE 5")
    }
}
