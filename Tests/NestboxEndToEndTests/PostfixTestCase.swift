#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest

/// The base of the Postfix end-to-end tests: a private Postfix instance per test (its own
/// config directory, queue, data directory and maillog under a temporary directory; smtpd on a
/// free loopback port; outbound mail, i.e. bounces to the sender, discarded; no DNS). Subclasses
/// choose the delivery settings (from the package's postfix/ samples, so the samples are what is
/// tested) and the extra master.cf services. Mail is submitted with swaks. Needs root (as in CI).
class PostfixTestCase: XCTestCase {
    static let sender = "s@example.org"
    static let localDomain = "example.test"
    static let virtualDomain = "virt.test"
    static let deliveryTimeout: TimeInterval = 30

    var base = ""            // root-owned temporary directory holding everything below
    var configDir = ""       // Postfix config_directory (main.cf, master.cf)
    var queueDir = ""
    var mailRoot = ""        // nestbox partition-default, owned by vmail
    var maillog = ""
    var port = 0
    var postfixStarted = false

    /// The relay requireStatus expects when a test names none (nil: not checked).
    var expectedRelay: String? { nil }

    /// More to show when a delivery goes wrong (e.g. the LMTP server's log).
    func extraDiagnostics() -> String { "" }

    func failure(_ message: String) -> NSError {
        NSError(domain: String(describing: type(of: self)), code: 1, userInfo: [NSLocalizedDescriptionKey: message])
    }

