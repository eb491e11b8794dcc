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

let program = "nestbox-deliver"
let version = "0.1.0"

let usageText = """
usage: nestbox-deliver [-C file] [-o key=value]... [-d] [-e] [-q] [-L] [-r address | -f address]
                       [-m folder] [-a authid] user...
       nestbox-deliver [options] -m folder        (deliver into a shared folder)
       nestbox-deliver --help | --version
Reads one message on standard input and delivers it to each user's Maildir.
  -C file      configuration file (default: $NESTBOX_CONF, else /etc/nestbox/nestbox.conf)
  -o key=value override one configuration key (repeatable)
  -r, -f addr  envelope sender; becomes Return-Path: ("", <> and MAILER-DAEMON mean <>)
  -m folder    deliver into this folder if it exists and the identity may post to it
  -a authid    identity checked for the p (post) right (default: anonymous)
  -q           ignore quota
  -L           log to standard error instead of syslog
  -d, -e       ignored (compatibility with Cyrus deliver)
  -l           speak LMTP on standard input/output (as nestbox-lmtpd -i)
Exit status: 0 delivered, 64 usage, 65 bad message, 67 unknown user, 73 permanent refusal,
75 temporary failure, 77 no permission, 78 configuration error (see nestbox-deliver(8)).

"""

struct Options {
    var configPath: String?
    var overrides: [String] = []
    var sender: String?
    var folder: String?
    var authID: String?
    var ignoreQuota = false
    var logToStderr = false
    var lmtp = false
    var users: [String] = []
}

/// Prints the DSN line on stdout (for pipe(8)), the detail on stderr when someone is looking,
/// and exits with the row's code.
func finish(_ outcome: Outcome, detail: String? = nil, logged: Bool = false) -> Never {
    if !outcome.isSuccess {
        var line = outcome.dsnLine
        if let detail, !logged { line += ": " + detail }
        print(line)
        if let detail, isatty(2) != 0 { fputs("\(program): \(detail)\n", stderr) }
    }
    fflush(stdout)
    exit(outcome.exitCode)
}

func parseArguments(_ args: [String]) throws -> Options {
    var o = Options()
    var i = 0
    func value(_ flag: Character, _ rest: Substring) throws -> String {
        if !rest.isEmpty { return String(rest) }
        i += 1
        guard i < args.count else { throw NestboxFailure(.usage, "option -\(flag) needs a value") }
        return args[i]
    }
    while i < args.count {
        let arg = args[i]
        if arg == "--help" || arg == "-h" {
            fputs(usageText, stdout)
            exit(0)
        }
        if arg == "--version" {
            print("\(program) \(version)")
            exit(0)
        }
        if arg == "--" {
            o.users += args[(i + 1)...]
            break
        }
        guard arg.hasPrefix("-"), arg.count > 1 else {
            o.users.append(arg)
            i += 1
            continue
        }
        var rest = arg.dropFirst()
        while let flag = rest.first {
            rest = rest.dropFirst()
            switch flag {
            case "d", "e": break
            case "q": o.ignoreQuota = true
            case "L": o.logToStderr = true
            case "l": o.lmtp = true
            case "C": o.configPath = try value(flag, rest); rest = ""
            case "o": o.overrides.append(try value(flag, rest)); rest = ""
            case "r", "f": o.sender = try value(flag, rest); rest = ""
            case "m":
                // pipe(8) passes -m "" for an address without an extension: that is INBOX.
                let folder = try value(flag, rest)
                o.folder = folder.isEmpty ? nil : folder
                rest = ""
            case "a": o.authID = try value(flag, rest); rest = ""
            default: throw NestboxFailure(.usage, "unknown option -\(Names.printable(String(flag)))")
            }
        }
        i += 1
    }
    return o
}

/// "" / <> / MAILER-DAEMON (pipe(8)'s default null_sender) are the null sender.
func normalizedSender(_ raw: String?) -> String? {
    guard var s = raw?.trimmingSpaces() else { return nil }
    if s.hasPrefix("<") && s.hasSuffix(">") && s.count >= 2 { s = String(s.dropFirst().dropLast()) }
    if s.uppercased() == "MAILER-DAEMON" { return "" }
    return s
}

// MARK: main

let options: Options
do {
    options = try parseArguments(Array(CommandLine.arguments.dropFirst()))
} catch let f as NestboxFailure {
    finish(f.outcome, detail: f.detail + " (see --help)")
}

