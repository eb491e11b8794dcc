#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// nestbox-lmtpd end to end: the built server started as a child process (as root, as in CI: it
/// binds, then runs as vmail) on a UNIX socket and a TCP port on 127.0.0.1, driven by real
/// clients (Python's smtplib.LMTP, swaks --protocol LMTP, raw-socket clients in Python and
/// Swift); and the stdin/stdout variants `nestbox-deliver -l` and `nestbox-lmtpd -i`.
final class LMTPServerTests: XCTestCase {
    static let serverName = "lmtp.example.test"
    static let sender = "s@example.org"

    var fixture: DeliverFixture!
    var server: LMTPDaemon!
    var port = 0
    var socketPath = ""

    override func setUpWithError() throws {
        try super.setUpWithError()
        guard Harness.isRoot else {
            XCTFail("LMTPServerTests start nestbox-lmtpd as root (it binds, then becomes vmail) and must run as root (as in CI)")
            throw LMTPTestError("not root")
        }
        try Harness.ensureMailOwner()
        for program in ["nestbox-lmtpd", "nestbox-deliver"] {
            guard FileManager.default.isExecutableFile(atPath: Harness.binary(program)) else {
                XCTFail("built program not found: \(Harness.binary(program))")
                throw LMTPTestError("no binary")
            }
        }
        _ = try Python.require()
    }

    override func tearDown() {
        server?.stop()
        server = nil
        fixture = nil
        super.tearDown()
    }

    // MARK: - setup helpers

    /// A fresh mail root with alice (no quota), carol (over quota) and, when asked, dave (room
    /// for a small message only); then the server on a UNIX socket and a free loopback port.
    @discardableResult
    func startServer(_ extra: [String: String] = [:], start: Bool = true) throws -> LMTPDaemon {
        port = try Net.freeLoopbackPort()
        fixture = try DeliverFixture("lmtpd")
        socketPath = "\(fixture.dir)/run/lmtp"
        var settings: [String: String] = [
            "servername": Self.serverName,
            "lmtpsocket": socketPath,
            "lmtp_listen": "127.0.0.1:\(port)",
            "lmtp_idle_timeout": "30",
            "duplicatesuppression": "yes",  // as shipped (DeliverFixture turns it off)
        ]
        for (k, v) in extra { settings[k] = v }
        for (k, v) in settings { try fixture.set(k, v) }
        try fixture.makeUser("alice")
        // carol: 5000 bytes used of 1000: over quota before anything arrives.
        try MaildirCheck.makeUser(root: fixture.root, user: "carol", limitBytes: 1000, usedBytes: 5000)
        // dave: 1000 of 3000 bytes used: RCPT is accepted, a 5000-byte message is not (strict quota).
        try MaildirCheck.makeUser(root: fixture.root, user: "dave", limitBytes: 3000, usedBytes: 1000)
        server = LMTPDaemon(configPath: fixture.configPath, logPath: "\(fixture.dir)/lmtpd.log",
                            socketPath: socketPath, port: port)
        if start { try server.start() }
        return server
    }

    var tcpAddress: String { "127.0.0.1:\(port)" }

    /// A JSON array's elements joined with spaces ([250, "2.0.0 Ok"] -> "250 2.0.0 Ok").
    static func joined(_ value: Any?) -> String {
        guard let items = value as? [Any] else { return "not an array: \(String(describing: value))" }
        return items.map { "\($0)" }.joined(separator: " ")
    }

