#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NestboxStore
import XCTest

/// Postfix -> lmtp(8) -> UNIX socket -> nestbox-lmtpd, end to end.
///
/// A private Postfix instance as in PostfixPipeTests (own config directory, queue, data
/// directory and maillog file under a temporary directory; smtpd on a free loopback port;
/// outbound mail discarded), whose main.cf takes its delivery settings from the sample
/// postfix/main.cf.lmtp with the socket path /run/nestbox/lmtp replaced by the test's socket,
/// so the sample is what is tested. nestbox-lmtpd runs from the build as root, binds its socket
/// (0660, vmail, group postfix via lmtpsocket_group) and becomes vmail. Mail is submitted with
/// swaks over SMTP and read back with doveadm. Needs root (as in CI), Postfix, swaks, doveadm.
final class PostfixLMTPTests: XCTestCase {
    static let sender = "s@example.org"
    static let localDomain = "example.test"
    static let virtualDomain = "virt.test"
    static let sampleSocket = "/run/nestbox/lmtp"
    static let deliveryTimeout: TimeInterval = 30

    var base = ""
    var configDir = ""
    var queueDir = ""
    var mailRoot = ""
    var maillog = ""
    var socketPath = ""
    var nestboxConf = ""
    var port = 0
    var postfixStarted = false
    var server: LMTPDaemon!

    // MARK: - setup and teardown

