// Transcript tests for the LMTP session: a transcript is the client's input (bytes) and the
// exact reply lines the server must send back. Every transcript is run twice, each time on a
// fresh mail root in /tmp with the real store: once fed whole (one `feed` call per step), once
// byte by byte (one `feed` call per byte). Both runs must produce exactly the expected replies,
// hence the same output. Checks on disk run after each run.
//
// No Foundation: NestboxSupport has its own `Host`, which Foundation's would shadow.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
import NestboxStore
import NestboxLMTP

// MARK: Files

enum FS {
    static func makeTempDir(_ label: String = "nestbox-lmtptest") -> String {
        var template = Array("/tmp/\(label).XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { fatalError("mkdtemp: \(errnoText(errno))") }
        return String(cString: p)
    }

    /// rm -rf without following symbolic links.
    static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for name in (try? Files.list(path)) ?? [] { removeTree("\(path)/\(name)") }
            rmdir(path)
        } else {
            unlink(path)
        }
    }

    static func write(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        precondition(fd >= 0, "open \(path): \(errnoText(errno))")
        try! Files.writeAll(fd, bytes, path: path)
        close(fd)
    }

    static func read(_ path: String) -> [UInt8]? { try? Files.read(path, limit: 1 << 30) }
    static func list(_ path: String) -> [String] { ((try? Files.list(path)) ?? []).sorted() }
    static func exists(_ path: String) -> Bool { Files.exists(path) }

    static func size(_ path: String) -> Int64? {
        var st = stat()
        return lstat(path, &st) == 0 ? Int64(st.st_size) : nil
    }
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Command lines, each ending in CRLF.
func lines(_ ls: String...) -> [UInt8] { lines(ls) }
func lines(_ ls: [String]) -> [UInt8] { Array(ls.map { $0 + "\r\n" }.joined().utf8) }

func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

/// A small RFC 5322 message with CRLF line ends, without the DATA terminator.
func message(id: String? = nil, date: String? = "Mon, 1 Jan 2024 10:00:00 +0000", subject: String = "test",
             body: [String] = ["Hello."]) -> String {
    var h: [String] = ["From: alice@example.org", "To: bob@example.com"]
    if let date { h.append("Date: \(date)") }
    if let id { h.append("Message-ID: <\(id)>") }
    h.append("Subject: \(subject)")
    return (h + [""] + body).map { $0 + "\r\n" }.joined()
}

/// The same message as stored (LF line ends), without the trace headers.
func stored(_ crlfMessage: String) -> String {
    var out: [UInt8] = []
    let b = Array(crlfMessage.utf8)
    for (i, c) in b.enumerated() where !(c == 13 && i + 1 < b.count && b[i + 1] == 10) { out.append(c) }
    return text(out)
}

// MARK: Replies

/// The replies the transcripts expect: the library's table (LMTPReply, pinned word for word
/// by ReplyTableTests), for this test host.
typealias Reply = LMTPReply

extension LMTPReply {
    static let host = "mx.test"
    static let greeting = greeting(host)
    static let delivered = stored("delivered")
    static let duplicate = stored("duplicate suppressed")
    static let userUnknown = outcome(.userUnknown)
    static let badAddress = outcome(.badAddress)
    static let mailboxFull = outcome(.overQuota)
    // Refusals of the message itself, from the spool (Spool.swift).
    static let nulInMessage = "554 5.6.0 Message contains NUL bytes"
    static let headerTooLarge = "554 5.6.0 Message header section too large"
    static let emptyMessage = "554 5.6.0 Message is empty"
    static func tooBig(_ limit: Int64) -> String { "552 5.3.4 Message too big (limit \(limit) bytes)" }

    static func lhlo(size: Int64 = 0) -> [String] { lhlo(host: host, maxMessageSize: size) }
}

// MARK: The store

/// A mail root below a fresh temporary directory, with its configuration and store.
final class MailEnv {
    let dir: String
    let root: String
    let config: Config
    let store: MailStore
    let delivery: Delivery

    init(options: [String: String] = [:]) throws {
        dir = FS.makeTempDir()
        root = "\(dir)/mail"
        var c = Config()
        try c.set("partition-default", root, file: "test", line: 0)
        try c.set("servername", Reply.host, file: "test", line: 0)
        for (k, v) in options.sorted(by: { $0.key < $1.key }) { try c.set(k, v, file: "test", line: 0) }
        config = c
        store = MailStore(config: c)
        try store.prepare()
        delivery = Delivery(store: store)
    }

