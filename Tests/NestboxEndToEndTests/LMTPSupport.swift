#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest

/// Helpers of the nestbox-lmtpd end-to-end tests: the built server run as a child process, a
/// raw LMTP client over TCP or a UNIX socket, free loopback ports, python3 for client scripts.

struct LMTPTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The built nestbox-lmtpd, started with `-L -C <config>`, its standard error in a log file.
/// Always stop it (`stop()`, SIGKILL) in tearDown.
final class LMTPDaemon {
    let configPath: String
    let logPath: String
    /// The UNIX socket it should listen on (nil: none).
    let socketPath: String?
    /// The TCP port on 127.0.0.1 it should listen on (nil: none).
    let port: Int?
    private(set) var process: Process? = nil
    private var logHandle: FileHandle? = nil

    init(configPath: String, logPath: String, socketPath: String?, port: Int?) {
        self.configPath = configPath
        self.logPath = logPath
        self.socketPath = socketPath
        self.port = port
    }

    var pid: pid_t { process?.processIdentifier ?? 0 }
    var isRunning: Bool { process?.isRunning ?? false }
    var log: String { Harness.read(logPath) }

    /// Starts the server and waits (bounded) until every listener accepts connections.
    func start(extraArguments: [String] = [], timeout: TimeInterval = 20) throws {
        precondition(process == nil || !(process!.isRunning), "already running")
        if !FileManager.default.fileExists(atPath: logPath) {
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        handle.seekToEndOfFile()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Harness.binary("nestbox-lmtpd"))
        p.arguments = ["-L", "-C", configPath] + extraArguments
        p.standardInput = FileHandle(forReadingAtPath: "/dev/null")
        p.standardOutput = handle
        p.standardError = handle
        _ = Harness.ignoreSigpipe
        try p.run()
        process = p
        try? logHandle?.close()
        logHandle = handle
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let tcpReady = port.map { Net.canConnect(port: $0) } ?? true
            let unixReady = socketPath.map { Net.canConnect(unixPath: $0) } ?? true
            // Connectable once listen() is done; serving once it has become the mail owner.
            if tcpReady && unixReady && log.contains("listening on ") { return }
            if !p.isRunning {
                throw LMTPTestError("nestbox-lmtpd exited (\(p.terminationStatus)) before listening:\n\(log)")
            }
            if Date() > deadline {
                throw LMTPTestError("nestbox-lmtpd does not accept connections within \(Int(timeout)) s (tcp \(tcpReady), unix \(unixReady)):\n\(log)")
            }
            usleep(20_000)
        }
    }

    func signal(_ sig: Int32) {
        guard let p = process, p.isRunning else { return }
        kill(p.processIdentifier, sig)
    }

    /// Waits (bounded) for the process to end; nil if it is still running.
    func waitForExit(timeout: TimeInterval) -> (reason: Process.TerminationReason, status: Int32)? {
        guard let p = process else { return nil }
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning {
            if Date() > deadline { return nil }
            usleep(20_000)
        }
        p.waitUntilExit()
        return (p.terminationReason, p.terminationStatus)
    }

    /// SIGKILL if still running, and reap it.
    func stop() {
        if let p = process, p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            _ = waitForExit(timeout: 10)
        }
        try? logHandle?.close()
        logHandle = nil
    }

    deinit { stop() }
}

/// A blocking LMTP client over a real socket, with bounded waits.
final class LMTPConnection {
    private(set) var fd: Int32
    private var buffer: [UInt8] = []
    var transcript = ""

