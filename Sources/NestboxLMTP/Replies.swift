// Every reply text Nestbox's LMTP speaks, in one table: the session, the servers and the tests
// take them from here. Codes and enhanced status codes follow RFC 5321, RFC 2033 and RFC 3463;
// a delivery's own outcome (4.2.2 Mailbox full, 5.1.1 User unknown...) comes from the one
// outcome table in SysExits.swift (`outcome(_:)`).

import NestboxSupport

public enum LMTPReply {
    public static func greeting(_ host: String) -> String { "220 \(host) LMTP Nestbox ready" }
    public static let ok = "250 2.0.0 Ok"
    public static let mailOk = "250 2.1.0 Ok"
    public static let rcptOk = "250 2.1.5 Ok"
    public static let startData = "354 Start mail input; end with <CRLF>.<CRLF>"
    public static let bye = "221 2.0.0 Bye"
    public static let help = "214 2.0.0 See RFC 2033"
    public static let cannotVerify = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
    public static let useLHLO = "500 5.5.1 This is LMTP: use LHLO"
    public static let sendLHLO = "503 5.5.1 Send LHLO first"
    public static let needMail = "503 5.5.1 Need MAIL command"
    public static let nested = "503 5.5.1 Nested MAIL command"
    public static let noRecipients = "503 5.5.1 No valid recipients"
    public static let dataAfterBDAT = "503 5.5.1 DATA after BDAT"
    public static let noSTARTTLS = "502 5.5.1 STARTTLS not offered"
    public static let badSize = "501 5.5.4 Bad SIZE parameter"
    public static let badBody = "501 5.5.4 BODY must be 7BIT or 8BITMIME"
    public static let badSender = "501 5.1.7 Bad sender address syntax"
    public static let tooManyRecipients = "452 4.5.3 Too many recipients"
    public static let lineTooLong = "500 5.5.2 Line too long"
    public static let nulInCommand = "500 5.5.2 NUL character in command line"
    public static func syntax(_ reason: String) -> String { "501 5.5.4 \(reason)" }
    public static func sizeOverLimit(_ limit: Int64) -> String { "552 5.3.4 Message size exceeds fixed limit of \(limit) bytes" }
    public static func octets(_ n: Int) -> String { "250 2.0.0 \(n) octets received" }
    public static func unsupported(_ keyword: String) -> String { "555 5.5.4 Unsupported parameter \(keyword)" }
    public static func unrecognized(_ verb: String) -> String { "500 5.5.2 Command unrecognized: \(verb)" }
    /// A recipient's message stored (or suppressed as a duplicate): `detail` says which.
    public static func stored(_ detail: String) -> String { "250 2.0.0 Ok: \(detail)" }
    /// A refusal or a failure, from the outcome table.
    public static func outcome(_ o: Outcome) -> String { "\(o.replyCode) \(o.status) \(o.text)" }
    public static func lhlo(host: String, maxMessageSize: Int64) -> [String] {
        let size = maxMessageSize > 0 ? "SIZE \(maxMessageSize)" : "SIZE"
        let lines = [host, "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", size, "CHUNKING", "SMTPUTF8", "IGNOREQUOTA"]
        return lines.enumerated().map { (i, line) in (i == lines.count - 1 ? "250 " : "250-") + line }
    }

    // Closing the connection (421): the client tries again later.
    public static func idleTimeout(_ host: String) -> String { "421 4.4.2 \(host) Idle timeout, closing connection" }
    public static func shuttingDown(_ host: String) -> String { "421 4.3.2 \(host) Shutting down" }
    public static func tooManyConnections(_ host: String) -> String { "421 4.3.2 \(host) Too many connections, try again later" }
    public static func internalError(_ host: String) -> String { "421 4.3.0 \(host) Internal error, closing" }
}