    func remove() { FS.removeTree(dir) }

    var spoolDirectory: String { store.spoolDirectory }
    /// Messages being received: the spool directory (several recipients) and the tmp/ of
    /// every user's folders (one recipient spools in its folder's tmp/).
    var spoolFiles: [String] {
        var files = FS.list(spoolDirectory)
        for user in FS.list(root) where !user.hasPrefix(".") {
            let userRoot = "\(root)/\(user)"
            for folder in [userRoot] + FS.list(userRoot).filter({ $0.hasPrefix(".") }).map({ "\(userRoot)/\($0)" }) {
                files += FS.list("\(folder)/tmp").map { "\(folder)/tmp/\($0)" }
            }
        }
        return files
    }

    /// Creates a user's INBOX (and folders) through the store; returns the user's root.
    @discardableResult
    func makeUser(_ name: String, limits: QuotaLimits? = nil, folders: [String] = []) throws -> String {
        let userRoot = try store.userRoot(try store.parseRecipient(name))
        try store.createUser(root: userRoot, limits: limits, folders: folders)
        return userRoot
    }

    func userRoot(_ name: String) -> String {
        try! store.userRoot(try! store.parseRecipient(name))
    }

    func folder(_ user: String, _ name: String = "INBOX") throws -> Folder {
        try store.folder(name, in: userRoot(user))
    }

    func messages(_ user: String, folder name: String = "INBOX") throws -> [StoredMessage] {
        try folder(user, name).messages()
    }

    /// The stored files' contents, in UID order.
    func contents(_ user: String, folder name: String = "INBOX") throws -> [String] {
        try messages(user, folder: name).map { text(FS.read($0.path) ?? []) }
    }

    /// The stored messages without the two trace fields (Return-Path, Received) put first.
    func bodies(_ user: String, folder name: String = "INBOX") throws -> [String] {
        try contents(user, folder: name).map(stripTrace)
    }

    /// Files left in a folder's tmp/ (there must be none after a transaction).
    func tmpFiles(_ user: String, folder name: String = "INBOX") throws -> [String] {
        FS.list("\(try folder(user, name).path)/tmp")
    }

    /// Puts `count` messages of `size` bytes into the user's INBOX behind the store's back and
    /// recalculates maildirsize with `limits` (so that the user is over quota, for instance).
    func fill(_ user: String, count: Int, size: Int, limits: QuotaLimits) throws {
        let userRoot = userRoot(user)
        for i in 0..<count {
            let name = "1700000000.M\(i)P1.filler,S=\(size),W=\(size)"
            FS.write("\(userRoot)/cur/\(name):2,S", Array(repeating: UInt8(ascii: "x"), count: size))
        }
        try QuotaRoot(root: userRoot).recalculate(limits: limits)
    }
}

/// Drops `Return-Path:` and `Received:` (with its continuation lines) from the top.
func stripTrace(_ s: String) -> String {
    var ls = s.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    if ls.first?.hasPrefix("Return-Path: <") == true { ls.removeFirst() }
    if ls.first?.hasPrefix("Received: ") == true {
        ls.removeFirst()
        while ls.first?.hasPrefix("\t") == true { ls.removeFirst() }
    }
    return ls.joined(separator: "\n")
}

// MARK: Transcripts

enum Feeding: String, CaseIterable {
    case whole = "fed whole"
    case byteByByte = "fed byte by byte"
}

/// One step of a transcript.
enum Step {
    /// Client input, and the exact reply lines it must produce (CRLF added here).
    case send([UInt8], [String])
    /// A check in the middle (files in the spool, session state).
    case check((MailEnv, LMTPSession) throws -> Void)
    /// The client goes away (connectionLost()).
    case lose
    /// A new connection on the same store (the old one is forgotten).
    case reconnect
}

