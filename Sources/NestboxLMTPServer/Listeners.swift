// nestbox-lmtpd's listeners: systemd sockets (LISTEN_FDS), else the UNIX socket `lmtpsocket`
// (mode, owner and group from the configuration) and the TCP addresses of `lmtp_listen`
// (loopback only). Bound as root; nothing is accepted until `startAccepting()`, after the
// process has become the mail owner.

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

extension LMTPServer {
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

    func secureSocket(_ path: String) throws {
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

    func bootstrap() -> ServerBootstrap {
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
}