    init(port: Int, timeout: TimeInterval = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw LMTPTestError("socket: errno \(errno)") }
        var addr = Net.loopback(port: port)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 {
            let e = errno
            Glibc.close(fd)
            throw LMTPTestError("connect 127.0.0.1:\(port): errno \(e)")
        }
    }

    init(unixPath: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw LMTPTestError("socket: errno \(errno)") }
        guard Net.connect(fd, unixPath: unixPath) else {
            let e = errno
            Glibc.close(fd)
            throw LMTPTestError("connect \(unixPath): errno \(e)")
        }
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    func send(_ text: String) throws {
        try send(Array(text.utf8))
    }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw LMTPTestError("send: errno \(errno)")
            }
            offset += n
        }
    }

    /// Reads more bytes; false on end of file (or a reset connection).
    private func fill(deadline: Date) throws -> Bool {
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { throw LMTPTestError("timed out waiting for the server; so far:\n\(transcript)") }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, Int32(max(1, min(left * 1000, 60_000))))
            if r < 0 { if errno == EINTR { continue }; throw LMTPTestError("poll: errno \(errno)") }
            if r == 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == ECONNRESET { return false }
                throw LMTPTestError("recv: errno \(errno)")
            }
            if n == 0 { return false }
            buffer.append(contentsOf: chunk[0..<n])
            return true
        }
    }

    /// One line without its CRLF; nil at end of file.
    func readLine(timeout: TimeInterval = 15) throws -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let lf = buffer.firstIndex(of: 10) {
                var line = Array(buffer[0..<lf])
                buffer.removeSubrange(0...lf)
                if line.last == 13 { line.removeLast() }
                let text = String(decoding: line, as: UTF8.self)
                transcript += "S: \(text)\n"
                return text
            }
            if try !fill(deadline: deadline) { return nil }
        }
    }

    /// One complete reply (multi-line replies joined with "\n"); throws at end of file.
    func readReply(timeout: TimeInterval = 15) throws -> String {
        var lines: [String] = []
        while true {
            guard let line = try readLine(timeout: timeout) else {
                throw LMTPTestError("connection closed while waiting for a reply; so far:\n\(transcript)")
            }
            lines.append(line)
            let chars = Array(line.utf8)
            if chars.count < 4 || chars[3] != UInt8(ascii: "-") { return lines.joined(separator: "\n") }
        }
    }

    /// Sends a command line and returns its reply.
    func command(_ line: String, timeout: TimeInterval = 15) throws -> String {
        transcript += "C: \(line)\n"
        try send(line + "\r\n")
        return try readReply(timeout: timeout)
    }

    /// True when the server closes the connection within `timeout` (remaining lines are read).
    func waitForClose(timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            do {
                if try readLine(timeout: max(0.01, deadline.timeIntervalSinceNow)) == nil { return true }
            } catch {
                return false
            }
        }
    }
}

