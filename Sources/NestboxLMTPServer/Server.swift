// nestbox-lmtpd's network side, on SwiftNIO: the server's lifecycle here (connections,
// signals, daily upkeep, shutdown); Listeners.swift binds, Handlers.swift serves a connection.
//
// - Listeners: systemd sockets (LISTEN_FDS), else the UNIX socket `lmtpsocket` (mode, owner
//   and group from the configuration) and the TCP addresses of `lmtp_listen` (loopback only).
// - Each connection has one LMTPSession. The event loop only moves bytes: the session (parsing,
//   spooling, fsyncs) runs on a thread pool, one batch of input at a time per connection, with
//   reading paused meanwhile. That is the back pressure: a slow disk slows the clients down
//   instead of filling memory.
// - Limits: `lmtp_max_connections` (more get 421 4.3.2), `lmtp_idle_timeout` (421 4.4.2).
// - End of input (the client's shutdown(SHUT_WR), or its close): every command read before it
//   is processed and answered, as `nestbox-lmtpd -i` does at end of file; then the session
//   ends (a transaction left unfinished stores nothing) and the connection is closed once the
//   replies are written. Hence allowRemoteHalfClosure: without it SwiftNIO closes the channel
//   at end of input, and the replies still being worked out would have nowhere to go.
// - Graceful shutdown (SIGTERM, SIGINT): listeners close at once; idle sessions get 421 and are
//   closed; a session in a transaction finishes it (its replies are sent), then is closed; then
//   the process exits.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NestboxLMTP
import NestboxStore
import NestboxSupport

public final class LMTPServer: @unchecked Sendable {
    public let config: Config
    public let delivery: Delivery
    let group: MultiThreadedEventLoopGroup
    let pool: NIOThreadPool
    /// Bound by `bind()` (Listeners.swift).
    var listeners: [Channel] = []
    /// The UNIX socket bound by `bind()` and its inode, removed at a clean stop.
    var boundSocket: (String, ino_t)? = nil
    private let state = NIOLockedValueBox(State())
    private let finished = DispatchSemaphore(value: 0)

    struct State {
        var connections: [ObjectIdentifier: LMTPHandler] = [:]
        var draining = false
        var sessionCounter: UInt64 = 0
    }

    public init(config: Config) {
        self.config = config
        delivery = Delivery(store: MailStore(config: config))
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, System.coreCount))
        // Enough threads that sessions waiting on fsync do not hold up the others.
        pool = NIOThreadPool(numberOfThreads: max(8, min(64, config.lmtpMaxConnections)))
    }

    // MARK: Connections

    func initialize(_ channel: Channel) throws {
        let (accepted, id) = state.withLockedValue { s -> (Bool, UInt64) in
            s.sessionCounter += 1
            return (!s.draining && s.connections.count < config.lmtpMaxConnections, s.sessionCounter)
        }
        let client: String
        if let address = channel.remoteAddress, let ip = address.ipAddress {
            client = "[\(ip)]:\(address.port ?? 0)"
        } else {
            client = "unix socket"
        }
        let sessionID = "\(String(UInt64(wallSeconds()), radix: 36).uppercased())\(String(id, radix: 36).uppercased())"
        guard accepted else {
            Log.warning("\(sessionID): refused connection from \(client): too many connections or shutting down")
            try channel.pipeline.syncOperations.addHandler(RefuseHandler(serverName: config.serverName))
            return
        }
        let session = LMTPSession(delivery: delivery, serverName: config.serverName, client: client,
                                  sessionID: sessionID, limits: LMTPSession.Limits(config: config))
        let handler = LMTPHandler(session: session, pool: pool, server: self)
        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .seconds(config.lmtpIdleTimeout)))
        try channel.pipeline.syncOperations.addHandler(handler)
        state.withLockedValue { $0.connections[ObjectIdentifier(handler)] = handler }
        Log.info("\(sessionID): connect from \(client)")
    }

    func connectionClosed(_ handler: LMTPHandler) {
        let done = state.withLockedValue { s -> Bool in
            s.connections[ObjectIdentifier(handler)] = nil
            return s.draining && s.connections.isEmpty
        }
        if done { finished.signal() }
    }

    var isDraining: Bool { state.withLockedValue { $0.draining } }

    // MARK: Running and stopping

    /// Blocks SIGTERM and SIGINT in the calling thread and every thread created after it, so
    /// that only `run()`'s sigwait thread sees them. Call before anything starts threads.
    public static func blockTerminationSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Serves until SIGTERM or SIGINT, then drains and returns.
    public func run() {
        startThread { [self] in
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGTERM)
            sigaddset(&set, SIGINT)
            var sig: Int32 = 0
            while sigwait(&set, &sig) != 0 {}
            self.beginShutdown(signal: sig)
        }
        // Daily upkeep (Housekeeping.swift): expired duplicate records, spool files of
        // deliveries that died, trees of mailbox creations that died.
        let db = delivery.duplicates
        let store = delivery.store
        startThread {
            while true {
                store.housekeeping(duplicates: db)
                sleep(86_400)
            }
        }
        finished.wait()
        try? pool.syncShutdownGracefully()
        try? group.syncShutdownGracefully()
        Log.info("stopped")
    }

    func beginShutdown(signal: Int32) {
        let handlers = state.withLockedValue { s -> [LMTPHandler] in
            s.draining = true
            return Array(s.connections.values)
        }
        Log.info("signal \(signal): no longer accepting; finishing \(handlers.count) session(s)")
        for l in listeners { l.close(promise: nil) }
        removeBoundSocket()
        for h in handlers { h.drain() }
        let empty = state.withLockedValue { $0.connections.isEmpty }
        if empty { finished.signal() }
    }
}
