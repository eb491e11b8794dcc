// nestbox-lmtpd's network side, on SwiftNIO.
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
    private var listeners: [Channel] = []
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

    // MARK: Binding (as root, before privileges are dropped)

    /// Binds every listener. Returns descriptions for the log.
    public func bind() throws -> [String] {
        pool.start()
        var names: [String] = []
        let inherited = LMTPServer.systemdSockets()
        if !inherited.isEmpty {
            for fd in inherited {
                listeners.append(try bootstrap().withBoundSocket(fd).wait())
                names.append("systemd socket fd \(fd)")
            }
            return names
        }
        if !config.lmtpSocket.isEmpty {
            let path = config.lmtpSocket
            let dir = Files.directoryName(path)
            if !Files.isDirectory(dir) {
                try Files.makeDirectory(dir, mode: 0o755)
            }
            listeners.append(try bootstrap().bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).wait())
            try secureSocket(path)
            names.append("unix:\(path)")
        }
        for l in config.lmtpListeners {
            listeners.append(try bootstrap()
                .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
                .bind(host: l.host, port: l.port).wait())
            names.append("inet:\(l)")
        }
        if listeners.isEmpty {
            throw NestboxFailure(.config, "no listener: set lmtpsocket or lmtp_listen, or start from a systemd socket")
        }
        return names
    }

    /// Starts accepting connections (call after switching to the mail owner).
    public func startAccepting() throws {
        for l in listeners { try l.setOption(ChannelOptions.autoRead, value: true).wait() }
    }

    private func secureSocket(_ path: String) throws {
        if chmod(path, mode_t(config.lmtpSocketMode)) != 0 { throw NestboxFailure.system("chmod", path) }
        guard geteuid() == 0 else { return }
        guard let owner = Privileges.lookup(config.lmtpSocketOwner) else {
            throw NestboxFailure(.config, "lmtpsocket_owner \(config.lmtpSocketOwner): no such user")
        }
        var gid = owner.gid
        if !config.lmtpSocketGroup.isEmpty {
            guard let g = getgrnam(config.lmtpSocketGroup) else {
                throw NestboxFailure(.config, "lmtpsocket_group \(config.lmtpSocketGroup): no such group")
            }
            gid = g.pointee.gr_gid
        }
        if chown(path, owner.uid, gid) != 0 { throw NestboxFailure.system("chown", path) }
    }

    /// LISTEN_FDS sockets handed over by systemd (fds 3...), when they are meant for us.
    static func systemdSockets() -> [CInt] {
        let env = Config.currentEnvironment()
        guard let pidText = env["LISTEN_PID"], let pid = Int32(pidText), pid == getpid(),
              let countText = env["LISTEN_FDS"], let count = Int32(countText), count > 0 else { return [] }
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        return (0..<count).map { 3 + $0 }
    }

    private func bootstrap() -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            // Nothing is accepted until `startAccepting()`, after privileges are dropped.
            .serverChannelOption(ChannelOptions.autoRead, value: false)
            .childChannelOption(ChannelOptions.autoRead, value: true)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try self.initialize(channel)
                }
            }
    }

    private func initialize(_ channel: Channel) throws {
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
        for h in handlers { h.drain() }
        let empty = state.withLockedValue { $0.connections.isEmpty }
        if empty { finished.signal() }
    }
}

/// Refuses a connection over the limit or during shutdown.
final class RefuseHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let serverName: String
    init(serverName: String) { self.serverName = serverName }

    func channelActive(context: ChannelHandlerContext) {
        let buffer = context.channel.allocator.buffer(string: LMTPReply.tooManyConnections(serverName) + "\r\n")
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in context.close(promise: nil) }
    }
}