class LMTPTestCase: XCTestCase {
    /// Runs `steps` once per feeding mode, each on a fresh mail root set up by `setup`; checks
    /// replies exactly after every `send`, runs `check` on the store after the run, and asserts
    /// that both modes produced identical output.
    func transcript(_ steps: [Step], options: [String: String] = [:], limits: LMTPSession.Limits = .init(),
                    setup: (MailEnv) throws -> Void = { _ in }, check: (MailEnv, LMTPSession) throws -> Void = { _, _ in },
                    file: StaticString = #filePath, line: UInt = #line) {
        var outputs: [Feeding: [UInt8]] = [:]
        for mode in Feeding.allCases {
            let env: MailEnv
            do { env = try MailEnv(options: options) } catch {
                XCTFail("setting up the mail root: \(error)", file: file, line: line)
                return
            }
            defer { env.remove() }
            do {
                try setup(env)
                var session = makeSession(env, limits: limits, number: 1)
                var sessions = 1
                var all: [UInt8] = []
                for (index, step) in steps.enumerated() {
                    switch step {
                    case .send(let input, let expected):
                        var out: [UInt8] = []
                        switch mode {
                        case .whole:
                            session.feed(input[...], into: &out)
                        case .byteByByte:
                            for i in input.indices { session.feed(input[i...i], into: &out) }
                        }
                        all += out
                        compare(out, expected, "\(mode.rawValue), step \(index + 1)", file: file, line: line)
                    case .check(let body):
                        try body(env, session)
                    case .lose:
                        session.connectionLost()
                    case .reconnect:
                        sessions += 1
                        session = makeSession(env, limits: limits, number: sessions)
                    }
                }
                outputs[mode] = all
                try check(env, session)
                XCTAssertEqual(env.spoolFiles, [], "\(mode.rawValue): files left in the spool", file: file, line: line)
            } catch {
                XCTFail("\(mode.rawValue): \(error)", file: file, line: line)
            }
        }
        if let a = outputs[.whole], let b = outputs[.byteByByte], a != b {
            XCTFail("output fed whole differs from output fed byte by byte:\n\(text(a))\n---\n\(text(b))", file: file, line: line)
        }
    }

    /// The transcript of one connection, as a single step.
    func transcript(_ input: [UInt8], _ expected: [String], options: [String: String] = [:],
                    limits: LMTPSession.Limits = .init(), setup: (MailEnv) throws -> Void = { _ in },
                    check: (MailEnv, LMTPSession) throws -> Void = { _, _ in },
                    file: StaticString = #filePath, line: UInt = #line) {
        transcript([.send(input, expected)], options: options, limits: limits, setup: setup, check: check, file: file, line: line)
    }

    func makeSession(_ env: MailEnv, limits: LMTPSession.Limits, number: Int) -> LMTPSession {
        LMTPSession(delivery: env.delivery, serverName: Reply.host, client: "127.0.0.1",
                    sessionID: "T\(number)", limits: limits)
    }

    /// Exact comparison of the output with the expected lines, each ending in CRLF.
    func compare(_ out: [UInt8], _ expected: [String], _ context: String, file: StaticString, line: UInt) {
        let wanted = Array(expected.map { $0 + "\r\n" }.joined().utf8)
        guard out != wanted else { return }
        var got = text(out).components(separatedBy: "\r\n")
        if got.last == "" { got.removeLast() }
        if got.count == expected.count {
            for (i, (g, e)) in zip(got, expected).enumerated() where g != e {
                XCTFail("\(context): reply \(i + 1): got \"\(g)\", expected \"\(e)\"", file: file, line: line)
                return
            }
            XCTFail("\(context): output is not CRLF-terminated lines: \(out)", file: file, line: line)
        } else {
            let shown = got.count > 40 ? Array(got.prefix(20)) + ["..."] + Array(got.suffix(20)) : got
            XCTFail("\(context): \(got.count) replies, expected \(expected.count):\n\(shown.joined(separator: "\n"))",
                    file: file, line: line)
        }
    }
}

extension String {
    /// Splits on a separator string (no Foundation here).
    func components(separatedBy separator: String) -> [String] {
        var result: [String] = []
        var current = ""
        var rest = Substring(self)
        while !rest.isEmpty {
            if rest.hasPrefix(separator) {
                result.append(current)
                current = ""
                rest = rest.dropFirst(separator.count)
            } else {
                current.append(rest.removeFirst())
            }
        }
        result.append(current)
        return result
    }
}
