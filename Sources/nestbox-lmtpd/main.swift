// nestbox-lmtpd: the LMTP listener for Postfix's lmtp: transport (RFC 2033).
// Arguments and configuration in, sockets bound, privileges dropped, the server run until
// SIGTERM. The protocol lives in NestboxLMTP, the sockets in NestboxLMTPServer, the mail store
// in NestboxStore. See man/nestbox-lmtpd.8.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxLMTP
import NestboxLMTPServer
import NestboxStore
import NestboxSupport

let program = "nestbox-lmtpd"
let version = "0.1.0"

let usageText = """
usage: nestbox-lmtpd [-C file] [-o key=value]... [-L] [-i]
       nestbox-lmtpd --help | --version
Serves LMTP (RFC 2033) for Postfix's lmtp: transport and delivers into the Maildir store.
Listens on the systemd sockets it is given, else on lmtpsocket and lmtp_listen; runs in the
foreground until SIGTERM, then finishes the transactions in flight and exits.
  -C file      configuration file (default: $NESTBOX_CONF, else /etc/nestbox/nestbox.conf)
  -o key=value override one configuration key (repeatable)
  -L           log to standard error instead of syslog
  -i           serve one session on standard input/output (inetd), then exit
Exit status: 0 after a clean stop, 64 usage, 75 temporary failure (e.g. cannot bind),
78 configuration error (see nestbox-lmtpd(8)).

"""

func fail(_ f: NestboxFailure) -> Never {
    Log.fatal(f.detail)
    if isatty(2) != 0 { fputs("\(program): \(f.detail)\n", stderr) }
    exit(f.outcome.exitCode)
}

var configPath: String? = nil
var overrides: [String] = []
var logToStderr = false
var inetd = false
var args = Array(CommandLine.arguments.dropFirst())
var i = 0
while i < args.count {
    let a = args[i]
    switch a {
    case "--help", "-h": fputs(usageText, stdout); exit(0)
    case "--version": print("\(program) \(version)"); exit(0)
    case "-L": logToStderr = true
    case "-i": inetd = true
    case "-C", "-o":
        guard i + 1 < args.count else {
            fputs("\(program): option \(a) needs a value (see --help)\n", stderr)
            exit(64)
        }
        i += 1
        if a == "-C" { configPath = args[i] } else { overrides.append(args[i]) }
    default:
        fputs("\(program): unknown argument \(Names.printable(a)) (see --help)\n", stderr)
        exit(64)
    }
    i += 1
}

let config: Config
do {
    config = try Config.load(explicitPath: configPath, overrides: overrides)
} catch {
    fputs("\(program): \(error)\n", stderr)
    exit(78)
}
DotLock.defaultTimeout = config.lockTimeout
Log.setup(program: program, destination: logToStderr ? .stderr : .syslog, facility: config.syslogFacility)

if inetd {
    do {
        try Privileges.dropIfRoot(to: config.mailOwner)
        try MailStore(config: config).prepare()
    } catch let f as NestboxFailure {
        fail(f)
    } catch {
        fail(NestboxFailure(.temporary, "\(error)"))
    }
    let session = LMTPSession(delivery: Delivery(store: MailStore(config: config)), serverName: config.serverName,
                              client: "stdin", sessionID: "\(String(getpid(), radix: 36).uppercased())I",
                              limits: LMTPSession.Limits(config: config))
    StdioSession.run(session, idleTimeout: config.lmtpIdleTimeout)
    exit(0)
}

LMTPServer.blockTerminationSignals()
let server = LMTPServer(config: config)
do {
    let names = try server.bind()
    try Privileges.dropIfRoot(to: config.mailOwner)
    try MailStore(config: config).prepare()
    try server.startAccepting()
    Log.info("listening on \(names.joined(separator: ", ")) as uid \(getuid()); mail root \(config.partition)")
} catch let f as NestboxFailure {
    fail(f)
} catch {
    fail(NestboxFailure(.temporary, "bind: \(error)"))
}
server.run()
exit(0)