    /// Checks root and `tools`, makes the directories and picks the port.
    func preparePostfixInstance(label: String, tools: [String]) throws {
        continueAfterFailure = false
        guard Harness.isRoot else {
            XCTFail("\(type(of: self)) starts a Postfix instance and must run as root (as in CI)")
            throw failure("not root")
        }
        try Harness.ensureMailOwner()
        for tool in ["/usr/sbin/postfix", "/usr/sbin/postconf", "/usr/bin/swaks"] + tools {
            guard FileManager.default.isExecutableFile(atPath: tool) else {
                XCTFail("\(tool) is missing: install postfix, swaks and dovecot-core (.ci/run does)")
                throw failure("missing \(tool)")
            }
        }
        base = try Harness.makeTempDir(label)
        // Postfix wants its config and queue directories owned by root.
        chown(base, 0, 0)
        chmod(base, 0o755)
        configDir = "\(base)/etc"
        queueDir = "\(base)/spool"
        mailRoot = "\(base)/mail"
        maillog = "\(base)/maillog"
        for dir in [configDir, queueDir, mailRoot] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false,
                                                    attributes: [.posixPermissions: 0o755])
        }
        chmod(mailRoot, 0o700)
        try Harness.chownToMailOwner(mailRoot)
        port = try Net.freeLoopbackPort()
    }

    override func tearDown() {
        stopPostfix()
        if !base.isEmpty { Harness.removeTree(base) }
        super.tearDown()
    }

    // MARK: - configuration

    /// The `key = value` settings of a sample main.cf (continuation lines joined).
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
                throw NSError(domain: "PostfixTestCase", code: 3,
                              userInfo: [NSLocalizedDescriptionKey: "\(path): not a setting: \(raw)"])
            }
            out.append((raw[..<eq].trimmingCharacters(in: .whitespaces),
                        raw[raw.index(after: eq)...].trimmingCharacters(in: .whitespaces)))
        }
        return out
    }

    /// main.cf: the `sample` settings, then this instance's own (which win).
    func writeMainCf(sample: [(String, String)], header: String) throws {
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
        for (k, v) in sample + instance {
            if values[k] == nil { order.append(k) }
            values[k] = v
        }
        var text = "# \(header)\n"
        for k in order { text += "\(k) = \(values[k]!)\n" }
        try text.write(toFile: "\(configDir)/main.cf", atomically: true, encoding: .utf8)
        chmod("\(configDir)/main.cf", 0o644)
    }

    /// master.cf: smtpd on the loopback port, the stock services (lmtp and virtual included),
    /// then `extra` (e.g. the sample's nestbox pipe services).
    func writeMasterCf(extra: String = "", header: String) throws {
        let text = """
        # \(header)
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

        """ + extra
        try text.write(toFile: "\(configDir)/master.cf", atomically: true, encoding: .utf8)
        chmod("\(configDir)/master.cf", 0o644)
    }

    // MARK: - running Postfix

    func startPostfix() throws {
        let check = try Harness.sh("/usr/sbin/postconf -c \(configDir) -n >\(base)/postconf.out 2>&1", timeout: 30)
        XCTAssertEqual(check.status, 0, "postconf: \(Harness.read("\(base)/postconf.out"))")
        let warnings = Harness.read("\(base)/postconf.out").split(separator: "\n").filter { $0.contains("warning") }
        XCTAssertEqual(warnings, [], "postconf warnings about the sample's settings")
        // Output to a file, not a pipe: the daemons must not inherit the harness's pipes.
        let r = try Harness.sh("/usr/sbin/postfix -c \(configDir) start >\(base)/start.out 2>&1", timeout: 60)
        postfixStarted = true
        guard r.status == 0 else {
            XCTFail("postfix start failed (\(r.status)): \(Harness.read("\(base)/start.out"))\n\(logTail())")
            throw failure("postfix start")
        }
        let deadline = Date().addingTimeInterval(20)
        while !Net.canConnect(port: port) {
            guard Date() < deadline else {
                XCTFail("smtpd does not listen on 127.0.0.1:\(port)\n\(Harness.read("\(base)/start.out"))\n\(logTail())")
                throw failure("smtpd")
            }
            usleep(100_000)
        }
    }

    func stopPostfix() {
        guard postfixStarted else { return }
        postfixStarted = false
        let masterPid = pid_t(Harness.read("\(queueDir)/pid/master.pid").trimmingCharacters(in: .whitespacesAndNewlines))
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
            throw failure("swaks")
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
                throw failure("no status")
            }
            usleep(100_000)
        }
    }

    /// Waits for the next delivery status line and requires it to show `status` (and `dsn`, and
    /// the relay); throws otherwise, so that a test stops at the first wrong outcome.
    @discardableResult
    func requireStatus(qid: String, recipient: String, _ status: String, dsn: String? = nil,
                       relay: String? = nil, after: Int = 0) throws -> String {
        let line = try waitForFinalStatus(qid: qid, recipient: recipient, after: after)
        var wanted = ["status=\(status)"]
        if let relay = relay ?? expectedRelay { wanted.append("relay=\(relay),") }
        if let dsn { wanted.append("dsn=\(dsn),") }
        let missing = wanted.filter { !line.contains($0) }
        guard missing.isEmpty else {
            XCTFail("to=<\(recipient)>: expected \(wanted.joined(separator: " ")), got:\n\(line)\n\(logTail())")
            throw failure("wrong status")
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
                throw failure("no message")
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
        let extra = extraDiagnostics()
        return "--- maillog (last \(count) lines of \(maillog)) ---\n" + lines.suffix(count).joined(separator: "\n")
            + (extra.isEmpty ? "" : "\n" + extra)
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

    // MARK: - pipe(8) to nestbox-deliver, as the samples set it up

    /// The nestbox.conf the pipe services run with (startPipeInstance).
    var nestboxConf = ""

    /// A private Postfix whose `nestbox` and `nestbox-virtual` services are copied from
    /// postfix/master.cf (only the program path replaced by a copy of the built binary and
    /// `-C <test nestbox.conf>` inserted after it), with the settings of postfix/main.cf and
    /// postfix/main.cf.virtual applied, so the samples are what is tested. `settings` are the
    /// test's nestbox.conf keys on top of the mail root, owner and server name (evaluated once
    /// `base` is set, so they may name files in it).
    func startPipeInstance(label: String, settings: @autoclosure () -> [String: String]) throws {
        try preparePostfixInstance(label: label, tools: ["/usr/sbin/postqueue"])
        let built = Harness.binary("nestbox-deliver")
        guard FileManager.default.isExecutableFile(atPath: built) else {
            XCTFail("built program not found: \(built)")
            throw failure("no binary")
        }
        // pipe(8) runs the program as vmail, which may not be able to reach the build folder
        // (CI clones somewhere under root's home): run a copy of the built binary from here.
        try FileManager.default.createDirectory(atPath: "\(base)/bin", withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o755])
        let program = "\(base)/bin/nestbox-deliver"
        try FileManager.default.copyItem(atPath: built, toPath: program)
        chmod(program, 0o755)

        var lines = [
            "partition-default": mailRoot,
            "mail_owner": Harness.mailOwner,
            "servername": "mx.\(Self.localDomain)",
        ]
        for (k, v) in settings() { lines[k] = v }
        nestboxConf = try Harness.writeConfig(in: base, lines)
        chmod(nestboxConf, 0o644)

        let local = try Self.sampleSettings("\(Harness.packageRoot)/postfix/main.cf")
        let virtual = try Self.sampleSettings("\(Harness.packageRoot)/postfix/main.cf.virtual")
        XCTAssertTrue(local.contains { $0 == ("mailbox_transport", "nestbox") || $0 == ("local_transport", "nestbox") },
                      "postfix/main.cf must route local mail to nestbox: \(local)")
        XCTAssertTrue(virtual.contains { $0 == ("virtual_transport", "nestbox-virtual") },
                      "postfix/main.cf.virtual must set virtual_transport = nestbox-virtual: \(virtual)")
        try writeMainCf(sample: local + virtual, header: "written by \(type(of: self)) from postfix/main.cf and postfix/main.cf.virtual")
        try writeMasterCf(extra: try sampleNestboxServices(program: program),
                          header: "written by \(type(of: self)); the nestbox services come from postfix/master.cf")
        try startPostfix()
    }

    // MARK: - the sample's services

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

    /// The sample's nestbox services with the program replaced by `program -C <test config>`.
    func sampleNestboxServices(program: String) throws -> String {
        let samplePath = "\(Harness.packageRoot)/postfix/master.cf"
        let services = try Self.sampleServices(samplePath)
        var nestbox = ""
        for name in ["nestbox", "nestbox-virtual"] {
            guard let lines = services[name] else {
                throw failure("\(samplePath) has no \(name) service: \(services.keys.sorted())")
            }
            let entry = lines.joined(separator: "\n")
            guard let argv = entry.range(of: #"argv=\S+"#, options: .regularExpression) else {
                throw failure("\(samplePath): \(name) has no argv=: \(entry)")
            }
            XCTAssertTrue(entry[argv].hasSuffix("/nestbox-deliver"), "sample argv program: \(entry[argv])")
            nestbox += entry.replacingCharacters(in: argv, with: "argv=\(program) -C \(nestboxConf)") + "\n"
        }
        return nestbox
    }
}
