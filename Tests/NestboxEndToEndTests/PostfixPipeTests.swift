import Foundation
import XCTest

/// Postfix -> pipe(8) -> nestbox-deliver, end to end.
///
/// Each test starts a private Postfix instance (its own config directory, queue, data directory
/// and log file under a temporary directory; smtpd on a random loopback port), configured with
/// the sample files of the package's postfix/ directory: the `nestbox` and `nestbox-virtual`
/// services are copied from postfix/master.cf (only the program path is replaced by the built
/// binary and `-C <test nestbox.conf>` is inserted after it), and the settings of
/// postfix/main.cf and postfix/main.cf.virtual are applied, so the samples are what is tested.
/// Mail is submitted with swaks over SMTP; outbound mail (bounces to the sender) is discarded.
/// Nothing leaves the loopback interface. Needs root (as in CI), Postfix and swaks.
final class PostfixPipeTests: XCTestCase {
    static let sender = "s@example.org"
    static let localDomain = "example.test"
    static let virtualDomain = "virt.test"
    static let deliveryTimeout: TimeInterval = 30

    var base = ""            // root-owned temporary directory holding everything below
    var configDir = ""       // Postfix config_directory (main.cf, master.cf)
    var queueDir = ""
    var mailRoot = ""        // nestbox partition-default, owned by vmail
    var maillog = ""
    var nestboxConf = ""
    var port = 0
    var postfixStarted = false

    // MARK: - setup and teardown

