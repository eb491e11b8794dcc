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
        // Everything the configuration says is checked before any socket is touched: a second
        // start that is refused must leave the running server's socket alone.
        let socketAccount = try preflight()
        if !config.lmtpSocket.isEmpty {
            let path = config.lmtpSocket
            let dir = Files.directoryName(path)
            if !Files.isDirectory(dir) {
                try Files.makeDirectory(dir, mode: 0o755)
                // Ours: the mail owner may then remove its socket at a clean stop.
                if geteuid() == 0, let owner = Privileges.lookup(config.mailOwner) {
                    if chown(dir, owner.uid, owner.gid) != 0 { throw NestboxFailure.system("chown", dir) }
                }
            }
            try LMTPServer.claimSocketPath(path, config: config)
            listeners.append(try bootstrap().bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false).wait())
            try secureSocket(path, socketAccount)
            var st = stat()
            if lstat(path, &st) == 0 { boundSocket = (path, st.st_ino) }
            names.append("unix:\(path)")
        }
        for l in config.lmtpListeners {
            listeners.append(try bootstrap()
                .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
                .bind(host: l.host, port: l.port).wait())
            names.append("inet:\(l)")
        }
        if listeners.isEmpty {
            throw config.failure("lmtpsocket", "and lmtp_listen are both empty: no listener; set one of them, or start from a systemd socket")
        }
        return names
    }

    /// Starts accepting connections (call after switching to the mail owner).
    public func startAccepting() throws {
        for l in listeners { try l.setOption(ChannelOptions.autoRead, value: true).wait() }
    }

    /// The accounts the configuration names, looked up before anything is bound (as root):
    /// `mail_owner`, and the socket's owner and group. Returns the socket's uid and gid.
    func preflight() throws -> (uid: uid_t, gid: gid_t)? {
        guard geteuid() == 0 else { return nil }
        _ = try Privileges.mailOwner(config)
        guard let owner = Privileges.lookup(config.lmtpSocketOwner) else {
            // Empty lmtpsocket_owner means mail_owner, checked just above.
            throw config.failure("lmtpsocket_owner", "no such user")
        }
        var gid = owner.gid
        if !config.lmtpSocketGroup.isEmpty {
            guard let g = getgrnam(config.lmtpSocketGroup) else {
                throw config.failure("lmtpsocket_group", "no such group")
            }
            gid = g.pointee.gr_gid
        }
        return (owner.uid, gid)
    }

    func secureSocket(_ path: String, _ account: (uid: uid_t, gid: gid_t)?) throws {
        if chmod(path, mode_t(config.lmtpSocketMode)) != 0 { throw NestboxFailure.system("chmod", path) }
        if let account {
            if chown(path, account.uid, account.gid) != 0 { throw NestboxFailure.system("chown", path) }
            return
        }
        // Not started as root: the socket is ours; its group can still be one we belong to.
        // A group that cannot be given is an error, not a detail: Postfix would be refused.
        let group = config.lmtpSocketGroup
        guard !group.isEmpty else { return }
        guard let g = getgrnam(group) else {
            throw config.failure("lmtpsocket_group", "no such group")
        }
        let gid = g.pointee.gr_gid
        if chown(path, uid_t.max, gid) == 0 { return }
        let mode = mode_t(config.lmtpSocketMode)
        if mode & 0o006 == 0o006 { return }  // anyone may connect: the group does not matter
        throw config.failure("lmtpsocket_group", "cannot give the socket to group \(group) "
            + "(uid \(getuid()) is not a member; started as root, nestbox-lmtpd sets it itself); "
            + "members of \(group) could not connect with lmtpsocket_mode \(String(mode, radix: 8))")
    }

    /// Makes `path` free for a new socket: nothing there, or a socket nobody answers on (left
    /// by a server that died), which is removed. A socket a server answers on is refused (a
    /// temporary failure: that server is running), and so is anything that is not a socket.
    static func claimSocketPath(_ path: String, config: Config) throws {
        var st = stat()
        if lstat(path, &st) != 0 {
            if errno == ENOENT { return }
            throw NestboxFailure.system("lstat", path)
        }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw config.failure("lmtpsocket", "exists and is not a socket; remove it or set another path")
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw NestboxFailure.system("socket", path) }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw config.failure("lmtpsocket", "path too long for a UNIX socket")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let answered = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if answered == 0 {
            throw NestboxFailure(.temporary, "lmtpsocket \(path): a server is answering on it (another nestbox-lmtpd running?); not replacing it")
        }
        let code = errno
        guard code == ECONNREFUSED else {
            errno = code
            throw NestboxFailure.system("connect", path)
        }
        if unlink(path) != 0 && errno != ENOENT { throw NestboxFailure.system("remove stale socket", path) }
        Log.info("removed stale socket \(path) (nobody answered on it)")
    }

    /// Removes the socket bound here, if it is still the same one (not a successor's).
    func removeBoundSocket() {
        guard let (path, inode) = boundSocket else { return }
        var st = stat()
        guard lstat(path, &st) == 0, st.st_ino == inode, (st.st_mode & S_IFMT) == S_IFSOCK else { return }
        if unlink(path) != 0 {
            Log.warning("socket \(path) not removed at stop: \(errnoText(errno)) (its directory must be writable by mail_owner)")
        }
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
            // Reads of at least 8 KiB: a small message with its end arrives in one read(2)
            // (NIO's default shrinks to 2 KiB after the short command lines, and a 4 KiB
            // message then takes three reads); up to 64 KiB for big ones.
            .childChannelOption(ChannelOptions.recvAllocator,
                                value: AdaptiveRecvByteBufferAllocator(minimum: 8192, initial: 16384, maximum: 65536))
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try self.initialize(channel)
                }
            }
    }
}