    override func setUpWithError() throws {
        try super.setUpWithError()
        continueAfterFailure = false
        guard Harness.isRoot else {
            XCTFail("PostfixLMTPTests start a Postfix instance and nestbox-lmtpd and must run as root (as in CI)")
            throw LMTPTestError("not root")
        }
        try Harness.ensureMailOwner()
        for tool in ["/usr/sbin/postfix", "/usr/sbin/postconf", "/usr/bin/swaks", "/usr/bin/doveadm"] {
            guard FileManager.default.isExecutableFile(atPath: tool) else {
                XCTFail("\(tool) is missing: install postfix, swaks and dovecot-core (.ci/run does)")
                throw LMTPTestError("missing \(tool)")
            }
        }
        guard getgrnam("postfix") != nil else {
            XCTFail("no group postfix (is Postfix installed?)")
            throw LMTPTestError("no postfix group")
        }
        guard FileManager.default.isExecutableFile(atPath: Harness.binary("nestbox-lmtpd")) else {
            XCTFail("built program not found: \(Harness.binary("nestbox-lmtpd"))")
            throw LMTPTestError("no binary")
        }

        base = try Harness.makeTempDir("nbpflmtp")
        chown(base, 0, 0)
        chmod(base, 0o755)
        configDir = "\(base)/etc"
        queueDir = "\(base)/spool"
        mailRoot = "\(base)/mail"
        maillog = "\(base)/maillog"
        socketPath = "\(base)/run/lmtp"
        for dir in [configDir, queueDir, mailRoot] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false,
                                                    attributes: [.posixPermissions: 0o755])
        }
        chmod(mailRoot, 0o700)
        try Harness.chownToMailOwner(mailRoot)

        nestboxConf = try Harness.writeConfig(in: base, [
            "partition-default": mailRoot,
            "mail_owner": Harness.mailOwner,
            "servername": "mx.\(Self.localDomain)",
            "virtdomains": "userid",
            "defaultdomain": Self.localDomain,
            "autocreate_post": "no",
            "autocreate_quota": "-1",
            "lmtpsocket": socketPath,
            "lmtpsocket_group": "postfix",
            "lmtp_listen": "",
        ])
        server = LMTPDaemon(configPath: nestboxConf, logPath: "\(base)/lmtpd.log", socketPath: socketPath, port: nil)
        try server.start()

        port = try Net.freeLoopbackPort()
        try writeMainCf()
        try writeMasterCf()
        try startPostfix()
    }

    override func tearDown() {
        stopPostfix()
        server?.stop()
        server = nil
        if !base.isEmpty { Harness.removeTree(base) }
        super.tearDown()
    }

    // MARK: - the cases

    /// The socket Postfix writes to: 0660, owned by vmail, group postfix.
    func testSocketIsWritableByPostfixOnly() throws {
        var st = stat()
        XCTAssertEqual(lstat(socketPath, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFSOCK)
        XCTAssertEqual(st.st_mode & 0o7777, 0o660, "socket mode")
        XCTAssertEqual(st.st_uid, try XCTUnwrap(getpwnam(Harness.mailOwner)).pointee.pw_uid, "socket owner")
        XCTAssertEqual(st.st_gid, try XCTUnwrap(getgrnam("postfix")).pointee.gr_gid, "socket group (lmtpsocket_group: postfix)")
    }

    /// Mail to alice goes through local(8) -> mailbox_transport = lmtp:unix:<socket> and
    /// arrives; doveadm shows it with the UID nestbox-lmtpd logged, and the same body.
    func testKnownUserReceivesMessageThroughLMTP() throws {
        try makeMaildir("alice")
        let token = PostfixPipeTests.token()
        let body = "Hello Alice, \(token).\nSecond line.\n.a line that starts with a dot\n\nLast line."
        let rcpt = "alice@\(Self.localDomain)"
        let qid = try send(to: rcpt, subject: "lmtp \(token)", body: body)
        let line = try requireStatus(qid: qid, recipient: rcpt, "sent", dsn: "2.0.0")
        XCTAssertTrue(line.contains("postfix/lmtp["), "delivered by Postfix's lmtp client: \(line)")
        XCTAssertTrue(line.contains(socketPath), "relay is the test's socket: \(line)")
        XCTAssertTrue(line.contains("250 2.0.0 Ok: delivered"), line)

        let found = try waitForMessage(in: "\(mailRoot)/alice/new", containing: token)
        XCTAssertEqual(filesContaining(token, under: mailRoot), ["alice/new/\(found)"], "stored exactly once")
        let text = Harness.read("\(mailRoot)/alice/new/\(found)")
        XCTAssertTrue(text.hasPrefix("Return-Path: <\(Self.sender)>\nReceived: from mx.\(Self.localDomain) (unix socket)\n"),
                      String(text.prefix(400)))
        XCTAssertTrue(text.contains("(Nestbox) with LMTP id "), text)
        XCTAssertFalse(text.contains("\r"))
        let storedBody = String(text[text.range(of: "\n\n")!.upperBound...])
        XCTAssertEqual(storedBody.trimmingCharacters(in: .newlines), body, "body changed on the way")

        // The UID nestbox-lmtpd logged, the uidlist's and Dovecot's are one.
        let log = server.log
        guard let m = log.range(of: #"to=<alice@example\.test> mailbox=alice uid=[0-9]+"#, options: .regularExpression) else {
            return XCTFail("no delivery line in the nestbox-lmtpd log:\n\(log)")
        }
        let uid = String(log[m].split(separator: "=").last!)
        let list = try UIDList.parse(Array(try Data(contentsOf: URL(fileURLWithPath: "\(mailRoot)/alice/dovecot-uidlist"))))
        XCTAssertEqual(list.uidsByStem()[MaildirName(found).stem].map(String.init), uid)
        let dove = try Dovecot(mailRoot: "\(mailRoot)/alice", user: "alice")
        let fetched = try dove.fetch("uid body", mailbox: "INBOX")
        XCTAssertEqual(fetched.count, 1)
        XCTAssertEqual(fetched.first?["uid"], uid, "doveadm fetch uid")
        XCTAssertEqual(fetched.first?["body"]?.trimmingCharacters(in: .newlines), body, "doveadm fetch body")
    }

    /// An unknown user is refused at RCPT (550 5.1.1): Postfix bounces.
    func testUnknownUserBounces() throws {
        try makeMaildir("alice")
        let rcpt = "nobody-here@\(Self.localDomain)"
        let qid = try send(to: rcpt, subject: "to nobody", body: "Nobody reads this. \(PostfixPipeTests.token())")
        let line = try requireStatus(qid: qid, recipient: rcpt, "bounced", dsn: "5.1.1")
        XCTAssertTrue(line.contains("550 5.1.1 User unknown"), line)
        XCTAssertTrue(line.contains("RCPT TO"), "refused at RCPT: \(line)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(mailRoot)/nobody-here"))
        XCTAssertTrue(server.log.contains("to=<\(rcpt)> status=bounced (5.1.1 User unknown"), server.log)
    }

    /// recipient_delimiter = +: alice+Work@ reaches nestbox-lmtpd whole and lands in .Work.
    func testExtensionDeliversIntoFolderWithPostRight() throws {
        try makeMaildir("alice")
        let work = "\(mailRoot)/alice/.Work"
        try makeDir(work)
        for sub in ["cur", "new", "tmp"] { try makeDir("\(work)/\(sub)") }
        for (name, text) in [("maildirfolder", ""), ("dovecot-acl", "anyone p\n")] {
            try text.write(toFile: "\(work)/\(name)", atomically: false, encoding: .utf8)
            chmod("\(work)/\(name)", 0o600)
            try Harness.chownToMailOwner("\(work)/\(name)")
        }
        let token = PostfixPipeTests.token()
        let rcpt = "alice+Work@\(Self.localDomain)"
        let qid = try send(to: rcpt, subject: "work \(token)", body: "For the Work folder. \(token)")
        try requireStatus(qid: qid, recipient: rcpt, "sent", dsn: "2.0.0")
        let found = try waitForMessage(in: "\(work)/new", containing: token)
        XCTAssertEqual(filesContaining(token, under: mailRoot), ["alice/.Work/new/\(found)"], server.log)
    }

    /// The sample's virtual_transport line: user@virtual-domain lands in the domain's area.
    func testVirtualDomainThroughVirtualTransport() throws {
        try makeMaildir("\(Self.virtualDomain)/dave")
        let token = PostfixPipeTests.token()
        let rcpt = "dave@\(Self.virtualDomain)"
        let qid = try send(to: rcpt, subject: "virtual \(token)", body: "For dave. \(token)")
        let line = try requireStatus(qid: qid, recipient: rcpt, "sent", dsn: "2.0.0")
        XCTAssertTrue(line.contains("postfix/lmtp["), line)
        let found = try waitForMessage(in: "\(mailRoot)/\(Self.virtualDomain)/dave/new", containing: token)
        XCTAssertEqual(filesContaining(token, under: mailRoot), ["\(Self.virtualDomain)/dave/new/\(found)"])
    }

    /// Several recipients of one message in one LMTP transaction: each its own outcome (alice
    /// and bob delivered, carol over quota deferred 4.2.2 at RCPT).
    func testSeveralVirtualRecipientsEachTheirOwnOutcome() throws {
        for u in ["alice", "bob"] { try makeMaildir("\(Self.virtualDomain)/\(u)") }
        try makeMaildir("\(Self.virtualDomain)/carol", maildirsize: "1000S\n5000 1\n")
        let token = PostfixPipeTests.token()
        let rcpts = ["alice", "bob", "carol"].map { "\($0)@\(Self.virtualDomain)" }
        let qid = try send(to: rcpts.joined(separator: ","), subject: "three \(token)", body: "For three. \(token)")
        try requireStatus(qid: qid, recipient: rcpts[0], "sent", dsn: "2.0.0")
        try requireStatus(qid: qid, recipient: rcpts[1], "sent", dsn: "2.0.0")
        let carol = try requireStatus(qid: qid, recipient: rcpts[2], "deferred", dsn: "4.2.2")
        XCTAssertTrue(carol.contains("452 4.2.2 Mailbox full"), carol)
        XCTAssertEqual(filesContaining(token, under: mailRoot).sorted().map { $0.components(separatedBy: "/new/")[0] },
                       ["\(Self.virtualDomain)/alice", "\(Self.virtualDomain)/bob"])
        // One LMTP transaction: the message was spooled once for both (one transaction id).
        let ids = server.log.split(separator: "\n").filter { $0.contains("status=sent (delivered)") && $0.contains(Self.virtualDomain) }
            .compactMap { $0.split(separator: " ").dropFirst().first }
        XCTAssertEqual(ids.count, 2)
        XCTAssertEqual(Set(ids).count, 1, "one LMTP transaction for both: \(ids)")
    }

    // MARK: - Postfix configuration from the sample

    func writeMainCf() throws {
        let samplePath = "\(Harness.packageRoot)/postfix/main.cf.lmtp"
        let sample = try PostfixPipeTests.sampleSettings(samplePath)
        let transport = "lmtp:unix:\(Self.sampleSocket)"
        XCTAssertTrue(sample.contains { $0 == ("mailbox_transport", transport) }, "\(samplePath): mailbox_transport = \(transport)")
        XCTAssertTrue(sample.contains { $0 == ("virtual_transport", transport) }, "\(samplePath): virtual_transport = \(transport)")
        XCTAssertTrue(sample.contains { $0.0 == "lmtp_destination_recipient_limit" }, "\(samplePath): lmtp_destination_recipient_limit")
        XCTAssertTrue(Harness.read(samplePath).contains("lmtpsocket_group: postfix"), "\(samplePath): socket permission notes")
        // The sample with the test's socket.
        let adapted = sample.map { ($0.0, $0.1.replacingOccurrences(of: Self.sampleSocket, with: socketPath)) }

        let instance: [(String, String)] = [
            ("compatibility_level", "3.6"),
            ("queue_directory", queueDir),
            ("data_directory", "\(base)/data"),
            ("maillog_file", maillog),
            ("maillog_file_prefixes", base),
            ("inet_interfaces", "127.0.0.1"),
            ("inet_protocols", "ipv4"),
            ("myhostname", "mx.\(Self.localDomain)"),
            ("mydomain", Self.localDomain),
            ("myorigin", Self.localDomain),
            ("mydestination", Self.localDomain),
            ("mynetworks", "127.0.0.0/8"),
            ("virtual_mailbox_domains", Self.virtualDomain),
            ("relay_domains", ""),
            ("smtp_host_lookup", "native"),
            ("smtpd_peername_lookup", "no"),
            ("default_transport", "discard:outbound mail is disabled in this test instance"),
            ("relay_transport", "discard:outbound mail is disabled in this test instance"),
            ("alias_maps", ""),
            ("alias_database", ""),
            ("biff", "no"),
            ("smtpd_banner", "$myhostname ESMTP nestbox lmtp test"),
        ]
        var order: [String] = []
        var values: [String: String] = [:]
        for (k, v) in adapted + instance {
            if values[k] == nil { order.append(k) }
            values[k] = v
        }
        var text = "# written by PostfixLMTPTests from postfix/main.cf.lmtp\n"
        for k in order { text += "\(k) = \(values[k]!)\n" }
        try text.write(toFile: "\(configDir)/main.cf", atomically: true, encoding: .utf8)
        chmod("\(configDir)/main.cf", 0o644)
    }

    func writeMasterCf() throws {
        let text = """
        # written by PostfixLMTPTests: a stock master.cf (lmtp included), smtpd on loopback
        127.0.0.1:\(port) inet n  -       n       -       -       smtpd
        pickup    unix  n       -       n       60      1       pickup
        cleanup   unix  n       -       n       -       0       cleanup
        qmgr      unix  n       -       n       300     1       qmgr
        rewrite   unix  -       -       n       -       -       trivial-rewrite
        bounce    unix  -       -       n       -       0       bounce
        defer     unix  -       -       n       -       0       bounce
        trace     unix  -       -       n       -       0       bounce
        verify    unix  -       -       n       -       1       verify
        flush     unix  n       -       n       1000?   0       flush
        proxymap  unix  -       -       n       -       -       proxymap
        smtp      unix  -       -       n       -       -       smtp
        lmtp      unix  -       -       n       -       -       lmtp
        showq     unix  n       -       n       -       -       showq
        error     unix  -       -       n       -       -       error
        retry     unix  -       -       n       -       -       error
        discard   unix  -       -       n       -       -       discard
        local     unix  -       n       n       -       -       local
        virtual   unix  -       n       n       -       -       virtual
        anvil     unix  -       -       n       -       1       anvil
        scache    unix  -       -       n       -       1       scache
        postlog   unix-dgram n  -       n       -       1       postlogd

        """
        try text.write(toFile: "\(configDir)/master.cf", atomically: true, encoding: .utf8)
        chmod("\(configDir)/master.cf", 0o644)
    }

    // MARK: - running Postfix (as PostfixPipeTests)

    func startPostfix() throws {
        let check = try Harness.sh("/usr/sbin/postconf -c \(configDir) -n >\(base)/postconf.out 2>&1", timeout: 30)
        XCTAssertEqual(check.status, 0, "postconf: \(Harness.read("\(base)/postconf.out"))")
        let warnings = Harness.read("\(base)/postconf.out").split(separator: "\n").filter { $0.contains("warning") }
        XCTAssertEqual(warnings, [], "postconf warnings about the sample's settings")
        let r = try Harness.sh("/usr/sbin/postfix -c \(configDir) start >\(base)/start.out 2>&1", timeout: 60)
        postfixStarted = true
        guard r.status == 0 else {
            XCTFail("postfix start failed (\(r.status)): \(Harness.read("\(base)/start.out"))\n\(logTail())")
            throw LMTPTestError("postfix start")
        }
        let deadline = Date().addingTimeInterval(20)
        while !Net.canConnect(port: port) {
            guard Date() < deadline else {
                XCTFail("smtpd does not listen on 127.0.0.1:\(port)\n\(Harness.read("\(base)/start.out"))\n\(logTail())")
                throw LMTPTestError("smtpd")
            }
            usleep(100_000)
        }
    }

    func stopPostfix() {
        guard postfixStarted else { return }
        postfixStarted = false
        let masterPid = PostfixPipeTests.pidFromFile("\(queueDir)/pid/master.pid")
        _ = try? Harness.sh("/usr/sbin/postfix -c \(configDir) stop >>\(base)/stop.out 2>&1", timeout: 30)
        if let pid = masterPid, !PostfixPipeTests.waitForExit(pid, seconds: 10) {
            _ = try? Harness.sh("/usr/sbin/postfix -c \(configDir) abort >>\(base)/stop.out 2>&1", timeout: 30)
            if !PostfixPipeTests.waitForExit(pid, seconds: 5) {
                kill(pid, SIGKILL)
                _ = PostfixPipeTests.waitForExit(pid, seconds: 5)
            }
        }
        var leftovers = PostfixPipeTests.instanceProcesses(configDir: configDir)
        let deadline = Date().addingTimeInterval(5)
        while !leftovers.isEmpty && Date() < deadline {
            usleep(100_000)
            leftovers = PostfixPipeTests.instanceProcesses(configDir: configDir)
        }
        for pid in leftovers { kill(pid, SIGKILL) }
    }

    // MARK: - sending and waiting

    func send(to rcpt: String, subject: String, body: String) throws -> String {
        let r = try Harness.run("/usr/bin/swaks", [
            "--server", "127.0.0.1:\(port)", "--helo", "client.example.org", "--timeout", "20",
            "--from", Self.sender, "--to", rcpt,
            "--header", "Subject: \(subject)", "--body", body,
        ], timeout: 60)
        let output = r.stdout + r.stderr
        guard r.status == 0,
              let m = output.range(of: #"queued as [0-9A-Za-z]+"#, options: .regularExpression) else {
            XCTFail("swaks to \(rcpt) failed (\(r.status)):\n\(output)\n\(logTail())")
            throw LMTPTestError("swaks")
        }
        return String(output[m].dropFirst("queued as ".count))
    }

    func logLines(qid: String, recipient: String) -> [String] {
        Harness.read(maillog).split(separator: "\n").map(String.init).filter {
            $0.contains(" \(qid): to=<\(recipient)>") && $0.contains(" status=")
        }
    }

    /// Waits for the first delivery status line and requires `status` and `dsn`.
    @discardableResult
    func requireStatus(qid: String, recipient: String, _ status: String, dsn: String) throws -> String {
        let deadline = Date().addingTimeInterval(Self.deliveryTimeout)
        while logLines(qid: qid, recipient: recipient).isEmpty {
            guard Date() < deadline else {
                XCTFail("no delivery status for \(qid) to=<\(recipient)> within \(Int(Self.deliveryTimeout)) s\n\(logTail())\n--- nestbox-lmtpd ---\n\(server.log)")
                throw LMTPTestError("no status")
            }
            usleep(100_000)
        }
        let line = logLines(qid: qid, recipient: recipient)[0]
        let wanted = ["status=\(status)", "dsn=\(dsn),"]
        let missing = wanted.filter { !line.contains($0) }
        guard missing.isEmpty else {
            XCTFail("to=<\(recipient)>: expected \(wanted.joined(separator: " ")), got:\n\(line)\n\(logTail())\n--- nestbox-lmtpd ---\n\(server.log)")
            throw LMTPTestError("wrong status")
        }
        return line
    }

    func waitForMessage(in dir: String, containing token: String) throws -> String {
        let deadline = Date().addingTimeInterval(Self.deliveryTimeout)
        while true {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
            if let name = names.sorted().first(where: { Harness.read("\(dir)/\($0)").contains(token) }) { return name }
            guard Date() < deadline else {
                XCTFail("no message with \(token) in \(dir)\n\(logTail())\n--- nestbox-lmtpd ---\n\(server.log)")
                throw LMTPTestError("no message")
            }
            usleep(100_000)
        }
    }

    func filesContaining(_ token: String, under dir: String) -> [String] {
        Harness.files(under: dir).filter { Harness.read("\(dir)/\($0)").contains(token) }
    }

    func logTail(_ count: Int = 40) -> String {
        let lines = Harness.read(maillog).split(separator: "\n", omittingEmptySubsequences: false)
        return "--- maillog (last \(count) lines of \(maillog)) ---\n" + lines.suffix(count).joined(separator: "\n")
    }

    // MARK: - mailboxes

    func makeMaildir(_ user: String, maildirsize: String = "10485760S\n0 0\n") throws {
        var path = mailRoot
        for level in user.split(separator: "/") {
            path += "/\(level)"
            if !FileManager.default.fileExists(atPath: path) { try makeDir(path) }
        }
        for sub in ["cur", "new", "tmp"] { try makeDir("\(path)/\(sub)") }
        try maildirsize.write(toFile: "\(path)/maildirsize", atomically: false, encoding: .utf8)
        chmod("\(path)/maildirsize", 0o600)
        try Harness.chownToMailOwner("\(path)/maildirsize")
    }

    func makeDir(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        try Harness.chownToMailOwner(path)
    }
}