enum Net {
    static func loopback(port: Int) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return addr
    }

    /// A port the kernel picks on 127.0.0.1 (bind to 0), released again for the server.
    static func freeLoopbackPort() throws -> Int {
        for _ in 0..<20 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { continue }
            defer { Glibc.close(fd) }
            var addr = loopback(port: 0)
            let ok = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            guard ok else { continue }
            var bound = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &bound) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
            }
            let port = Int(UInt16(bigEndian: bound.sin_port))
            if port >= 1024 { return port }
        }
        throw LMTPTestError("no free loopback port")
    }

    static func canConnect(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        var addr = loopback(port: port)
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    static func connect(_ fd: Int32, unixPath: String) -> Bool {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(unixPath.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
    }

    static func canConnect(unixPath: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        return connect(fd, unixPath: unixPath)
    }
}

enum Python {
    /// python3: the system one first, else the first on PATH.
    static let path: String? = {
        var candidates = ["/usr/bin/python3", "/usr/local/bin/python3"]
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            candidates.append("\(dir)/python3")
        }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    static func require() throws -> String {
        guard let path else {
            XCTFail("python3 is needed by the LMTP client scripts of these tests")
            throw LMTPTestError("python3 missing")
        }
        return path
    }

    /// Writes `source` to `<dir>/<name>` and runs it with `arguments`.
    @discardableResult
    static func run(_ source: String, name: String, in dir: String, _ arguments: [String], timeout: TimeInterval = 120) throws -> Harness.Result {
        let script = "\(dir)/\(name)"
        try source.write(toFile: script, atomically: true, encoding: .utf8)
        return try Harness.run(try require(), [script] + arguments, timeout: timeout)
    }

    /// A raw LMTP client driven by a JSON list of steps: each step sends `send` (if any; the
    /// first step usually sends nothing and reads the greeting) and then reads `replies`
    /// complete replies. Prints a JSON list with, per step, the list of replies (each reply's
    /// lines joined by "\n"). At end of file it prints what it has plus "EOF".
    /// Usage: lmtp_steps.py <host:port | /unix/path> <steps.json>
    static let stepsClient = #"""
    import json, socket, sys

    def connect(address):
        if address.startswith("/"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(address)
            return s
        host, port = address.rsplit(":", 1)
        return socket.create_connection((host, int(port)), timeout=30)

    class Reader:
        def __init__(self, s):
            self.s, self.buf = s, b""
        def line(self):
            while b"\n" not in self.buf:
                data = self.s.recv(65536)
                if not data:
                    raise EOFError()
                self.buf += data
            line, self.buf = self.buf.split(b"\n", 1)
            return line.rstrip(b"\r").decode("utf-8", "replace")
        def reply(self):
            lines = [self.line()]
            while len(lines[-1]) > 3 and lines[-1][3] == "-":
                lines.append(self.line())
            return "\n".join(lines)

    s = connect(sys.argv[1])
    steps = json.load(open(sys.argv[2]))
    r = Reader(s)
    out = []
    try:
        for step in steps:
            if step.get("send"):
                s.sendall(step["send"].encode("utf-8", "surrogateescape"))
            out.append([r.reply() for _ in range(step.get("replies", 1))])
    except EOFError:
        out.append("EOF")
    print(json.dumps(out))
    """#

    /// Runs `stepsClient` against `address` and returns the replies per step.
    static func steps(_ steps: [(send: String?, replies: Int)], address: String, dir: String) throws -> [[String]] {
        let json = try JSONSerialization.data(withJSONObject: steps.map { step -> [String: Any] in
            var d: [String: Any] = ["replies": step.replies]
            if let s = step.send { d["send"] = s }
            return d
        })
        let stepsPath = "\(dir)/steps-\(UUID().uuidString).json"
        try json.write(to: URL(fileURLWithPath: stepsPath))
        let r = try run(stepsClient, name: "lmtp_steps.py", in: dir, [address, stepsPath], timeout: 60)
        guard r.status == 0, let data = r.stdout.data(using: .utf8),
              let parsed = try JSONSerialization.jsonObject(with: data) as? [Any] else {
            throw LMTPTestError("lmtp_steps.py failed (\(r.status)):\n\(r.stdout)\n\(r.stderr)")
        }
        var out: [[String]] = []
        for item in parsed {
            guard let replies = item as? [String] else {
                throw LMTPTestError("the server closed the connection after step \(out.count): \(out)")
            }
            out.append(replies)
        }
        return out
    }
}

/// Reading back a Maildir the tests wrote through the server.
enum MaildirCheck {
    /// Paths (relative to `folder`) of the files in new/ and cur/.
    static func messageFiles(_ folder: String) -> [String] {
        var out: [String] = []
        for sub in ["new", "cur"] {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: "\(folder)/\(sub)")) ?? []
            out += names.sorted().map { "\(sub)/\($0)" }
        }
        return out
    }

    /// The value of the first header `name` of a message text (no folding needed here).
    static func header(_ name: String, in text: String) -> String? {
        let prefix = name.lowercased() + ":"
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty { return nil }
            if line.lowercased().hasPrefix(prefix) {
                return line.dropFirst(prefix.count).trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }

    /// Makes `<root>/<user>` a Maildir with a maildirsize whose usage is backed by a real file.
    static func makeUser(root: String, user: String, limitBytes: Int64, usedBytes: Int) throws {
        let path = "\(root)/\(user)"
        for d in [path, "\(path)/new", "\(path)/cur", "\(path)/tmp"] {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }
        var used = 0
        if usedBytes > 0 {
            var text = "Return-Path: <old@example.org>\nSubject: old\n\n"
            text += String(repeating: "x", count: usedBytes - text.utf8.count - 1) + "\n"
            let file = "\(path)/cur/1700000000.M1P1.old.example,S=\(usedBytes):2,S"
            try text.write(toFile: file, atomically: false, encoding: .utf8)
            chmod(file, 0o600)
            used = text.utf8.count
        }
        let size = "\(limitBytes)S\n\(used) \(used > 0 ? 1 : 0)\n"
        try size.write(toFile: "\(path)/maildirsize", atomically: false, encoding: .utf8)
        chmod("\(path)/maildirsize", 0o600)
        try Harness.chownTreeToMailOwner(root)
    }
}