let config: Config
do {
    config = try Config.load(explicitPath: options.configPath, overrides: options.overrides)
} catch {
    finish(.config, detail: "\(error)")
}
DotLock.defaultTimeout = config.lockTimeout
Log.setup(program: program, destination: options.logToStderr ? .stderr : .syslog, facility: config.syslogFacility)

if options.lmtp {
    // LMTP on stdin/stdout: the same session code as nestbox-lmtpd.
    do {
        try Privileges.dropIfRoot(to: config.mailOwner)
        try MailStore(config: config).prepare()
    } catch let f as NestboxFailure {
        Log.fatal(f.detail)
        finish(f.outcome, detail: f.detail)
    }
    let session = LMTPSession(delivery: Delivery(store: MailStore(config: config)), serverName: config.serverName,
                              client: "stdin", sessionID: "\(String(getpid(), radix: 36).uppercased())L",
                              limits: LMTPSession.Limits(config: config))
    StdioSession.run(session, idleTimeout: config.lmtpIdleTimeout)
    exit(0)
}
if options.users.isEmpty && options.folder == nil { finish(.usage, detail: "no user and no -m folder given (see --help)") }

do {
    try Privileges.dropIfRoot(to: config.mailOwner)
} catch let f as NestboxFailure {
    Log.fatal(f.detail)
    finish(f.outcome, detail: f.detail)
}

let sender = normalizedSender(options.sender)
let store = MailStore(config: config)
let delivery = Delivery(store: store)
let queueID = hexString(randomBytes(5)).uppercased()
let identity = options.authID.flatMap { $0.isEmpty ? nil : $0 }

// 1. Resolve every recipient before reading the message.
var results: [RecipientResult] = []
var targets: [DeliveryTarget] = []
do {
    try store.prepare()
} catch let f as NestboxFailure {
    Log.error("mail root: \(f.detail)")
    finish(f.outcome)
}
if options.users.isEmpty {
    do {
        targets.append(try delivery.resolveShared(options.folder!, domain: nil, identity: identity))
    } catch let f as NestboxFailure {
        results.append(RecipientResult(recipient: options.folder!, outcome: f.outcome, mailbox: nil, uid: nil, detail: f.detail))
    }
} else {
    for user in options.users {
        do {
            targets.append(try delivery.resolve(user, folderName: options.folder, identity: identity))
        } catch let f as NestboxFailure {
            results.append(RecipientResult(recipient: user, outcome: f.outcome, mailbox: nil, uid: nil, detail: f.detail))
        } catch {
            results.append(RecipientResult(recipient: user, outcome: .temporary, mailbox: nil, uid: nil, detail: "\(error)"))
        }
    }
}

// 2. Spool the message once; 3. store it for each resolved recipient.
var spooled: SpooledMessage? = nil
if !targets.isEmpty {
    var received = "Received: by \(config.serverName) (Nestbox) with local id \(queueID)"
    if options.users.count == 1, let r = try? store.parseRecipient(options.users[0]) { received += "\n\tfor <\(Names.printable(r.address))>" }
    received += "; \(Delivery.rfc5322Date())"
    do {
        // One recipient: spool in its folder's tmp/ and rename into new/; several, or an INBOX
        // still to be created: link from the spool.
        let alone = targets.count == 1 && targets[0].inboxToCreate == nil
        let spoolDirectory = alone ? "\(targets[0].folder.path)/tmp" : store.spoolDirectory
        let writer = try SpoolWriter(spoolDirectory: spoolDirectory, host: config.serverName, returnPath: sender,
                                     received: received, maxSize: config.maxMessageSize)
        spooled = try writer.consume(fileDescriptor: 0)
    } catch {
        let f = (error as? NestboxFailure) ?? NestboxFailure(.temporary, "\(error)")
        for t in targets {
            results.append(RecipientResult(recipient: t.recipient, outcome: f.outcome, mailbox: t.label, uid: nil, detail: f.detail))
        }
        targets = []
    }
}
if let message = spooled {
    for t in targets {
        results.append(delivery.store(message, into: t, ignoreQuota: options.ignoreQuota))
    }
    message.remove()
}

// 4. One log line per recipient; the worst outcome decides the exit status.
var worst = Outcome.delivered
for r in results {
    Log.info(Delivery.logLine(id: queueID, sender: sender, result: r, message: spooled))
    if r.outcome.severity > worst.severity { worst = r.outcome }
}
finish(worst, detail: nil, logged: true)
