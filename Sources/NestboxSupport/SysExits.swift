// The one table of outcomes.
//
// Every failure anywhere in Nestbox ends up as one `Outcome`: its sysexits(3) code (what
// nestbox-deliver exits with), its RFC 3463 enhanced status (what Postfix's pipe(8) takes from
// the first line of our output and what LMTP replies carry), its LMTP reply code, and a short
// text for the client. Postfix's pipe(8) lets a leading `4.X.X` / `5.X.X` status on the
// program's output decide between defer and bounce, so the status column, not the exit code,
// is what really decides a message's fate; both always agree on "temporary".
//
// Rules: anything transient (disk full, I/O error, lock timeout, over quota by default) is
// temporary: exit 75 / 4xx. Local configuration and usage errors are reported with 78 / 64 as
// administrators expect, but with a 4.3.5 status so that Postfix keeps the mail queued while the
// configuration is mended instead of bouncing it. Permanent statuses only for permanent facts.

public struct Outcome: Sendable, Equatable, CustomStringConvertible {
    /// sysexits(3) value.
    public let exitCode: Int32
    /// Symbolic sysexits name, for manuals and logs.
    public let name: String
    /// RFC 3463 enhanced status code, e.g. "4.2.2".
    public let status: String
    /// LMTP / SMTP reply code for this outcome.
    public let replyCode: Int
    /// Short text for the client (Postfix bounce text, LMTP reply).
    public let text: String

    public var isTemporary: Bool { status.hasPrefix("4") }
    public var isSuccess: Bool { exitCode == 0 }
    /// The one line nestbox-deliver prints for Postfix: "4.2.2 Mailbox full".
    public var dsnLine: String { "\(status) \(text)" }
    public var description: String { "\(exitCode) \(name) \(status) \(text)" }

    public init(exitCode: Int32, name: String, status: String, replyCode: Int, text: String) {
        self.exitCode = exitCode
        self.name = name
        self.status = status
        self.replyCode = replyCode
        self.text = text
    }

    /// The same row with another client text (the code columns stay).
    public func with(text: String) -> Outcome {
        Outcome(exitCode: exitCode, name: name, status: status, replyCode: replyCode, text: text)
    }

    // MARK: The table

    public static let delivered = Outcome(exitCode: 0, name: "EX_OK", status: "2.0.0", replyCode: 250, text: "Ok")
    public static let usage = Outcome(exitCode: 64, name: "EX_USAGE", status: "4.3.5", replyCode: 451, text: "Command line usage error")
    public static let dataError = Outcome(exitCode: 65, name: "EX_DATAERR", status: "5.6.0", replyCode: 554, text: "Malformed message")
    public static let badAddress = Outcome(exitCode: 67, name: "EX_NOUSER", status: "5.1.3", replyCode: 501, text: "Bad recipient address syntax")
    public static let userUnknown = Outcome(exitCode: 67, name: "EX_NOUSER", status: "5.1.1", replyCode: 550, text: "User unknown")
    public static let tooBig = Outcome(exitCode: 73, name: "EX_CANTCREAT", status: "5.3.4", replyCode: 552, text: "Message too big")
    public static let overQuotaPermanent = Outcome(exitCode: 73, name: "EX_CANTCREAT", status: "5.2.2", replyCode: 552, text: "Mailbox full")
    public static let overQuota = Outcome(exitCode: 75, name: "EX_TEMPFAIL", status: "4.2.2", replyCode: 452, text: "Mailbox full")
    public static let diskFull = Outcome(exitCode: 75, name: "EX_TEMPFAIL", status: "4.3.1", replyCode: 452, text: "Insufficient system storage")
    public static let temporary = Outcome(exitCode: 75, name: "EX_TEMPFAIL", status: "4.3.0", replyCode: 451, text: "Temporary local error")
    public static let noPermission = Outcome(exitCode: 77, name: "EX_NOPERM", status: "5.7.1", replyCode: 550, text: "Permission denied")
    public static let config = Outcome(exitCode: 78, name: "EX_CONFIG", status: "4.3.5", replyCode: 451, text: "Local configuration error")

    /// The maintenance tools' "problems remain" (nestbox-reconstruct: something found and not,
    /// or with -n not yet, repaired). Not a delivery outcome: not in `table`.
    public static let problemsRemain = Outcome(exitCode: 1, name: "PROBLEMS", status: "4.0.0", replyCode: 451, text: "Problems remain")

    /// nestbox-passwd's own answers (not delivery outcomes: not in `table`): a password that
    /// does not match (`--check`, 1, as testsaslauthd's NO), an input file or database that is
    /// not there (66), a user that already exists when asked to create it (73).
    public static let authenticationFailed = Outcome(exitCode: 1, name: "AUTHFAIL", status: "5.7.8", replyCode: 535, text: "Authentication failed")
    public static let noInput = Outcome(exitCode: 66, name: "EX_NOINPUT", status: "4.3.0", replyCode: 451, text: "Cannot open input")
    public static let userExists = Outcome(exitCode: 73, name: "EX_CANTCREAT", status: "5.1.0", replyCode: 550, text: "User exists")

    /// Every row, in exit-code order (manual pages and tests walk this list).
    public static let table: [Outcome] = [
        .delivered, .usage, .dataError, .badAddress, .userUnknown, .tooBig, .overQuotaPermanent,
        .overQuota, .diskFull, .temporary, .noPermission, .config,
    ]

    /// Worse outcomes win when several recipients get different ones: deliver exits with the
    /// worst. A temporary failure outranks a permanent one so that Postfix retries the
    /// recipients that can still succeed (with `_destination_recipient_limit = 1` there is only
    /// ever one).
    public var severity: Int {
        if isSuccess { return 0 }
        return isTemporary ? 2 : 1
    }
}
