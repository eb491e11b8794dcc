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

let spec = OptionSpec(
    program: "nestbox-lmtpd", version: "0.1.0",
    summary: """
    Serves LMTP (RFC 2033) for Postfix's lmtp: transport and delivers into the Maildir store.
    Listens on the systemd sockets it is given, else on lmtpsocket and lmtp_listen; runs in the
    foreground until SIGTERM, then finishes the transactions in flight and exits.
    """,
    options: [
        Tool.configFile,
        Tool.override,
        Tool.logToStandardError,
        .flag("i", name: "inetd", help: "serve one session on standard input/output (inetd), then exit"),
    ],
    epilogue: """
    Exit status: 0 after a clean stop, 64 usage, 75 temporary failure (e.g. cannot bind),
    78 configuration error (see nestbox-lmtpd(8)).
    """)

let tool = Tool(spec, reporting: .standardError).start(syslogFallback: true)
let config = tool.config

if tool.options.has("inetd") {
    tool.dropPrivileges()
    do {
        try MailStore(config: config).prepare()
    } catch {
        tool.fail((error as? NestboxFailure) ?? NestboxFailure(.temporary, "\(error)"))
    }
    let session = LMTPSession(delivery: Delivery(store: MailStore(config: config)), serverName: config.serverName,
                              client: "stdin", sessionID: "\(String(getpid(), radix: 36).uppercased())I",
                              limits: LMTPSession.Limits(config: config))
    DotLock.hitch = DotLockHitch(base: config.partition, relative: MailStore.locksRelative)
    StdioSession.run(session, idleTimeout: config.lmtpIdleTimeout)
    DotLock.hitch?.remove()
    tool.finish(.delivered)
}

// Sockets are bound as root (a socket in /run, a port below 1024), then root is dropped before
// the first connection is accepted.
LMTPServer.blockTerminationSignals()
let server = LMTPServer(config: config)
do {
    let names = try server.bind()
    tool.dropPrivileges()
    try MailStore(config: config).prepare()
    // Each delivery's uidlist lock is a link to one file of this process (DotLockHitch.swift).
    DotLock.hitch = DotLockHitch(base: config.partition, relative: MailStore.locksRelative)
    server.delivery.duplicates?.openAll()
    try server.startAccepting()
    Log.info("listening on \(names.joined(separator: ", ")) as uid \(getuid()); mail root \(config.partition)")
} catch let f as NestboxFailure {
    tool.fail(f)
} catch {
    tool.fail(NestboxFailure(.temporary, "bind: \(error)"))
}
server.run()
DotLock.hitch?.remove()
tool.finish(.delivered)