/// Moves bytes between the socket and the session; the session runs on the thread pool.
final class LMTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let session: LMTPSession
    let pool: NIOThreadPool
    unowned let server: LMTPServer
    private var context: ChannelHandlerContext? = nil
    private var queued: [UInt8] = []
    private var busy = false
    private var closing = false
    private var inactive = false
    /// The client will send nothing more: once the input already read is answered, the session ends.
    private var inputClosed = false

    init(session: LMTPSession, pool: NIOThreadPool, server: LMTPServer) {
        self.session = session
        self.pool = pool
        self.server = server
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        write(session.greeting(), context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if let bytes = buffer.readBytes(length: buffer.readableBytes) { queued.append(contentsOf: bytes) }
        if !busy {
            process(context: context)
        } else if queued.count > LMTPHandler.backPressureBytes && !readingPaused {
            // The store is slower than the client: stop reading until the session catches up.
            readingPaused = true
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        }
    }

    /// Input beyond this waiting for the session pauses reading from the socket.
    static let backPressureBytes = 1 << 20
    private var readingPaused = false

    private func process(context: ChannelHandlerContext) {
        guard !queued.isEmpty, !closing else { return }
        busy = true
        let input = queued
        queued = []
        let session = self.session
        pool.runIfActive(eventLoop: context.eventLoop) { () -> [UInt8] in
            var out: [UInt8] = []
            session.feed(input[...], into: &out)
            return out
        }.whenComplete { [self] result in
            busy = false
            if inactive {
                session.connectionLost()
                return
            }
            switch result {
            case .success(let out):
                if !out.isEmpty { write(out, context: context) }
                if session.isClosed {
                    closeAfterFlush(context: context)
                } else if server.isDraining && !session.inTransaction {
                    write(session.close(reason: LMTPReply.shuttingDown(session.serverName)), context: context)
                    closeAfterFlush(context: context)
                } else if !queued.isEmpty {
                    process(context: context)
                } else if inputClosed {
                    endOfInput(context: context)
                }
                if readingPaused && queued.count <= LMTPHandler.backPressureBytes && !closing {
                    readingPaused = false
                    context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
                }
            case .failure(let error):
                Log.error("\(session.sessionID): \(error)")
                write(session.close(reason: LMTPReply.internalError(session.serverName)), context: context)
                closeAfterFlush(context: context)
            }
        }
    }

    /// The last write's completion: the close waits for it, so that no reply is cut off.
    private var lastWrite: EventLoopFuture<Void>? = nil

    private func write(_ bytes: [UInt8], context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        lastWrite = context.writeAndFlush(wrapOutboundOut(buffer))
    }

    private func closeAfterFlush(context: ChannelHandlerContext) {
        guard !closing else { return }
        closing = true
        guard let lastWrite else { return context.close(promise: nil) }
        lastWrite.whenComplete { _ in context.close(promise: nil) }
    }

    /// Everything read before the end of input is answered: the session ends here (nothing
    /// half-received is stored) and the connection closes after the replies.
    private func endOfInput(context: ChannelHandlerContext) {
        guard !busy, queued.isEmpty, !closing else { return }
        session.connectionLost()
        closeAfterFlush(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            inputClosed = true
            endOfInput(context: context)  // now if idle; else when the work in flight is done
            return
        }
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read, !busy {
            if closing {
                // Closing, but the client has not taken its replies for the idle timeout.
                context.close(promise: nil)
                return
            }
            Log.info("\(session.sessionID): idle timeout, closing")
            write(session.close(reason: LMTPReply.idleTimeout(session.serverName)), context: context)
            closeAfterFlush(context: context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Shutdown: close now if nothing is in flight; otherwise the end of the work does it.
    func drain() {
        guard let context else { return }
        context.eventLoop.execute { [self] in
            if !busy && !session.inTransaction && !closing {
                write(session.close(reason: LMTPReply.shuttingDown(session.serverName)), context: context)
                closeAfterFlush(context: context)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closing = true
        inactive = true
        // While the pool still works on this session, the end of that work does this.
        if !busy { session.connectionLost() }
        Log.info("\(session.sessionID): disconnect")
        server.connectionClosed(self)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        Log.warning("\(session.sessionID): \(error)")
        closeAfterFlush(context: context)
    }
}
