// nestbox-deliver: the delivery agent Postfix's pipe(8) runs (Cyrus `deliver` command line).
// Arguments and configuration in, privileges dropped, the library's pipeline run, the worst
// outcome out as an exit status and one "<RFC 3463 status> <text>" line on stdout, which pipe(8)
// puts in the bounce or defer notice. Nothing else goes to stdout or stderr unless -L is given
// or stderr is a terminal: under pipe(8) every byte printed ends up in a bounce message.
// See man/nestbox-deliver.8.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxLMTP
import NestboxStore
import NestboxSupport

let spec = OptionSpec(
    program: "nestbox-deliver", version: "0.1.0", operands: "user...",
    otherForms: ["[options] -m folder        (deliver into a shared folder)"],
    summary: "Reads one message on standard input and delivers it to each user's Maildir.",
    options: [
        Tool.configFile,
        Tool.override,
        .value("r", "f", name: "sender", "addr", help: "envelope sender; becomes Return-Path: (\"\", <> and MAILER-DAEMON mean <>)"),
        .value("m", name: "folder", "folder", help: "deliver into this folder if it exists and the identity may post to it"),
        .value("a", name: "authid", "authid", help: "identity checked for the p (post) right (default: anonymous)"),
        .flag("q", name: "ignore-quota", help: "ignore quota"),
        Tool.logToStandardError,
        .flag("d", "e", name: "ignored", help: "ignored (compatibility with Cyrus deliver)"),
        .flag("l", name: "lmtp", help: "speak LMTP on standard input/output (as nestbox-lmtpd -i)"),
        .value(long: "queue-id", "id", help: "the MTA's queue id (Postfix: ${queue_id}), put in Received: and the log"),
    ],
    epilogue: """
    Exit status: 0 delivered, 64 usage, 65 bad message, 67 unknown user, 73 permanent refusal,
    75 temporary failure, 77 no permission, 78 configuration error (see nestbox-deliver(8)).
    """)

let tool = Tool(spec, reporting: .dsnLine).start()
let config = tool.config

/// What the command line asks of the delivery.
struct Options {
    var sender: String?
    var folder: String?
    var authID: String?
    var ignoreQuota: Bool
    var lmtp: Bool
    var queueID: String?
    var users: [String]

    init(_ parsed: ParsedOptions) {
        sender = parsed.value("sender")
        // pipe(8) passes -m "" for an address without an extension: that is INBOX.
        folder = parsed.value("folder").flatMap { $0.isEmpty ? nil : $0 }
        authID = parsed.value("authid")
        ignoreQuota = parsed.has("ignore-quota")
        lmtp = parsed.has("lmtp")
        // pipe(8) passes "" when it has no queue id to give.
        queueID = parsed.value("queue-id").flatMap { $0.isEmpty ? nil : $0 }
        users = parsed.operands
    }
}
let options = Options(tool.options)

/// Prints the DSN line on stdout (for pipe(8)), the detail on stderr when someone is looking,
/// and exits with the row's code.
func finish(_ outcome: Outcome, detail: String? = nil, logged: Bool = false) -> Never {
    tool.finish(outcome, detail: detail, logged: logged)
}

/// "" / <> / MAILER-DAEMON (pipe(8)'s default null_sender) are the null sender.
func normalizedSender(_ raw: String?) -> String? {
    guard var s = raw?.trimmingSpaces() else { return nil }
    if s.hasPrefix("<") && s.hasSuffix(">") && s.count >= 2 { s = String(s.dropFirst().dropLast()) }
    if s.uppercased() == "MAILER-DAEMON" { return "" }
    return s
}

// MARK: main

if options.lmtp {
    // LMTP on stdin/stdout: the same session code as nestbox-lmtpd.
    tool.dropPrivileges()
    do {
        try MailStore(config: config).prepare()
    } catch {
        tool.fail((error as? NestboxFailure) ?? NestboxFailure(.temporary, "\(error)"))
    }
    let session = LMTPSession(delivery: Delivery(store: MailStore(config: config)), serverName: config.serverName,
                              client: "stdin", sessionID: "\(String(getpid(), radix: 36).uppercased())L",
                              limits: LMTPSession.Limits(config: config))
    StdioSession.run(session, idleTimeout: config.lmtpIdleTimeout)
    finish(.delivered)
}
if options.users.isEmpty && options.folder == nil { tool.usageError("no user and no -m folder given") }
// A Postfix queue id is letters and digits; anything else would not belong in a header.
if let id = options.queueID, id.count > 64 || !id.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0)) }) {
    tool.usageError("--queue-id \(printable(id)): expected letters and digits")
}

tool.dropPrivileges()

let sender = normalizedSender(options.sender)
let store = MailStore(config: config)
let identity = options.authID.flatMap { $0.isEmpty ? nil : $0 }
do {
    try store.prepare()
} catch let f as NestboxFailure {
    Log.error("mail root: \(f.detail)")
    finish(f.outcome)
}

// Every recipient is resolved before the message is read; the transaction spools it once and
// stores it for each (DeliveryTransaction.swift).
let transaction = DeliveryTransaction(delivery: Delivery(store: store), id: hexString(randomBytes(5)).uppercased(), sender: sender)
transaction.queueID = options.queueID
var results: [RecipientResult] = []
func refused(_ recipient: String, _ error: Error) -> RecipientResult {
    let f = (error as? NestboxFailure) ?? NestboxFailure(.temporary, "\(error)")
    return RecipientResult(recipient: recipient, outcome: f.outcome, detail: f.detail)
}
if options.users.isEmpty {
    do { try transaction.addSharedFolder(options.folder!, identity: identity, ignoreQuota: options.ignoreQuota) }
    catch { results.append(refused(options.folder!, error)) }
} else {
    for user in options.users {
        do { try transaction.addRecipient(user, folder: options.folder, identity: identity, ignoreQuota: options.ignoreQuota) }
        catch { results.append(refused(user, error)) }
    }
}
if !transaction.recipients.isEmpty {
    transaction.beginMessage(trace: .local, maxSize: config.maxMessageSize)
    results += transaction.finish(transaction.consume(fileDescriptor: 0))
}

// The transaction logged a line per recipient; the worst outcome decides the exit status.
let worst = results.map(\.outcome).max { $0.severity < $1.severity } ?? .delivered
finish(worst, detail: nil, logged: true)
