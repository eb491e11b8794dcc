// An LMTP session over two file descriptors (stdin/stdout): `nestbox-deliver -l` and
// `nestbox-lmtpd -i` (inetd, or any supervisor that hands over a connected socket). Same
// session code as the network server; a blocking loop is all one connection needs.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxStore
import NestboxSupport

public enum StdioSession {
    /// Runs one session to its end: QUIT, end of input, or `idleTimeout` seconds of silence.
    public static func run(_ session: LMTPSession, input: Int32 = 0, output: Int32 = 1, idleTimeout: Int64) {
        signal(SIGPIPE, SIG_IGN)
        guard send(session.greeting(), to: output) else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var replies: [UInt8] = []
        replies.reserveCapacity(4096)
        while !session.isClosed {
            var pfd = pollfd(fd: input, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, Int32(clamping: idleTimeout * 1000))
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            if ready == 0 {
                _ = send(session.close(reason: LMTPReply.idleTimeout(session.serverName)), to: output)
                Log.info("\(session.sessionID): idle timeout, closed")
                return
            }
            let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                break
            }
            if n == 0 {
                session.connectionLost()
                return
            }
            replies.removeAll(keepingCapacity: true)
            session.feed(buffer[0..<n], into: &replies)
            if !replies.isEmpty && !send(replies, to: output) {
                session.connectionLost()
                return
            }
        }
    }

    private static func send(_ bytes: [UInt8], to fd: Int32) -> Bool {
        (try? Files.writeAll(fd, bytes, path: "standard output")) != nil
    }
}