    /// Waits until every session the server logged has ended (the readiness probes of start()).
    func waitForQuietServer() {
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            let log = server.log
            if log.components(separatedBy: ": connect from ").count == log.components(separatedBy: ": disconnect").count { return }
            usleep(20_000)
        }
    }

    func newMessages(_ user: String) -> [String] {
        MaildirCheck.messageFiles("\(fixture.root)/\(user)").filter { !$0.contains("1700000000.M1P1.old") }
    }

    func text(_ user: String, _ relative: String) -> String { Harness.read("\(fixture.root)/\(user)/\(relative)") }

    func spoolFiles() -> [String] { Harness.files(under: "\(fixture.root)/.nestbox/spool") }

    static func token() -> String { UUID().uuidString.lowercased() }

    func message(subject: String, id: String, bodyLines: [String]) -> String {
        "From: Sender <\(Self.sender)>\r\nTo: alice@example.test\r\nSubject: \(subject)\r\nMessage-ID: <\(id)>\r\n"
            + "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n" + bodyLines.map { $0 + "\r\n" }.joined()
    }

    /// The file of `user` whose text contains `token`; fails unless there is exactly one.
    func single(_ user: String, containing token: String, file: StaticString = #filePath, line: UInt = #line) -> String? {
        let found = newMessages(user).filter { text(user, $0).contains(token) }
        XCTAssertEqual(found.count, 1, "\(user): messages containing \(token): \(found)\n\(server?.log ?? "")", file: file, line: line)
        return found.first.map { text(user, $0) }
    }

    /// Checks the common shape of a message stored through LMTP.
    func assertStoredThroughLMTP(_ stored: String, subject: String, body: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(stored.hasPrefix("Return-Path: <\(Self.sender)>\nReceived: from "), "starts with:\n\(stored.prefix(300))", file: file, line: line)
        XCTAssertTrue(stored.contains("by \(Self.serverName) (Nestbox) with LMTP id "), stored, file: file, line: line)
        XCTAssertFalse(stored.contains("\r"), "stored with LF line ends", file: file, line: line)
        XCTAssertTrue(stored.contains("\nSubject: \(subject)\n"), stored, file: file, line: line)
        guard let sep = stored.range(of: "\n\n") else { return XCTFail("no header/body separator", file: file, line: line) }
        XCTAssertEqual(String(stored[sep.upperBound...]), body.map { $0 + "\n" }.joined(), "body changed", file: file, line: line)
    }

    /// What the test sent with DATA (dot-stuffed by the client) comes back unstuffed.
    static let bodyWithDots = ["first line", ".a line that starts with a dot", "..two dots", ".", "last line"]

    // MARK: - 1. real clients, mixed outcomes

    static let smtplibClient = #"""
    import json, smtplib, sys
    address, sender, rcpts, msgfile = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
    if address.startswith("/"):
        s = smtplib.LMTP(address, timeout=30)
    else:
        host, port = address.rsplit(":", 1)
        s = smtplib.LMTP(host, int(port), timeout=30)
    out = {}
    code, text = s.ehlo()          # LMTP.ehlo sends LHLO
    out["lhlo"] = [code, text.decode()]
    out["features"] = sorted(s.esmtp_features)
    code, text = s.mail(sender)
    out["mail"] = [code, text.decode()]
    out["rcpt"] = []
    for r in rcpts:
        code, text = s.rcpt(r)
        out["rcpt"].append([r, code, text.decode()])
    code, text = s.data(open(msgfile, "rb").read())   # smtplib dot-stuffs; returns the first reply only
    out["data"] = [code, text.decode()]
    code, text = s.quit()
    out["quit"] = [code, text.decode()]
    print(json.dumps(out))
    """#

    /// smtplib.LMTP: alice delivered, nobody 550 5.1.1, carol 452 4.2.2 at RCPT; one data reply.
    func runSmtplibMixedTransaction(address: String) throws {
        let token = Self.token()
        let subject = "smtplib \(token)"
        let msgPath = "\(fixture.dir)/smtplib-\(token).eml"
        try message(subject: subject, id: "\(token)@example.org", bodyLines: Self.bodyWithDots)
            .write(toFile: msgPath, atomically: true, encoding: .utf8)
        let r = try Python.run(Self.smtplibClient, name: "smtplib_lmtp.py", in: fixture.dir,
                               [address, Self.sender, "alice@example.test,nobody@example.test,carol@example.test", msgPath])
        XCTAssertEqual(r.status, 0, "smtplib client failed:\n\(r.stdout)\n\(r.stderr)\n\(server.log)")
        guard let out = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            return XCTFail("smtplib client output: \(r.stdout)")
        }
        XCTAssertEqual(Self.joined(out["lhlo"]),
                       "250 \(Self.serverName)\nPIPELINING\nENHANCEDSTATUSCODES\n8BITMIME\nSIZE\nCHUNKING\nSMTPUTF8\nIGNOREQUOTA")
        XCTAssertEqual(Self.joined(out["mail"]), "250 2.1.0 Ok")
        let rcpts = (out["rcpt"] as? [[Any]]) ?? []
        XCTAssertEqual(rcpts.map { Self.joined($0) }, [
            "alice@example.test 250 2.1.5 Ok",
            "nobody@example.test 550 5.1.1 User unknown",
            "carol@example.test 452 4.2.2 Mailbox full",
        ], server.log)
        XCTAssertEqual(Self.joined(out["data"]), "250 2.0.0 Ok: delivered")
        XCTAssertEqual(Self.joined(out["quit"]), "221 2.0.0 Bye")

        if let stored = single("alice", containing: token) {
            assertStoredThroughLMTP(stored, subject: subject, body: Self.bodyWithDots)
        }
        XCTAssertEqual(newMessages("carol"), [], "over quota: nothing stored for carol")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(fixture.root)/nobody"), "no mailbox made for an unknown user")
        XCTAssertEqual(spoolFiles(), [], "spool file removed after the transaction")
        let log = server.log
        XCTAssertTrue(log.contains("to=<alice@example.test> mailbox=alice uid="), log)
        XCTAssertTrue(log.contains("msgid=<\(token)@example.org> status=sent (delivered)"), log)
        XCTAssertTrue(log.contains("to=<nobody@example.test> status=bounced (5.1.1 User unknown"), log)
        XCTAssertTrue(log.contains("to=<carol@example.test> status=deferred (4.2.2 Mailbox full"), log)
    }

    /// swaks --protocol LMTP, same mixed transaction. `connection` selects TCP or the socket.
    func runSwaksMixedTransaction(connection: [String]) throws {
        let token = Self.token()
        let r = try Harness.run("/usr/bin/swaks", connection + [
            "--protocol", "LMTP", "--helo", "client.example.org", "--timeout", "20",
            "--from", Self.sender, "--to", "alice@example.test,nobody@example.test,carol@example.test",
            "--header", "Subject: swaks \(token)", "--header", "Message-Id: <\(token)@example.org>",
            "--body", "swaks body \(token)\nsecond line",
        ], timeout: 60)
        let out = r.stdout + r.stderr
        XCTAssertEqual(r.status, 0, "swaks exit status (0: the one accepted recipient got 250 after the data):\n\(out)")
        for expected in [
            "<-  220 \(Self.serverName) LMTP Nestbox ready",
            " -> LHLO client.example.org",
            "<-  250 IGNOREQUOTA",
            "<-  250 2.1.5 Ok",
            "<** 550 5.1.1 User unknown",
            "<** 452 4.2.2 Mailbox full",
            "<-  354 ",
            "<-  250 2.0.0 Ok: delivered",
            "<-  221 2.0.0 Bye",
        ] {
            XCTAssertTrue(out.contains(expected), "swaks transcript lacks \"\(expected)\":\n\(out)")
        }
        // Exactly one reply after the data: only alice was accepted.
        let afterDot = out.components(separatedBy: " -> .\n").last ?? ""
        XCTAssertEqual(afterDot.components(separatedBy: "\n").filter { $0.hasPrefix("<") && !$0.contains("221") }.count, 1, out)
        if let stored = single("alice", containing: token) {
            XCTAssertTrue(stored.hasPrefix("Return-Path: <\(Self.sender)>\nReceived: from client.example.org "), String(stored.prefix(300)))
            XCTAssertTrue(stored.contains("\n\nswaks body \(token)\nsecond line\n"), stored)
        }
        XCTAssertEqual(newMessages("carol"), [])
        XCTAssertEqual(spoolFiles(), [])
    }

    func testSmtplibLMTPMixedOutcomesOverTCP() throws {
        try startServer()
        try runSmtplibMixedTransaction(address: tcpAddress)
    }

    func testSwaksLMTPMixedOutcomesOverTCP() throws {
        try startServer()
        try runSwaksMixedTransaction(connection: ["--server", tcpAddress])
    }

    /// After the data, one reply per accepted recipient, in RCPT order, each its own outcome:
    /// alice delivered, dave over quota only once the message's size is known (strict quota),
    /// carol over quota but IGNOREQUOTA. A NOOP right after shows no further reply is pending.
    func testOneReplyPerRecipientAfterDataInRcptOrder() throws {
        try startServer(["lmtp_strict_quota": "yes"])
        try assertPerRecipientReplies(address: tcpAddress)
    }

    func assertPerRecipientReplies(address: String) throws {
        let token = Self.token()
        let subject = "per recipient \(token)"
        let filler = (1...60).map { String(format: "filler line %03d ", $0) + String(repeating: "x", count: 70) }
        let body = ["to alice, dave and carol"] + filler + ["last line"]
        let msg = message(subject: subject, id: "\(token)@example.org", bodyLines: body)
        XCTAssertGreaterThan(msg.utf8.count, 3000, "bigger than dave's remaining quota")
        let replies = try Python.steps([
            (nil, 1),
            ("LHLO raw.example.org\r\n", 1),
            ("MAIL FROM:<\(Self.sender)>\r\n", 1),
            ("RCPT TO:<alice@example.test>\r\n", 1),
            ("RCPT TO:<dave@example.test>\r\n", 1),
            ("RCPT TO:<nobody@example.test>\r\n", 1),
            ("RCPT TO:<carol@example.test> IGNOREQUOTA\r\n", 1),
            ("RCPT TO:<carol@example.test>\r\n", 1),
            ("DATA\r\n", 1),
            (msg + ".\r\n", 3),
            ("NOOP\r\n", 1),
            ("QUIT\r\n", 1),
        ], address: address, dir: fixture.dir)
        guard replies.count == 12 else { return XCTFail("replies: \(replies)\n\(server.log)") }
        XCTAssertEqual(replies[0], ["220 \(Self.serverName) LMTP Nestbox ready"])
        XCTAssertEqual(replies[2], ["250 2.1.0 Ok"])
        XCTAssertEqual(replies[3], ["250 2.1.5 Ok"], "alice")
        XCTAssertEqual(replies[4], ["250 2.1.5 Ok"], "dave: room left, size not yet known")
        XCTAssertEqual(replies[5], ["550 5.1.1 User unknown"], "nobody")
        XCTAssertEqual(replies[6], ["250 2.1.5 Ok"], "carol IGNOREQUOTA")
        XCTAssertEqual(replies[7], ["452 4.2.2 Mailbox full"], "carol without IGNOREQUOTA")
        XCTAssertEqual(replies[8].first?.hasPrefix("354 "), true, "\(replies[8])")
        XCTAssertEqual(replies[9], ["250 2.0.0 Ok: delivered", "452 4.2.2 Mailbox full", "250 2.0.0 Ok: delivered"],
                       "after the data: alice, dave, carol in RCPT order\n\(server.log)")
        XCTAssertEqual(replies[10], ["250 2.0.0 Ok"], "NOOP: no reply left over from the data")
        XCTAssertEqual(replies[11], ["221 2.0.0 Bye"])

        if let stored = single("alice", containing: token) { assertStoredThroughLMTP(stored, subject: subject, body: body) }
        if let stored = single("carol", containing: token) { assertStoredThroughLMTP(stored, subject: subject, body: body) }
        XCTAssertEqual(newMessages("dave"), [], "dave's copy refused: nothing stored")
        XCTAssertEqual(Harness.files(under: "\(fixture.root)/dave/tmp"), [])
        XCTAssertEqual(spoolFiles(), [])
        let log = server.log
        XCTAssertTrue(log.contains("to=<dave@example.test> mailbox=dave") && log.contains("status=deferred (4.2.2 Mailbox full"), log)
    }

    // MARK: - 2. the UNIX socket

    func testUnixSocketModeOwnerAndDeliveries() throws {
        try startServer(["lmtp_strict_quota": "yes"])
        var st = stat()
        XCTAssertEqual(lstat(socketPath, &st), 0, "socket \(socketPath) missing")
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFSOCK, "\(socketPath) is not a socket")
        XCTAssertEqual(st.st_mode & 0o7777, 0o660, "socket mode")
        let pw = try XCTUnwrap(getpwnam(Harness.mailOwner))
        XCTAssertEqual(st.st_uid, pw.pointee.pw_uid, "socket owner must be \(Harness.mailOwner)")
        XCTAssertEqual(st.st_gid, pw.pointee.pw_gid, "socket group: the owner's group (lmtpsocket_group empty)")
        // The server itself runs as the mail owner.
        let status = Harness.read("/proc/\(server.pid)/status")
        let uidLine = status.split(separator: "\n").first { $0.hasPrefix("Uid:") }.map(String.init) ?? ""
        XCTAssertEqual(uidLine.split(separator: "\t").dropFirst().map(String.init),
                       Array(repeating: String(pw.pointee.pw_uid), count: 4), "server process ids: \(uidLine)")

        try runSmtplibMixedTransaction(address: socketPath)
        try runSwaksMixedTransaction(connection: ["--socket", socketPath])
        try assertPerRecipientReplies(address: socketPath)
        XCTAssertEqual(newMessages("alice").count, 3)
        XCTAssertTrue(server.log.contains("connect from unix socket"), server.log)
    }

    /// The server on `socketPath` greets and answers LHLO.
    func answers(_ path: String) throws -> Bool {
        let c = try LMTPConnection(unixPath: path)
        defer { c.close() }
        let greeting = try c.readReply()
        let lhlo = try c.command("LHLO client.example.org")
        return greeting.hasPrefix("220") && lhlo.hasPrefix("250")
    }

    func testASecondServerNeverTakesTheSocketOfARunningOne() throws {
        try startServer()
        var before = stat()
        XCTAssertEqual(lstat(socketPath, &before), 0)
        func second(_ overrides: [String]) throws -> Harness.Result {
            try Harness.run(Harness.binary("nestbox-lmtpd"), ["-C", fixture.configPath] + overrides.flatMap { ["-o", $0] }
                            + ["-o", "lmtp_listen="], timeout: 30)
        }
        // Same socket: refused at once as temporary, the running server's socket untouched.
        let again = try second([])
        XCTAssertEqual(again.status, 75, again.stderr)
        XCTAssertTrue(again.stderr.contains("a server is answering on it"), again.stderr)
        // A configuration error is found before any socket is touched.
        let bad = try second(["mail_owner=nosuch-owner"])
        XCTAssertEqual(bad.status, 78, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("mail_owner nosuch-owner: no such user"), bad.stderr)
        var after = stat()
        XCTAssertEqual(lstat(socketPath, &after), 0)
        XCTAssertEqual(after.st_ino, before.st_ino, "the socket is still the running server's")
        XCTAssertTrue(try answers(socketPath))

        // A clean stop removes its socket (the directory it made belongs to the mail owner).
        server.signal(SIGTERM)
        XCTAssertEqual(server.waitForExit(timeout: 20)?.status, 0, server.log)
        XCTAssertFalse(FileManager.default.fileExists(atPath: socketPath), server.log)
        var dir = stat()
        XCTAssertEqual(lstat((socketPath as NSString).deletingLastPathComponent, &dir), 0)
        XCTAssertEqual(dir.st_uid, getpwnam(Harness.mailOwner)!.pointee.pw_uid)

        // A socket left by a server killed with SIGKILL is stale: the next one replaces it.
        try server.start()
        server.signal(SIGKILL)
        _ = server.waitForExit(timeout: 10)
        XCTAssertTrue(FileManager.default.fileExists(atPath: socketPath))
        try server.start()
        XCTAssertTrue(try answers(socketPath))
        XCTAssertTrue(server.log.contains("removed stale socket"), server.log)

        // Something else at the path is not removed.
        server.stop()
        try? FileManager.default.removeItem(atPath: socketPath)
        try "not a socket".write(toFile: socketPath, atomically: false, encoding: .utf8)
        let occupied = try second([])
        XCTAssertEqual(occupied.status, 78, occupied.stderr)
        XCTAssertEqual(Harness.read(socketPath), "not a socket")
    }

    /// Started as the mail owner (not root), a socket group it cannot give is an error, never
    /// a socket Postfix would be refused on; a group it belongs to is given.
    func testSocketGroupThatCannotBeGivenStopsTheStart() throws {
        try startServer(start: false)
        let run = (socketPath as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        try Harness.chownToMailOwner(run)
        let owner = getpwnam(Harness.mailOwner)!.pointee
        /// nestbox-lmtpd started as the mail owner; returns it running, or ended.
        func startAsOwner(group: String) throws -> (Process, Pipe) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            p.arguments = ["--reuid", Harness.mailOwner, "--regid", Harness.mailOwner, "--clear-groups", "--",
                           Harness.binary("nestbox-lmtpd"), "-C", fixture.configPath, "-o", "lmtp_listen=",
                           "-o", "lmtpsocket_group=\(group)"]
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            let deadline = Date().addingTimeInterval(20)
            while p.isRunning && !Net.canConnect(unixPath: socketPath) && Date() < deadline { usleep(20_000) }
            return (p, err)
        }
        // Not a member of postfix: exit 78 naming the key.
        let (refused, err) = try startAsOwner(group: "postfix")
        refused.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(refused.terminationStatus, 78, text)
        XCTAssertTrue(text.contains("lmtpsocket_group postfix: cannot give the socket to group postfix"), text)
        // Its own group: it starts, and the socket has that group.
        let ownGroup = String(cString: getgrgid(owner.pw_gid)!.pointee.gr_name)
        let (running, _) = try startAsOwner(group: ownGroup)
        defer { if running.isRunning { kill(running.processIdentifier, SIGKILL); running.waitUntilExit() } }
        XCTAssertTrue(running.isRunning)
        var st = stat()
        XCTAssertEqual(lstat(socketPath, &st), 0)
        XCTAssertEqual(st.st_gid, owner.pw_gid)
    }

    /// Without a syslog to reach (no socket at /dev/log, as in many containers), the server
    /// says so once on standard error and logs there instead of dropping its lines.
    func testUnreachableSyslogIsSaidAndLinesGoToStandardError() throws {
        try startServer(start: false)
        let errFile = "\(fixture.dir)/stderr.txt"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        p.arguments = ["-m", "sh", "-c", "if [ -e /dev/log ]; then mount --bind /dev/null /dev/log || exit 99; fi; "
                       + "exec '\(Harness.binary("nestbox-lmtpd"))' -C '\(fixture.configPath)' -o lmtp_listen= 2>'\(errFile)'"]
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
        let deadline = Date().addingTimeInterval(20)
        while p.isRunning && !Harness.read(errFile).contains("listening on") && Date() < deadline { usleep(20_000) }
        let text = Harness.read(errFile)
        XCTAssertTrue(p.isRunning, text)
        XCTAssertEqual(text.components(separatedBy: "syslog is unreachable").count, 2, "said once: \(text)")
        XCTAssertTrue(text.contains("nestbox-lmtpd[") && text.contains("listening on"), text)
    }

    func testSocketGroupAndModeFromConfiguration() throws {
        try startServer(["lmtpsocket_group": "postfix", "lmtpsocket_mode": "0620"])
        var st = stat()
        XCTAssertEqual(lstat(socketPath, &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o620)
        XCTAssertEqual(st.st_uid, try XCTUnwrap(getpwnam(Harness.mailOwner)).pointee.pw_uid)
        XCTAssertEqual(st.st_gid, try XCTUnwrap(getgrnam("postfix")).pointee.gr_gid, "lmtpsocket_group: postfix")
    }

    // MARK: - 4. SIGKILL in the middle of 1000 deliveries

    /// One session, no pipelining: one transaction at a time; the number of each message that
    /// got 250 after its final dot is appended to the acknowledgement file at once.
    /// Usage: lmtp_bulk.py <address> <first> <end> <ackfile> <token>
    static let bulkClient = #"""
    import os, socket, sys

    address, first, end, ackfile, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]

    def connect(address):
        if address.startswith("/"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(60)
            s.connect(address)
            return s
        host, port = address.rsplit(":", 1)
        return socket.create_connection((host, int(port)), timeout=60)

    s = connect(address)
    buf = b""
    def line():
        global buf
        while b"\n" not in buf:
            data = s.recv(65536)
            if not data:
                raise EOFError("connection closed")
            buf += data
        l, buf = buf.split(b"\n", 1)
        return l.rstrip(b"\r").decode("utf-8", "replace")
    def reply():
        lines = [line()]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(line())
        return lines[-1]
    def command(text, want):
        s.sendall(text.encode() + b"\r\n")
        r = reply()
        if not r.startswith(want):
            print("unexpected reply to %s: %s" % (text, r))
            sys.exit(3)

    def message(i):
        lines = ["From: Bulk <bulk@example.org>", "To: alice@example.test",
                 "Subject: bulk %d %s" % (i, token),
                 "Message-ID: <bulk-%d-%s@example.org>" % (i, token),
                 "Date: Thu, 26 Nov 2026 10:00:00 +0000", ""]
        lines += ["line %d of message %d %s" % (k, i, "y" * 60) for k in range(40)]
        lines += [".dot-stuffed line of message %d" % i, "end of message %d" % i]
        text = "\r\n".join(("." + l) if l.startswith(".") else l for l in lines) + "\r\n.\r\n"
        return text.encode()

    acks = os.open(ackfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    i = first
    try:
        if not reply().startswith("220"):
            sys.exit(3)
        command("LHLO bulk.example.org", "250")
        while i < end:
            command("MAIL FROM:<bulk@example.org>", "250")
            command("RCPT TO:<alice@example.test>", "250")
            command("DATA", "354")
            s.sendall(message(i))
            r = reply()
            if not r.startswith("250"):
                print("message %d refused: %s" % (i, r))
                sys.exit(3)
            os.write(acks, b"%d\n" % i)
            i += 1
        command("QUIT", "221")
        print("done %d" % i)
    except (EOFError, OSError) as e:
        print("connection lost at message %d: %r" % (i, e))
    """#

    /// Message numbers acknowledged so far, in order.
    func acknowledged(_ path: String) -> [Int] {
        Harness.read(path).split(separator: "\n").compactMap { Int($0) }
    }

    /// Lines of a file, counted fast (polled in a tight loop).
    func lineCount(_ path: String) -> Int {
        guard let data = FileManager.default.contents(atPath: path) else { return 0 }
        return data.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
    }

    /// Directory entries other than . and .., counted with readdir (polled in a tight loop).
    static func entryCount(_ dir: String) -> Int {
        guard let d = opendir(dir) else { return 0 }
        defer { closedir(d) }
        var n = 0
        while let e = readdir(d) {
            let first = e.pointee.d_name.0
            if first != 46 { n += 1 }  // no "." names in new/
        }
        return n
    }

    /// Message files of alice by bulk number (from the Subject), checking each is whole.
    func bulkMessages(token: String, file: StaticString = #filePath, line: UInt = #line) -> [Int: [String]] {
        let folder = "\(fixture.root)/alice"
        var byNumber: [Int: [String]] = [:]
        for relative in MaildirCheck.messageFiles(folder) {
            let text = Harness.read("\(folder)/\(relative)")
            guard let subject = MaildirCheck.header("Subject", in: text), subject.hasPrefix("bulk "),
                  subject.hasSuffix(" \(token)"), let n = Int(subject.split(separator: " ")[1]) else {
                XCTFail("\(relative) is not a whole bulk message (no Subject): \(text.prefix(200))…\(text.suffix(100))", file: file, line: line)
                continue
            }
            XCTAssertTrue(text.hasSuffix("\n.dot-stuffed line of message \(n)\nend of message \(n)\n"),
                          "\(relative) (message \(n)) is not complete: …\(text.suffix(120))", file: file, line: line)
            byNumber[n, default: []].append(relative)
        }
        return byNumber
    }

    func testSIGKILLDuringThousandDeliveriesLosesNothingAcknowledged() throws {
        let total = 1000
        let killAfter = 300
        try startServer()
        let token = Self.token()
        let acks = "\(fixture.dir)/acks"
        let script = "\(fixture.dir)/lmtp_bulk.py"
        try Self.bulkClient.write(toFile: script, atomically: true, encoding: .utf8)
        let python = try Python.require()

        // Phase 1: the client runs; after `killAfter` acknowledgements the server gets SIGKILL.
        final class Outcome: @unchecked Sendable {
            var result: Harness.Result? = nil
            var error: Error? = nil
        }
        let outcome = Outcome()
        let done = DispatchSemaphore(value: 0)
        let address = tcpAddress
        DispatchQueue.global().async {
            do { outcome.result = try Harness.run(python, [script, address, "0", String(total), acks, token], timeout: 300) }
            catch { outcome.error = error }
            done.signal()
        }
        let deadline = Date().addingTimeInterval(180)
        while acknowledged(acks).count < killAfter {
            guard Date() < deadline, server.isRunning else {
                server.stop()
                _ = done.wait(timeout: .now() + 30)
                return XCTFail("only \(acknowledged(acks).count) acknowledged in time; client: \(String(describing: outcome.result)) \(String(describing: outcome.error))\n\(server.log.suffix(2000))")
            }
            usleep(2_000)
        }
        // Aim the kill at the hardest moment: the next message is already in new/ (renamed) but
        // not yet acknowledged. Watch new/ closely for a short while; if a message gets its 250
        // first, aim at the one after; if none is caught in time, kill anyway.
        let newDir = "\(fixture.root)/alice/new"
        let aimUntil = Date().addingTimeInterval(3)
        var aimed = false
        while Date() < aimUntil && server.isRunning {
            let ackedNow = lineCount(acks)
            if Self.entryCount(newDir) > ackedNow {
                server.signal(SIGKILL)
                aimed = true
                break
            }
        }
        let killedPid = server.pid
        server.signal(SIGKILL)
        print("LMTPServerTests: SIGKILL \(aimed ? "while a stored message was unacknowledged" : "at a random moment") after \(acknowledged(acks).count) acknowledgements")
        let killed = server.waitForExit(timeout: 10)
        XCTAssertEqual(killed?.reason, .uncaughtSignal, "server killed")
        XCTAssertEqual(done.wait(timeout: .now() + 60), .success, "client did not notice the kill")
        XCTAssertNil(outcome.error)
        let first = outcome.result
        XCTAssertEqual(first?.status, 0, "bulk client: \(first?.stdout ?? "") \(first?.stderr ?? "")")
        XCTAssertTrue(first?.stdout.contains("connection lost at message") == true, "client output: \(first?.stdout ?? "")")

        let acked = acknowledged(acks)
        XCTAssertEqual(acked, Array(0..<acked.count), "acknowledgements in order, one transaction at a time")
        XCTAssertGreaterThanOrEqual(acked.count, killAfter)
        XCTAssertLessThan(acked.count, total, "the kill came before the end")
        let inFlight = acked.count  // the message whose transaction the kill interrupted

        // Every acknowledged message is there exactly once, whole; nothing beyond the one in flight.
        let afterKill = bulkMessages(token: token)
        for n in acked where afterKill[n]?.count != 1 {
            XCTFail("acknowledged message \(n) stored \(afterKill[n]?.count ?? 0) times: \(afterKill[n] ?? [])")
        }
        XCTAssertLessThanOrEqual(afterKill[inFlight]?.count ?? 0, 1, "message in flight stored at most once")
        XCTAssertEqual(Set(afterKill.keys).subtracting(acked).subtracting([inFlight]), [], "messages never sent are stored")

        // Leftovers: only of the interrupted transaction, only in tmp/ or the internal spool.
        let ackedSet = Set(acked)
        for (dir, files) in [("\(fixture.root)/alice/tmp", Harness.files(under: "\(fixture.root)/alice/tmp")),
                             ("\(fixture.root)/.nestbox/spool", spoolFiles())] {
            for f in files {
                let text = Harness.read("\(dir)/\(f)")
                if let subject = text.range(of: #"Subject: bulk [0-9]+ "#, options: .regularExpression) {
                    let n = Int(text[subject].split(separator: " ")[2])!
                    XCTAssertFalse(ackedSet.contains(n), "\(dir)/\(f) holds acknowledged message \(n)")
                    XCTAssertEqual(n, inFlight, "\(dir)/\(f): leftover of a message other than the one in flight")
                }
            }
            XCTAssertLessThanOrEqual(files.count, 2, "\(dir): leftovers \(files)")
            for f in files {
                XCTAssertTrue(f.contains("P\(killedPid)Q"), "\(dir)/\(f): a leftover not made by the killed server (pid \(killedPid))")
            }
        }
        let spoolAfterKill = Set(spoolFiles())

        // dovecot-uidlist still parses and lists every acknowledged message.
        let uidlistPath = "\(fixture.root)/alice/dovecot-uidlist"
        let list = try UIDList.parse(Array(try Data(contentsOf: URL(fileURLWithPath: uidlistPath))))
        let uids = list.uidsByStem()
        XCTAssertEqual(Set(list.records.map { $0.uid }).count, list.records.count, "unique UIDs")
        for n in acked {
            guard let relative = afterKill[n]?.first else { continue }
            let stem = MaildirName(String(relative.dropFirst(4))).stem
            XCTAssertNotNil(uids[stem], "acknowledged message \(n) (\(stem)) has no UID")
        }

        // A uidlist lock the killed server held must say whose it is ("pid:host", as Dovecot
        // writes it), so that Dovecot and the restarted server see at once that it is stale. An
        // empty lock is only stale after 120 s: doveadm and every delivery to alice would hang.
        let lockPath = "\(uidlistPath).lock"
        if FileManager.default.fileExists(atPath: lockPath) {
            let content = Harness.read(lockPath)
            XCTAssertEqual(content, "\(killedPid):\(NestboxSupport.Host.name)",
                           "\(lockPath) left by the killed server (pid \(killedPid)) must hold \"pid:host\"; it holds \(Array(content.utf8)) (\(content.isEmpty ? "empty: killed between creating the lock and writing it; Dovecot waits 120 s for it to go stale" : "unexpected"))")
            if content.isEmpty { unlink(lockPath) }  // keep the rest of the test bounded
        }

        // Dovecot reads the mailbox as the kill left it.
        let dove = try Dovecot(mailRoot: "\(fixture.root)/alice", user: "alice")
        let fetched = try dove.fetch("uid guid", mailbox: "INBOX")
        XCTAssertEqual(fetched.count, afterKill.values.reduce(0) { $0 + $1.count }, "doveadm sees every file")
        XCTAssertEqual(Set(fetched.compactMap { $0["uid"] }).count, fetched.count, "doveadm: unique UIDs")
        if let relative = afterKill[0]?.first, let uid = uids[MaildirName(String(relative.dropFirst(4))).stem] {
            let one = try dove.doveadm(["fetch", "uid hdr", "mailbox", "INBOX", "uid", String(uid)])
            XCTAssertTrue(one.stdout.contains("uid: \(uid)") && one.stdout.contains("Subject: bulk 0 \(token)"),
                          "doveadm fetch uid \(uid): \(one.stdout)")
        }
        try Harness.chownTreeToMailOwner(fixture.root)  // doveadm ran as root; keep everything vmail's

        // Phase 2: restart; send what was not acknowledged (the interrupted one again).
        try server.start()
        let second = try Harness.run(python, [script, tcpAddress, String(inFlight), String(total), acks, token], timeout: 300)
        XCTAssertEqual(second.status, 0, "second run: \(second.stdout) \(second.stderr)")
        XCTAssertTrue(second.stdout.contains("done \(total)"), "second run: \(second.stdout)\n\(server.log.suffix(2000))")
        XCTAssertEqual(acknowledged(acks), Array(0..<total), "every message acknowledged once in the end")

        let final = bulkMessages(token: token)
        let wrong = (0..<total).filter { final[$0]?.count != 1 }
        XCTAssertEqual(wrong, [], "messages not stored exactly once: \(wrong.map { "\($0): \(final[$0] ?? [])" })\nlog around the restart:\n\(server.log.components(separatedBy: "\n").filter { $0.contains("bulk-\(inFlight)-") || $0.contains("listening") }.joined(separator: "\n"))")
        let list2 = try UIDList.parse(Array(try Data(contentsOf: URL(fileURLWithPath: uidlistPath))))
        XCTAssertEqual(Set(list2.records.map { $0.uid }).count, list2.records.count)
        let all = try dove.fetch("uid guid", mailbox: "INBOX")
        XCTAssertEqual(all.count, total, "doveadm counts every message once")
        XCTAssertEqual(Set(spoolFiles()).subtracting(spoolAfterKill), [], "no spool file left by the second run")
    }

    // MARK: - 5. bad clients, limits, shutdown

    func testSilentClientIsDisconnectedAfterIdleTimeout() throws {
        try startServer(["lmtp_idle_timeout": "2"])
        let c = try LMTPConnection(port: port)
        XCTAssertEqual(try c.readLine(), "220 \(Self.serverName) LMTP Nestbox ready")
        let start = Date()
        let line = try c.readLine(timeout: 15)
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertEqual(line?.hasPrefix("421 4.4.2 "), true, "after \(elapsed) s: \(line ?? "EOF")")
        XCTAssertGreaterThanOrEqual(elapsed, 1.5, "closed before the idle timeout")
        XCTAssertLessThan(elapsed, 8, "idle timeout of 2 s not enforced in time")
        XCTAssertTrue(c.waitForClose(timeout: 5), "connection closed after the 421")
        // Same over the socket, in the middle of a transaction.
        let u = try LMTPConnection(unixPath: socketPath)
        _ = try u.readReply()
        XCTAssertTrue(try u.command("LHLO idle.example.org").hasPrefix("250-"))
        XCTAssertEqual(try u.command("MAIL FROM:<\(Self.sender)>"), "250 2.1.0 Ok")
        XCTAssertEqual(try u.readLine(timeout: 15)?.hasPrefix("421 4.4.2 "), true, u.transcript)
        XCTAssertTrue(u.waitForClose(timeout: 5))
        XCTAssertEqual(spoolFiles(), [])
    }

    func testClientVanishingInTheMiddleOfDataStoresNothing() throws {
        try startServer()
        let token = Self.token()
        for useSocket in [false, true] {
            let c = useSocket ? try LMTPConnection(unixPath: socketPath) : try LMTPConnection(port: port)
            _ = try c.readReply()
            XCTAssertTrue(try c.command("LHLO gone.example.org").hasPrefix("250-"))
            XCTAssertEqual(try c.command("MAIL FROM:<\(Self.sender)>"), "250 2.1.0 Ok")
            XCTAssertEqual(try c.command("RCPT TO:<alice@example.test>"), "250 2.1.5 Ok")
            XCTAssertTrue(try c.command("DATA").hasPrefix("354 "))
            var half = "Subject: half \(token)\r\nMessage-ID: <half-\(useSocket)-\(token)@example.org>\r\n\r\n"
            for i in 0..<2000 { half += "line \(i) \(token) of a message that never ends\r\n" }
            try c.send(half + "no end of line, no dot")
            usleep(300_000)
            c.close()
        }
        let deadline = Date().addingTimeInterval(10)
        while server.log.components(separatedBy: "lost connection").count - 1 < 2 && Date() < deadline { usleep(50_000) }
        XCTAssertEqual(server.log.components(separatedBy: "in the middle of a transaction; nothing stored").count - 1, 2, server.log)
        // Nothing of it anywhere: not in alice's folder (new, cur, tmp), not in the spool.
        while !spoolFiles().isEmpty && Date() < deadline { usleep(50_000) }
        XCTAssertEqual(spoolFiles(), [], "spool file of the broken transaction removed")
        let holding = Harness.files(under: fixture.root).filter { Harness.read("\(fixture.root)/\($0)").contains(token) }
        XCTAssertEqual(holding, [], "part of the unfinished message was stored")
        XCTAssertEqual(newMessages("alice"), [])
        XCTAssertEqual(Harness.files(under: "\(fixture.root)/alice/tmp"), [])
        // The server is fine and delivers the next one.
        let c = try LMTPConnection(port: port)
        _ = try c.readReply()
        _ = try c.command("LHLO again.example.org")
        _ = try c.command("MAIL FROM:<\(Self.sender)>")
        XCTAssertEqual(try c.command("RCPT TO:<alice@example.test>"), "250 2.1.5 Ok")
        _ = try c.command("DATA")
        XCTAssertEqual(try c.command("Subject: whole \(token)\r\n\r\nwhole\r\n."), "250 2.0.0 Ok: delivered")
        XCTAssertEqual(newMessages("alice").count, 1)
    }

    /// One transaction up to DATA, and every reply line from the greeting to the 354.
    static let commandsUpToData = ["LHLO x", "MAIL FROM:<\(sender)>", "RCPT TO:<alice@example.test>", "DATA"]
    static let repliesUpToData = [
        "220 \(serverName) LMTP Nestbox ready",
        "250-\(serverName)", "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-8BITMIME", "250-SIZE",
        "250-CHUNKING", "250-SMTPUTF8", "250 IGNOREQUOTA",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 Start mail input; end with <CRLF>.<CRLF>",
    ]

    /// Sends `commandsUpToData` and then `rest` in one write, half-closes (SHUT_WR) and reads
    /// every line until the server closes. Throws if it does not close in time.
    func halfClosedSession(_ useSocket: Bool, then rest: [String]) throws -> [String] {
        let c = useSocket ? try LMTPConnection(unixPath: socketPath) : try LMTPConnection(port: port)
        try c.send((Self.commandsUpToData + rest).map { $0 + "\r\n" }.joined())
        XCTAssertEqual(shutdown(c.fd, Int32(SHUT_WR)), 0, "shutdown: errno \(errno)")
        var lines: [String] = []
        let deadline = Date().addingTimeInterval(20)
        while let line = try c.readLine(timeout: max(0.01, deadline.timeIntervalSinceNow)) { lines.append(line) }
        return lines
    }

    func testHalfClosedClientGetsEveryReplyThenTheServerCloses() throws {
        try startServer()
        for useSocket in [false, true] {
            let token = Self.token()
            let lines = try halfClosedSession(useSocket, then: [
                "Subject: half-closed \(token)", "Message-ID: <\(token)@example.org>", "", "all of it", ".", "QUIT",
            ])
            XCTAssertEqual(lines, Self.repliesUpToData + ["250 2.0.0 Ok: delivered", "221 2.0.0 Bye"],
                           "\(useSocket ? "unix socket" : "tcp"):\n\(server.log)")
            if let stored = single("alice", containing: token) {
                XCTAssertTrue(stored.hasSuffix("\n\nall of it\n"), stored)
            }
        }
        XCTAssertEqual(spoolFiles(), [])
    }

    func testHalfClosedClientInTheMiddleOfDataGetsTheEarlierRepliesAndNothingIsStored() throws {
        try startServer()
        let token = Self.token()
        for useSocket in [false, true] {
            let lines = try halfClosedSession(useSocket, then: [
                "Subject: cut \(token)", "Message-ID: <cut-\(useSocket)-\(token)@example.org>", "", "half a message",
            ])
            XCTAssertEqual(lines, Self.repliesUpToData, "\(useSocket ? "unix socket" : "tcp"):\n\(server.log)")
        }
        let deadline = Date().addingTimeInterval(10)
        while server.log.components(separatedBy: "nothing stored").count - 1 < 2 && Date() < deadline { usleep(50_000) }
        XCTAssertEqual(server.log.components(separatedBy: "in the middle of a transaction; nothing stored").count - 1, 2, server.log)
        while !spoolFiles().isEmpty && Date() < deadline { usleep(50_000) }
        XCTAssertEqual(spoolFiles(), [], "spool file of the cut transaction removed")
        XCTAssertEqual(newMessages("alice"), [])
        XCTAssertEqual(Harness.files(under: "\(fixture.root)/alice/tmp"), [])
    }

    func testConnectionsBeyondTheLimitGet421() throws {
        try startServer(["lmtp_max_connections": "3"])
        waitForQuietServer()
        var open: [LMTPConnection] = []
        for i in 0..<3 {
            let c = i == 1 ? try LMTPConnection(unixPath: socketPath) : try LMTPConnection(port: port)
            XCTAssertEqual(try c.readLine(), "220 \(Self.serverName) LMTP Nestbox ready", "connection \(i + 1)")
            open.append(c)
        }
        for extra in [try LMTPConnection(port: port), try LMTPConnection(unixPath: socketPath)] {
            let line = try extra.readLine()
            XCTAssertEqual(line?.hasPrefix("421 4.3.2 "), true, "4th connection: \(line ?? "EOF")")
            XCTAssertTrue(extra.waitForClose(timeout: 5), "refused connection closed")
        }
        // The three admitted sessions still work.
        for c in open { XCTAssertTrue(try c.command("LHLO ok.example.org").hasPrefix("250-")) }
        // One leaves; a new one is admitted (bounded wait: the count drops asynchronously).
        XCTAssertEqual(try open[0].command("QUIT"), "221 2.0.0 Bye")
        XCTAssertTrue(open[0].waitForClose(timeout: 5))
        open[0].close()
        let deadline = Date().addingTimeInterval(10)
        var greeting: String? = nil
        while Date() < deadline {
            let c = try LMTPConnection(port: port)
            greeting = try c.readLine()
            if greeting?.hasPrefix("220 ") == true { break }
            usleep(50_000)
        }
        XCTAssertEqual(greeting, "220 \(Self.serverName) LMTP Nestbox ready", "a slot is free again")
        XCTAssertTrue(server.log.contains("refused connection"), server.log)
    }

    /// SIGTERM while a client is in the middle of DATA: listeners close at once, an idle
    /// session is told 421, the transaction completes when the client finishes it (250), then
    /// the server exits 0.
    func runSIGTERMDuringTransaction(_ extra: [String: String]) throws {
        try startServer(extra)
        let token = Self.token()
        let busy = try LMTPConnection(port: port)
        _ = try busy.readReply()
        _ = try busy.command("LHLO busy.example.org")
        XCTAssertEqual(try busy.command("MAIL FROM:<\(Self.sender)>"), "250 2.1.0 Ok")
        XCTAssertEqual(try busy.command("RCPT TO:<alice@example.test>"), "250 2.1.5 Ok")
        XCTAssertTrue(try busy.command("DATA").hasPrefix("354 "))
        try busy.send("Subject: shutdown \(token)\r\nMessage-ID: <\(token)@example.org>\r\n\r\nfirst half\r\n")
        let idle = try LMTPConnection(unixPath: socketPath)
        _ = try idle.readReply()
        XCTAssertTrue(try idle.command("LHLO idle.example.org").hasPrefix("250-"))
        usleep(200_000)

        server.signal(SIGTERM)
        // New connections are refused (bounded wait), while the server is still running.
        let deadline = Date().addingTimeInterval(5)
        while (Net.canConnect(port: port) || Net.canConnect(unixPath: socketPath)) && Date() < deadline { usleep(20_000) }
        XCTAssertFalse(Net.canConnect(port: port), "TCP listener still accepts 5 s after SIGTERM\n\(server.log)")
        XCTAssertFalse(Net.canConnect(unixPath: socketPath), "UNIX listener still accepts 5 s after SIGTERM")
        XCTAssertTrue(server.isRunning, "the server must wait for the transaction in flight")
        let idleLine: String? = (try? idle.readLine(timeout: 5)) ?? nil
        XCTAssertEqual(idleLine?.hasPrefix("421 4.3.2 "), true, "idle session at shutdown: \(idleLine ?? "EOF or nothing")")

        // The client finishes its message: delivered, then the session ends.
        try busy.send("second half\r\n.\r\n")
        XCTAssertEqual(try busy.readReply(), "250 2.0.0 Ok: delivered", busy.transcript)
        let after: String? = (try? busy.readLine(timeout: 5)) ?? nil
        XCTAssertTrue(after == nil || after?.hasPrefix("421 4.3.2 ") == true, "after the transaction: \(after ?? "EOF")")
        XCTAssertTrue(busy.waitForClose(timeout: 5), "session closed after its transaction")

        let exit = server.waitForExit(timeout: 15)
        XCTAssertNotNil(exit, "server still running 15 s after SIGTERM with no session left\n\(server.log)")
        XCTAssertEqual(exit?.reason, .exit)
        XCTAssertEqual(exit?.status, 0, server.log)
        if let stored = single("alice", containing: token) {
            XCTAssertTrue(stored.hasSuffix("\n\nfirst half\nsecond half\n"), stored)
        }
        XCTAssertEqual(spoolFiles(), [])
        XCTAssertTrue(server.log.contains("stopped"), server.log)
    }

    /// As shipped: duplicatesuppression is on by default.
    func testSIGTERMFinishesTransactionInFlightThenExitsZero() throws {
        try runSIGTERMDuringTransaction([:])
    }

    func testSIGTERMWithDuplicateSuppressionOff() throws {
        try runSIGTERMDuringTransaction(["duplicatesuppression": "no"])
    }

    // MARK: - 6. LMTP on standard input/output

    /// The whole session as one input; returns the reply lines and the result.
    func stdioTranscript(token: String) -> String {
        [
            "LHLO stdio.example.org",
            "MAIL FROM:<\(Self.sender)> BODY=8BITMIME",
            "RCPT TO:<alice@example.test>",
            "RCPT TO:<nobody@example.test>",
            "DATA",
            "From: Sender <\(Self.sender)>",
            "Subject: stdio \(token)",
            "Message-ID: <\(token)@example.org>",
            "",
            "first line",
            "..a line that starts with a dot",
            "last line",
            ".",
            "NOOP",
            "QUIT",
        ].map { $0 + "\r\n" }.joined()
    }

    func assertStdioSession(_ arguments: [String], program: String) throws {
        fixture = try DeliverFixture("lmtpstdio", settings: ["servername": Self.serverName])
        try fixture.makeUser("alice")
        let token = Self.token()
        let r = try Harness.run(Harness.binary(program), ["-C", fixture.configPath, "-L"] + arguments,
                                input: Data(stdioTranscript(token: token).utf8), timeout: 60)
        XCTAssertEqual(r.status, 0, "\(program) \(arguments): \(r.stdout)\n\(r.stderr)")
        XCTAssertTrue(r.stdout.hasSuffix("\r\n"), "replies end with CRLF")
        let lines = r.stdout.components(separatedBy: "\r\n").dropLast()
        XCTAssertEqual(Array(lines), [
            "220 \(Self.serverName) LMTP Nestbox ready",
            "250-\(Self.serverName)", "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-8BITMIME", "250-SIZE",
            "250-CHUNKING", "250-SMTPUTF8", "250 IGNOREQUOTA",
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "550 5.1.1 User unknown",
            "354 Start mail input; end with <CRLF>.<CRLF>",
            "250 2.0.0 Ok: delivered",
            "250 2.0.0 Ok",
            "221 2.0.0 Bye",
        ], "\(program) \(arguments) stdout:\n\(r.stdout)\nstderr:\n\(r.stderr)")
        let ms = try fixture.messages("alice")
        XCTAssertEqual(ms.count, 1)
        if let m = ms.first {
            let text = fixture.body(m)
            XCTAssertTrue(text.hasPrefix("Return-Path: <\(Self.sender)>\nReceived: from stdio.example.org (stdin)\n\tby \(Self.serverName) (Nestbox) with LMTP id "), text)
            XCTAssertTrue(text.hasSuffix("\nSubject: stdio \(token)\nMessage-ID: <\(token)@example.org>\n\nfirst line\n.a line that starts with a dot\nlast line\n"), text)
            XCTAssertEqual(m.uid, 1)
            var st = stat()
            XCTAssertEqual(lstat(m.path, &st), 0)
            XCTAssertEqual(st.st_uid, try XCTUnwrap(getpwnam(Harness.mailOwner)).pointee.pw_uid, "stored as the mail owner")
        }
        XCTAssertTrue(r.stderr.contains("to=<alice@example.test> mailbox=alice uid=1"), r.stderr)
        XCTAssertTrue(r.stderr.contains("to=<nobody@example.test> status=bounced (5.1.1"), r.stderr)
        XCTAssertEqual(Harness.files(under: fixture.store.spoolDirectory), [])
    }

    func testDeliverDashLSpeaksLMTPOnStdio() throws {
        try assertStdioSession(["-l"], program: "nestbox-deliver")
    }

    func testLmtpdDashISpeaksLMTPOnStdio() throws {
        try assertStdioSession(["-i"], program: "nestbox-lmtpd")
    }

    /// End of input in the middle of DATA: nothing stored, exit 0, no reply to the data.
    func testStdioEndOfInputInsideDataStoresNothing() throws {
        fixture = try DeliverFixture("lmtpstdio", settings: ["servername": Self.serverName])
        try fixture.makeUser("alice")
        let input = "LHLO x\r\nMAIL FROM:<\(Self.sender)>\r\nRCPT TO:<alice>\r\nDATA\r\nSubject: cut\r\n\r\nhalf a message\r\n"
        for program in ["nestbox-deliver", "nestbox-lmtpd"] {
            let r = try Harness.run(Harness.binary(program), ["-C", fixture.configPath, "-L", program == "nestbox-deliver" ? "-l" : "-i"],
                                    input: Data(input.utf8), timeout: 60)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.hasSuffix("354 Start mail input; end with <CRLF>.<CRLF>\r\n"), r.stdout)
            XCTAssertTrue(r.stderr.contains("nothing stored"), r.stderr)
        }
        XCTAssertEqual(try fixture.messages("alice").count, 0)
        XCTAssertEqual(Harness.files(under: fixture.store.spoolDirectory), [])
    }
}