    override func setUpWithError() throws {
        try super.setUpWithError()
        continueAfterFailure = false
        guard Harness.isRoot else {
            XCTFail("PostfixPipeTests start a Postfix instance and must run as root (as in CI)")
            throw NSError(domain: "PostfixPipeTests", code: 1)
        }
        try Harness.ensureMailOwner()
        for tool in ["/usr/sbin/postfix", "/usr/sbin/postconf", "/usr/sbin/postqueue", "/usr/bin/swaks"] {
            guard FileManager.default.isExecutableFile(atPath: tool) else {
                XCTFail("\(tool) is missing: install postfix and swaks (.ci/run does)")
                throw NSError(domain: "PostfixPipeTests", code: 1)
            }
        }
        let built = Harness.binary("nestbox-deliver")
        guard FileManager.default.isExecutableFile(atPath: built) else {
            XCTFail("built program not found: \(built)")
            throw NSError(domain: "PostfixPipeTests", code: 1)
        }

        base = try Harness.makeTempDir("nbpostfix")
        // Postfix wants its config and queue directories owned by root.
        chown(base, 0, 0)
        chmod(base, 0o755)
        configDir = "\(base)/etc"
        queueDir = "\(base)/spool"
        mailRoot = "\(base)/mail"
        maillog = "\(base)/maillog"
        for dir in [configDir, queueDir, "\(base)/bin", mailRoot] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false,
                                                    attributes: [.posixPermissions: 0o755])
        }
        chmod(mailRoot, 0o700)
        try Harness.chownToMailOwner(mailRoot)

        // pipe(8) runs the program as vmail, which may not be able to reach the build folder
        // (CI clones somewhere under root's home): run a copy of the built binary from here.
        let program = "\(base)/bin/nestbox-deliver"
        try FileManager.default.copyItem(atPath: built, toPath: program)
        chmod(program, 0o755)

        nestboxConf = try Harness.writeConfig(in: base, [
            "partition-default": mailRoot,
            "mail_owner": Harness.mailOwner,
            "servername": "mx.\(Self.localDomain)",
            "virtdomains": "userid",
            "autocreate_post": "no",
            "autocreate_quota": "-1",
        ])
        chmod(nestboxConf, 0o644)

        port = try Self.freeLoopbackPort()
        try writeMainCf()
        try writeMasterCf(program: program)
        try startPostfix()
    }

    override func tearDown() {
        stopPostfix()
        if !base.isEmpty { Harness.removeTree(base) }
        super.tearDown()
    }

    // MARK: - the cases

    /// (a) A known user receives a message: one file in new/, Return-Path first, body intact,
    /// listed in dovecot-uidlist.
    func testKnownUserReceivesMessage() throws {
        try makeMaildir("alice")
        let token = Self.token()
        let body = "Hello Alice, \(token).\nSecond line.\n.a line that starts with a dot\n\nLast line."
        let qid = try send(to: "alice@\(Self.localDomain)", subject: "for alice \(token)", body: body)
        try requireStatus(qid: qid, recipient: "alice@\(Self.localDomain)", "sent", dsn: "2.0.0")

        let newDir = "\(mailRoot)/alice/new"
        let found = try waitForMessage(in: newDir, containing: token)
        let all = filesContaining(token, under: mailRoot)
        XCTAssertEqual(all, ["alice/new/\(found)"], "the message must be stored exactly once\n\(logTail())")
        XCTAssertEqual(Harness.files(under: "\(mailRoot)/alice/new").count, 1)

        let path = "\(newDir)/\(found)"
        let text = Harness.read(path)
        XCTAssertTrue(text.hasPrefix("Return-Path: <\(Self.sender)>\n"),
                      "first line must be Return-Path: <\(Self.sender)>; file starts with:\n\(text.prefix(400))")
        XCTAssertEqual(text.components(separatedBy: "Return-Path:").count - 1, 1, "exactly one Return-Path:\n\(text)")
        XCTAssertFalse(text.contains("\r"), "Maildir files use LF line ends")
        XCTAssertTrue(text.contains("\nDelivered-To: alice@\(Self.localDomain)\n"), "pipe flag D header:\n\(text)")
        XCTAssertTrue(text.contains("\nSubject: for alice \(token)\n"), text)
        guard let sep = text.range(of: "\n\n") else {
            return XCTFail("no header/body separator in:\n\(text)")
        }
        let storedBody = String(text[sep.upperBound...])
        XCTAssertEqual(storedBody.trimmingCharacters(in: .newlines), body,
                       "body changed on the way (dot-stuffing, line ends?)")

        var st = stat()
        XCTAssertEqual(lstat(path, &st), 0)
        if let pw = getpwnam(Harness.mailOwner) {
            XCTAssertEqual(st.st_uid, pw.pointee.pw_uid, "message file must belong to \(Harness.mailOwner)")
        }
        XCTAssertEqual(st.st_mode & 0o777, 0o600, "message file mode")

        let uidlist = Harness.read("\(mailRoot)/alice/dovecot-uidlist")
        let baseName = String(found.split(separator: ":", maxSplits: 1)[0])
        let lines = uidlist.split(separator: "\n").map(String.init)
        XCTAssertTrue(lines.first?.hasPrefix("3 ") == true, "dovecot-uidlist must be version 3:\n\(uidlist)")
        XCTAssertTrue(lines.dropFirst().contains { $0.hasSuffix(":\(baseName)") || $0.hasSuffix(":\(found)") },
                      "dovecot-uidlist does not list \(found):\n\(uidlist)")
    }

    /// (b) An unknown user bounces with 5.1.1, and no mailbox appears.
    func testUnknownUserBounces() throws {
        try makeMaildir("alice")
        let rcpt = "nobody-here@\(Self.localDomain)"
        let qid = try send(to: rcpt, subject: "to nobody", body: "Nobody reads this. \(Self.token())")
        try requireStatus(qid: qid, recipient: rcpt, "bounced", dsn: "5.1.1")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(mailRoot)/nobody-here"),
                       "no mailbox may be created for an unknown user (autocreate is off)")
        XCTAssertEqual(Harness.files(under: "\(mailRoot)/alice").filter { $0.hasPrefix("new/") || $0.hasPrefix("cur/") }, [])
    }

    /// (c) Over quota: deferred with 4.2.2; after the limit is raised and the queue flushed,
    /// the message arrives.
    func testOverQuotaDefersThenDeliversAfterQuotaRaised() throws {
        try makeMaildir("carol", maildirsize: "1000S\n5000 1\n")
        // The message that accounts for the "5000 1" usage line.
        let old = "\(mailRoot)/carol/cur/1700000000.M1P1.mx.\(Self.localDomain),S=5000:2,S"
        var oldMessage = "Return-Path: <old@example.org>\nSubject: old\n\n"
        oldMessage += String(repeating: "x", count: 5000 - oldMessage.utf8.count - 1) + "\n"
        XCTAssertEqual(oldMessage.utf8.count, 5000)
        try oldMessage.write(toFile: old, atomically: false, encoding: .utf8)
        chmod(old, 0o600)
        try Harness.chownToMailOwner(old)

        let token = Self.token()
        let rcpt = "carol@\(Self.localDomain)"
        let qid = try send(to: rcpt, subject: "for carol \(token)", body: "Carol is over quota. \(token)")
        try requireStatus(qid: qid, recipient: rcpt, "deferred", dsn: "4.2.2")
        XCTAssertEqual(filesContaining(token, under: mailRoot), [], "nothing may be stored when over quota")
        XCTAssertEqual(Harness.files(under: "\(mailRoot)/carol/tmp"), [], "no partial file may be left in tmp/")

        // Raise the limit (line 1 of maildirsize), keep the usage lines.
        let sizeFile = "\(mailRoot)/carol/maildirsize"
        var sizeLines = Harness.read(sizeFile).components(separatedBy: "\n")
        XCTAssertEqual(sizeLines.first, "1000S", "maildirsize was changed unexpectedly:\n\(Harness.read(sizeFile))")
        sizeLines[0] = "10000000S"
        try sizeLines.joined(separator: "\n").write(toFile: sizeFile, atomically: false, encoding: .utf8)
        try Harness.chownToMailOwner(sizeFile)
        chmod(sizeFile, 0o600)

        let seen = logLines(qid: qid, recipient: rcpt).count
        let flush = try Harness.sh("/usr/sbin/postqueue -c \(configDir) -f >\(base)/postqueue.out 2>&1", timeout: 30)
        XCTAssertEqual(flush.status, 0, "postqueue -f failed: \(Harness.read("\(base)/postqueue.out"))")
        try requireStatus(qid: qid, recipient: rcpt, "sent", dsn: "2.0.0", after: seen)
        let found = try waitForMessage(in: "\(mailRoot)/carol/new", containing: token)
        XCTAssertEqual(filesContaining(token, under: mailRoot), ["carol/new/\(found)"])
    }

    /// (d) user+Folder delivers into the folder when it exists and anyone may post to it.
    func testExtensionDeliversIntoFolderWithPostRight() throws {
        try makeMaildir("alice")
        let work = "\(mailRoot)/alice/.Work"
        try makeMaildirDirs(work)
        try writeMailFile("\(work)/maildirfolder", "")
        try writeMailFile("\(work)/dovecot-acl", "anyone p\n")

        let token = Self.token()
        let rcpt = "alice+Work@\(Self.localDomain)"
        let qid = try send(to: rcpt, subject: "work \(token)", body: "For the Work folder. \(token)")
        try requireStatus(qid: qid, recipient: rcpt, "sent", dsn: "2.0.0")
        let found = try waitForMessage(in: "\(work)/new", containing: token)
        XCTAssertEqual(filesContaining(token, under: mailRoot), ["alice/.Work/new/\(found)"],
                       "the message must be in .Work/new only\n\(logTail())")
        let text = Harness.read("\(work)/new/\(found)")
        XCTAssertTrue(text.hasPrefix("Return-Path: <\(Self.sender)>\n"), String(text.prefix(400)))
    }

    /// The main.cf.virtual sample: user@virtual-domain goes through nestbox-virtual as
    /// user@domain and lands in the domain's area (virtdomains: userid).
    func testVirtualDomainDeliversToDomainArea() throws {
        try makeMaildir("\(Self.virtualDomain)/dave")
        let token = Self.token()
        let rcpt = "dave@\(Self.virtualDomain)"
        let qid = try send(to: rcpt, subject: "virtual \(token)", body: "For dave in the virtual domain. \(token)")
        try requireStatus(qid: qid, recipient: rcpt, "sent", dsn: "2.0.0", relay: "nestbox-virtual")
        let found = try waitForMessage(in: "\(mailRoot)/\(Self.virtualDomain)/dave/new", containing: token)
        XCTAssertEqual(filesContaining(token, under: mailRoot), ["\(Self.virtualDomain)/dave/new/\(found)"])
        let text = Harness.read("\(mailRoot)/\(Self.virtualDomain)/dave/new/\(found)")
        XCTAssertTrue(text.hasPrefix("Return-Path: <\(Self.sender)>\n"), String(text.prefix(400)))
    }

    // MARK: - Postfix configuration from the samples

    /// `key = value` settings of a sample main.cf, in order (comments and blank lines skipped,
    /// indented lines continue the previous value).
    static func sampleSettings(_ path: String) throws -> [(String, String)] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var out: [(String, String)] = []
        for raw in text.components(separatedBy: "\n") {
            let trimmed = raw.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            if raw.first == " " || raw.first == "\t" {
                guard !out.isEmpty else { continue }
                out[out.count - 1].1 += " " + trimmed
                continue
            }
            guard let eq = raw.firstIndex(of: "=") else {
                throw NSError(domain: "PostfixPipeTests", code: 3,
                              userInfo: [NSLocalizedDescriptionKey: "\(path): not a setting: \(raw)"])
            }
            out.append((raw[..<eq].trimmingCharacters(in: .whitespaces),
                        raw[raw.index(after: eq)...].trimmingCharacters(in: .whitespaces)))
        }
        return out
    }

    func writeMainCf() throws {
        let local = try Self.sampleSettings("\(Harness.packageRoot)/postfix/main.cf")
        let virtual = try Self.sampleSettings("\(Harness.packageRoot)/postfix/main.cf.virtual")
        XCTAssertTrue(local.contains { $0 == ("mailbox_transport", "nestbox") || $0 == ("local_transport", "nestbox") },
                      "postfix/main.cf must route local mail to nestbox: \(local)")
        XCTAssertTrue(virtual.contains { $0 == ("virtual_transport", "nestbox-virtual") },
                      "postfix/main.cf.virtual must set virtual_transport = nestbox-virtual: \(virtual)")

        // This instance's own settings; they win over the samples' (virtual_mailbox_domains).
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
            // No DNS, nothing leaves the machine: mail to other domains (the bounces) is discarded.
            ("smtp_host_lookup", "native"),
            ("smtpd_peername_lookup", "no"),
            ("default_transport", "discard:outbound mail is disabled in this test instance"),
            ("relay_transport", "discard:outbound mail is disabled in this test instance"),
            // local(8) runs before mailbox_transport: no system alias database here.
            ("alias_maps", ""),
            ("alias_database", ""),
            ("biff", "no"),
            ("smtpd_banner", "$myhostname ESMTP nestbox test"),
        ]
        var order: [String] = []
        var values: [String: String] = [:]
        for (k, v) in local + virtual + instance {
            if values[k] == nil { order.append(k) }
            values[k] = v
        }
        var text = "# written by PostfixPipeTests from postfix/main.cf and postfix/main.cf.virtual\n"
        for k in order { text += "\(k) = \(values[k]!)\n" }
        try text.write(toFile: "\(configDir)/main.cf", atomically: true, encoding: .utf8)
        chmod("\(configDir)/main.cf", 0o644)
    }

    /// The `nestbox*` service entries of the sample master.cf, each with its continuation lines.
    static func sampleServices(_ path: String) throws -> [String: [String]] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var out: [String: [String]] = [:]
        var current: String? = nil
        for line in text.components(separatedBy: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("#") { continue }
            if trimmed.isEmpty { current = nil; continue }
            if line.first == " " || line.first == "\t" {
                if let c = current { out[c, default: []].append(line) }
                continue
            }
            let name = String(line.split(separator: " ", maxSplits: 1)[0].split(separator: "\t")[0])
            current = name
            out[name] = [line]
        }
        return out
    }

    func writeMasterCf(program: String) throws {
        let samplePath = "\(Harness.packageRoot)/postfix/master.cf"
        let services = try Self.sampleServices(samplePath)
        var nestbox = ""
        for name in ["nestbox", "nestbox-virtual"] {
            guard let lines = services[name] else {
                throw NSError(domain: "PostfixPipeTests", code: 4,
                              userInfo: [NSLocalizedDescriptionKey: "\(samplePath) has no \(name) service: \(services.keys.sorted())"])
            }
            let entry = lines.joined(separator: "\n")
            guard let argv = entry.range(of: #"argv=\S+"#, options: .regularExpression) else {
                throw NSError(domain: "PostfixPipeTests", code: 4,
                              userInfo: [NSLocalizedDescriptionKey: "\(samplePath): \(name) has no argv=: \(entry)"])
            }
            XCTAssertTrue(entry[argv].hasSuffix("/nestbox-deliver"), "sample argv program: \(entry[argv])")
            nestbox += entry.replacingCharacters(in: argv, with: "argv=\(program) -C \(nestboxConf)") + "\n"
        }
        let text = """
        # written by PostfixPipeTests; the nestbox services come from postfix/master.cf
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
        showq     unix  n       -       n       -       -       showq
        error     unix  -       -       n       -       -       error
        retry     unix  -       -       n       -       -       error
        discard   unix  -       -       n       -       -       discard
        local     unix  -       n       n       -       -       local
        anvil     unix  -       -       n       -       1       anvil
        scache    unix  -       -       n       -       1       scache
        postlog   unix-dgram n  -       n       -       1       postlogd

        """ + nestbox
        try text.write(toFile: "\(configDir)/master.cf", atomically: true, encoding: .utf8)
        chmod("\(configDir)/master.cf", 0o644)
    }

    // MARK: - running Postfix

    func startPostfix() throws {
        let check = try Harness.sh("/usr/sbin/postconf -c \(configDir) -n >\(base)/postconf.out 2>&1", timeout: 30)
        XCTAssertEqual(check.status, 0, "postconf: \(Harness.read("\(base)/postconf.out"))")
        // Output to a file, not a pipe: the daemons must not inherit the harness's pipes.
        let r = try Harness.sh("/usr/sbin/postfix -c \(configDir) start >\(base)/start.out 2>&1", timeout: 60)
        postfixStarted = true
        guard r.status == 0 else {
            XCTFail("postfix start failed (\(r.status)): \(Harness.read("\(base)/start.out"))\n\(logTail())")
            throw NSError(domain: "PostfixPipeTests", code: 5)
        }
        let deadline = Date().addingTimeInterval(20)
        while !Self.canConnect(port: port) {
            guard Date() < deadline else {
                XCTFail("smtpd does not listen on 127.0.0.1:\(port)\n\(Harness.read("\(base)/start.out"))\n\(logTail())")
                throw NSError(domain: "PostfixPipeTests", code: 5)
            }
            usleep(100_000)
        }
    }

    func stopPostfix() {
        guard postfixStarted else { return }
        postfixStarted = false
        let masterPid = Self.pidFromFile("\(queueDir)/pid/master.pid")
        _ = try? Harness.sh("/usr/sbin/postfix -c \(configDir) stop >>\(base)/stop.out 2>&1", timeout: 30)
        if let pid = masterPid, !Self.waitForExit(pid, seconds: 10) {
            _ = try? Harness.sh("/usr/sbin/postfix -c \(configDir) abort >>\(base)/stop.out 2>&1", timeout: 30)
            if !Self.waitForExit(pid, seconds: 5) {
                kill(pid, SIGKILL)
                _ = Self.waitForExit(pid, seconds: 5)
            }
        }
        // The daemons of this instance (they carry MAIL_CONFIG=<configDir>) leave once the master
        // is gone; make sure none outlives the test.
        var leftovers = Self.instanceProcesses(configDir: configDir)
        let deadline = Date().addingTimeInterval(5)
        while !leftovers.isEmpty && Date() < deadline {
            usleep(100_000)
            leftovers = Self.instanceProcesses(configDir: configDir)
        }
        for pid in leftovers { kill(pid, SIGKILL) }
    }

    static func pidFromFile(_ path: String) -> pid_t? {
        pid_t(Harness.read(path).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    static func waitForExit(_ pid: pid_t, seconds: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while kill(pid, 0) == 0 || errno == EPERM {
            if Date() >= deadline { return false }
            usleep(50_000)
        }
        return true
    }

    /// Processes whose environment names this instance's config directory.
    static func instanceProcesses(configDir: String) -> [pid_t] {
        let marker = Data("MAIL_CONFIG=\(configDir)\0".utf8)
        let me = getpid()
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { pid_t($0) }.filter { pid in
            guard pid != me, let env = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
            return env.range(of: marker) != nil
        }
    }

    // MARK: - sending and waiting

    /// Submits one message over SMTP and returns its Postfix queue id.
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
            throw NSError(domain: "PostfixPipeTests", code: 6)
        }
        return String(output[m].dropFirst("queued as ".count))
    }

    /// The maillog's delivery status lines of one message for one recipient.
    func logLines(qid: String, recipient: String) -> [String] {
        Harness.read(maillog).split(separator: "\n").map(String.init).filter {
            $0.contains(" \(qid): to=<\(recipient)>") && $0.contains(" status=")
        }
    }

    /// Waits for a delivery status line (sent, bounced, deferred) beyond the first `after` ones.
    func waitForFinalStatus(qid: String, recipient: String, after: Int = 0) throws -> String {
        let deadline = Date().addingTimeInterval(Self.deliveryTimeout)
        while true {
            let lines = logLines(qid: qid, recipient: recipient)
            if lines.count > after { return lines[after] }
            guard Date() < deadline else {
                XCTFail("no delivery status for \(qid) to=<\(recipient)> within \(Int(Self.deliveryTimeout)) s\n\(logTail())")
                throw NSError(domain: "PostfixPipeTests", code: 7)
            }
            usleep(100_000)
        }
    }

    /// Waits for the next delivery status line and requires it to show `status` (and `dsn`);
    /// throws otherwise, so that a test stops at the first wrong outcome.
    @discardableResult
    func requireStatus(qid: String, recipient: String, _ status: String, dsn: String? = nil,
                       relay: String = "nestbox", after: Int = 0) throws -> String {
        let line = try waitForFinalStatus(qid: qid, recipient: recipient, after: after)
        var wanted = ["status=\(status)", "relay=\(relay),"]
        if let dsn { wanted.append("dsn=\(dsn),") }
        let missing = wanted.filter { !line.contains($0) }
        guard missing.isEmpty else {
            XCTFail("to=<\(recipient)>: expected \(wanted.joined(separator: " ")), got:\n\(line)\n\(logTail())")
            throw NSError(domain: "PostfixPipeTests", code: 9)
        }
        return line
    }

    /// Waits for a file containing `token` in a Maildir new/ directory; returns its name.
    func waitForMessage(in dir: String, containing token: String) throws -> String {
        let deadline = Date().addingTimeInterval(Self.deliveryTimeout)
        while true {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
            if let name = names.sorted().first(where: { Harness.read("\(dir)/\($0)").contains(token) }) { return name }
            guard Date() < deadline else {
                XCTFail("no message with \(token) in \(dir); files under the mail root: \(Harness.files(under: mailRoot))\n\(logTail())")
                throw NSError(domain: "PostfixPipeTests", code: 8)
            }
            usleep(100_000)
        }
    }

    /// Relative paths of the files below `dir` that contain `token`.
    func filesContaining(_ token: String, under dir: String) -> [String] {
        Harness.files(under: dir).filter { Harness.read("\(dir)/\($0)").contains(token) }
    }

    func logTail(_ count: Int = 40) -> String {
        let lines = Harness.read(maillog).split(separator: "\n", omittingEmptySubsequences: false)
        return "--- maillog (last \(count) lines of \(maillog)) ---\n" + lines.suffix(count).joined(separator: "\n")
    }

    static func token() -> String { "token-" + UUID().uuidString.lowercased() }

    // MARK: - mailboxes

    /// Makes <root>/<user>/ a Maildir (INBOX) with a maildirsize, all owned by the mail owner.
    func makeMaildir(_ user: String, maildirsize: String = "10485760S\n0 0\n") throws {
        var path = mailRoot
        for level in user.split(separator: "/") {
            path += "/\(level)"
            if !FileManager.default.fileExists(atPath: path) { try makeDir(path) }
        }
        try makeMaildirDirs(path, create: false)
        try writeMailFile("\(path)/maildirsize", maildirsize)
    }

    func makeMaildirDirs(_ path: String, create: Bool = true) throws {
        if create { try makeDir(path) }
        for sub in ["cur", "new", "tmp"] { try makeDir("\(path)/\(sub)") }
    }

    func makeDir(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        try Harness.chownToMailOwner(path)
    }

    func writeMailFile(_ path: String, _ text: String) throws {
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o600)
        try Harness.chownToMailOwner(path)
    }

    // MARK: - sockets

    static func loopbackAddress(port: Int) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return addr
    }

    static func withSocket<T>(_ body: (Int32) -> T) -> T? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return body(fd)
    }

    static func canBind(port: Int) -> Bool {
        withSocket { fd in
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var addr = loopbackAddress(port: port)
            return withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
        } ?? false
    }

    static func canConnect(port: Int) -> Bool {
        withSocket { fd in
            var addr = loopbackAddress(port: port)
            return withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
        } ?? false
    }

    static func freeLoopbackPort() throws -> Int {
        for _ in 0..<100 {
            let candidate = Int.random(in: 20000..<40000)
            if canBind(port: candidate) && !canConnect(port: candidate) { return candidate }
        }
        throw NSError(domain: "PostfixPipeTests", code: 2,
                      userInfo: [NSLocalizedDescriptionKey: "no free loopback port in 20000-39999"])
    }
}
