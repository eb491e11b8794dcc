#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest

/// nestbox-passwd against the real Cyrus SASL tools on the same file: what we write,
/// sasldblistusers2 lists and saslauthd accepts; what saslpasswd2 writes, we list and check;
/// what we delete is gone for both, SCRAM secret included. Then the bad input an administrator
/// types, each with its status and its one line, the terminal prompt through a pty, a database
/// a non-root user cannot read, the file's mode, and twenty writers at once.
final class PasswdCommandTests: XCTestCase {
    var dir = ""
    var database = ""
    var configPath = ""

    override func setUpWithError() throws {
        try super.setUpWithError()
        for tool in ["nestbox-passwd"] where !FileManager.default.isExecutableFile(atPath: Harness.binary(tool)) {
            XCTFail("built program not found: \(Harness.binary(tool))")
            throw LMTPTestError("no binary")
        }
        XCTAssertTrue(Harness.isRoot, "these tests create root-owned databases and mount namespaces: run as root (as CI does)")
        dir = try Harness.makeTempDir("passwd")
        database = "\(dir)/sasldb2"
        configPath = try Harness.writeConfig(in: dir, [
            "sasl_sasldb_path": database,
            "sasl_sasldb_group": "sasl",
            "defaultdomain": "example.org",
        ])
    }

    override func tearDown() {
        Harness.removeTree(dir)
        super.tearDown()
    }

    // MARK: Helpers

    @discardableResult
    func passwd(_ arguments: [String], input: String? = nil) throws -> Harness.Result {
        try Harness.run(Harness.binary("nestbox-passwd"), ["-C", configPath] + arguments, input: input.map { Data($0.utf8) })
    }

    /// sasldblistusers2's lines, sorted.
    func realList() throws -> [String] {
        let r = try Harness.run("/usr/sbin/sasldblistusers2", ["-f", database])
        return r.stdout.split(separator: "\n").map(String.init).sorted()
    }

    func ourList() throws -> [String] {
        let r = try passwd(["--list"])
        XCTAssertEqual(r.status, 0, r.stderr)
        return r.stdout.split(separator: "\n").map(String.init)
    }

    /// A failure: the status, and exactly one line on standard error naming the program and
    /// saying `reason`.
    func assertRefused(_ r: Harness.Result, _ status: Int32, _ reason: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, status, r.stdout + r.stderr, file: file, line: line)
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "one line on stderr: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("nestbox-passwd: ") && r.stderr.contains(reason),
                      "expected \"\(reason)\" in: \(r.stderr)", file: file, line: line)
    }

    /// A copy of a built program that another user can run (the build folder may be private).
    func runnableCopy(_ name: String) throws -> String {
        let copy = "\(dir)/\(name)"
        if !FileManager.default.fileExists(atPath: copy) {
            try FileManager.default.copyItem(atPath: Harness.binary(name), toPath: copy)
            chmod(copy, 0o755)
        }
        return copy
    }

    /// saslauthd -a sasldb on its own socket directory, reading `database`. Its sasldb
    /// mechanism takes no path (auth_sasldb.c reads the compiled-in /etc/sasldb2 and ignores
    /// -O), so it runs in a private mount namespace where /etc/sasldb2 is our file, bound
    /// over the real one (or over an overlay of /etc when there is none); nothing outside sees it.
    func startSaslauthd() throws -> (Process, String) {
        let run = "\(dir)/saslauthd"
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        let script = """
        set -e
        if [ ! -e /etc/sasldb2 ]; then
            mkdir -p \(dir)/etc-upper \(dir)/etc-work
            mount -t overlay overlay -o lowerdir=/etc,upperdir=\(dir)/etc-upper,workdir=\(dir)/etc-work /etc
            : > /etc/sasldb2
        fi
        mount --bind \(database) /etc/sasldb2
        exec /usr/sbin/saslauthd -a sasldb -m \(run) -n 1 -d
        """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        p.arguments = ["-m", "--propagation", "private", "/bin/sh", "-c", script]
        p.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: "\(run)/mux") && Date() < deadline && p.isRunning { usleep(20_000) }
        guard FileManager.default.fileExists(atPath: "\(run)/mux") else {
            p.terminate()
            throw LMTPTestError("saslauthd did not start (status \(p.isRunning ? -1 : p.terminationStatus))")
        }
        return (p, "\(run)/mux")
    }

    func testsaslauthd(_ socket: String, _ user: String, _ realm: String, _ password: String) throws -> String {
        try Harness.run("/usr/sbin/testsaslauthd", ["-u", user, "-r", realm, "-p", password, "-f", socket]).stdout
    }

    /// SASL_CONF_PATH for the real saslpasswd2 with SCRAM secrets turned on, as a site does in
    /// /etc/sasl2/saslpasswd.conf (without it the SCRAM plugins store nothing).
    func scramConfig() throws -> [String: String] {
        let confDir = "\(dir)/sasl2"
        try FileManager.default.createDirectory(atPath: confDir, withIntermediateDirectories: true)
        try "scram_secret_generate: yes\n".write(toFile: "\(confDir)/saslpasswd.conf", atomically: true, encoding: .utf8)
        return ["SASL_CONF_PATH": confDir]
    }

    // MARK: Interop

    func testUserWeCreateIsListedBySasldblistusers2AndAcceptedBySaslauthd() throws {
        XCTAssertEqual(try passwd(["-c", "alice"], input: "s3cret pass\n").status, 0)
        XCTAssertEqual(try passwd(["-c", "-u", "example.net", "bob"], input: "bob-pw\n").status, 0)
        XCTAssertEqual(try realList(), ["alice@example.org: authPassword", "alice@example.org: userPassword",
                                        "bob@example.net: authPassword", "bob@example.net: userPassword"])
        XCTAssertEqual(try ourList(), try realList(), "--list prints the lines sasldblistusers2 prints")

        let (daemon, socket) = try startSaslauthd()
        defer { daemon.terminate(); daemon.waitUntilExit() }
        XCTAssertTrue(try testsaslauthd(socket, "alice", "example.org", "s3cret pass").contains("OK"))
        XCTAssertTrue(try testsaslauthd(socket, "alice", "example.org", "wrong").contains("NO"))
        XCTAssertTrue(try testsaslauthd(socket, "bob", "example.net", "bob-pw").contains("OK"))
        // A change is seen at once; a delete too.
        XCTAssertEqual(try passwd(["alice"], input: "new one\n").status, 0)
        XCTAssertTrue(try testsaslauthd(socket, "alice", "example.org", "new one").contains("OK"))
        XCTAssertTrue(try testsaslauthd(socket, "alice", "example.org", "s3cret pass").contains("NO"))
        XCTAssertEqual(try passwd(["-d", "alice"]).status, 0)
        XCTAssertTrue(try testsaslauthd(socket, "alice", "example.org", "new one").contains("NO"))
        XCTAssertTrue(try testsaslauthd(socket, "bob", "example.net", "bob-pw").contains("OK"), "bob is untouched")
    }

    func testUserSaslpasswd2CreatesIsListedAndCheckedByUs() throws {
        let made = try Harness.run("/usr/sbin/saslpasswd2", ["-f", database, "-c", "-p", "-u", "example.org", "carol"],
                                   input: Data("carol-pw".utf8), environment: try scramConfig())
        XCTAssertEqual(made.status, 0, made.stderr)
        XCTAssertEqual(try ourList(), ["carol@example.org: authPassword", "carol@example.org: userPassword"])
        let json = try passwd(["--json"])
        XCTAssertEqual(json.stdout.trimmingCharacters(in: .newlines),
                       "{\"database\":\"\(database)\",\"users\":[{\"user\":\"carol\",\"realm\":\"example.org\",\"properties\":[\"authPassword\",\"userPassword\"]}]}")
        XCTAssertEqual(try passwd(["--check", "carol"], input: "carol-pw\n").status, 0)
        assertRefused(try passwd(["--check", "carol@example.org"], input: "not it\n"), 1, "wrong password")
        // We change what saslpasswd2 made; it is still ours to check and theirs to list.
        XCTAssertEqual(try passwd(["carol"], input: "changed\n").status, 0)
        XCTAssertEqual(try passwd(["--check", "carol"], input: "changed\n").status, 0)
        XCTAssertEqual(try realList(), ["carol@example.org: authPassword", "carol@example.org: userPassword"])
    }

    func testDeleteRemovesEverySecretWhereSaslpasswd2LeavesSCRAMBehind() throws {
        let env = try scramConfig()
        for user in ["dora", "erik"] {
            let r = try Harness.run("/usr/sbin/saslpasswd2", ["-f", database, "-c", "-p", "-u", "example.org", user],
                                    input: Data("pw-\(user)".utf8), environment: env)
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        // The real tool's defect, which is why we delete through the auxprop store: its -d
        // removes the SCRAM secret only when scram_secret_generate is on for that run too (an
        // administrator who deletes without the site's saslpasswd.conf, or with another -a).
        let theirs = try Harness.run("/usr/sbin/saslpasswd2", ["-f", database, "-d", "-u", "example.org", "dora"])
        XCTAssertEqual(theirs.status, 0, theirs.stderr)
        XCTAssertEqual(try realList().filter { $0.hasPrefix("dora@") }, ["dora@example.org: authPassword"],
                       "saslpasswd2 -d leaves the SCRAM secret (if this changes, CYRUS-COMPAT.md must too)")
        // Ours removes what it left, and every record of a whole user.
        XCTAssertEqual(try passwd(["-d", "dora"]).status, 0)
        XCTAssertEqual(try passwd(["-d", "erik@example.org"]).status, 0)
        XCTAssertEqual(try realList(), [], "sasldblistusers2 shows no line for a user we deleted")
        XCTAssertEqual(try ourList(), [])
        // And one we made with -n (only the SCRAM secret) goes as well.
        XCTAssertEqual(try passwd(["-c", "-n", "fred"], input: "pw\n").status, 0)
        XCTAssertEqual(try realList(), ["fred@example.org: authPassword"], "-n stores no userPassword")
        assertRefused(try passwd(["--check", "fred"], input: "pw\n"), 1, "no plaintext")
        XCTAssertEqual(try passwd(["-d", "fred"]).status, 0)
        XCTAssertEqual(try realList(), [])
    }

    // MARK: Bad input

    func testBadInputTable() throws {
        XCTAssertEqual(try passwd(["-c", "alice"], input: "right\n").status, 0)
        let before = try realList()
        let long = String(repeating: "x", count: 300)
        let rows: [(args: [String], input: String?, status: Int32, reason: String)] = [
            (["--check", "alice"], "wrong\n", 1, "alice@example.org: wrong password"),
            (["alice"], "\n", 65, "empty password"),
            (["alice"], "", 65, "no password on standard input"),
            (["-c", "alice"], "x\n", 73, "alice@example.org already exists"),
            (["nobody"], "x\n", 67, "nobody@example.org is not in"),
            (["-d", "nobody"], nil, 67, "nobody@example.org is not in"),
            (["--check", "nobody"], "x\n", 67, "nobody@example.org is not in"),
            (["-c", "a@b@c"], "x\n", 64, "realm given twice"),
            (["-c", "-u", "example.net", "alice@example.org"], "x\n", 64, "realm given twice"),
            (["-c", "@example.org"], "x\n", 64, "empty user name"),
            (["-c", "alice@"], "x\n", 64, "empty realm"),
            (["-c", "al\u{1}ice"], "x\n", 64, "control character in the user name"),
            (["-c", "-u", "exa\tmple.org", "alice"], "x\n", 64, "control character in the realm"),
            (["-c", long], "x\n", 64, "300 bytes, at most 255"),
            (["-c", "-d", "alice"], nil, 64, "-c creates a user"),
            ([], nil, 64, "no user given"),
            (["alice", "bob"], "x\n", 64, "one user at a time"),
            (["-f", "relative/path", "alice"], "x\n", 64, "absolute path"),
        ]
        for row in rows {
            let r = try passwd(row.args, input: row.input)
            assertRefused(r, row.status, row.reason)
            XCTAssertEqual(try realList(), before, "\(row.args) changed the database")
        }
        // A user named with @ is that user in that realm.
        XCTAssertEqual(try passwd(["-c", "gina@example.com"], input: "pw\n").status, 0)
        XCTAssertTrue(try realList().contains("gina@example.com: userPassword"))
        XCTAssertEqual(try passwd(["-c", "-u", "example.com", "gina@example.com"], input: "pw\n").status, 73,
                       "the same realm twice is no conflict")
    }

    func testChangeWithoutDatabaseSaysSoAndCreatesNothing() throws {
        for args in [["alice"], ["-d", "alice"]] {
            assertRefused(try passwd(args, input: "pw\n"), 66, "does not exist")
            XCTAssertFalse(FileManager.default.fileExists(atPath: database))
        }
        assertRefused(try passwd(["--list"]), 66, "No such file or directory")
        XCTAssertFalse(FileManager.default.fileExists(atPath: database))
        XCTAssertFalse(FileManager.default.fileExists(atPath: database + ".lock"))
    }

    func testUnreadableDatabaseForAnotherUser() throws {
        XCTAssertEqual(try passwd(["-c", "alice"], input: "pw\n").status, 0)
        let program = try runnableCopy("nestbox-passwd")
        chmod(configPath, 0o644)
        let asOwner = ["/usr/bin/setpriv", "--reuid=\(Harness.mailOwner)", "--regid=\(Harness.mailOwner)", "--clear-groups", "--", program, "-C", configPath]
        for (args, input) in [(["--list"], nil), (["--check", "alice"], "pw\n"), (["alice"], "pw2\n")] as [([String], String?)] {
            let r = try Harness.run(asOwner[0], Array(asOwner.dropFirst()) + args, input: input.map { Data($0.utf8) })
            assertRefused(r, 77, "Permission denied")
        }
        XCTAssertEqual(try passwd(["--check", "alice"], input: "pw\n").status, 0, "nothing changed")
    }

    // MARK: The terminal

    /// Runs nestbox-passwd on a pty (python3's pty module), answering each prompt in turn.
    /// `unprompted`: send the answers at once, without waiting for prompts.
    func onTerminal(_ args: [String], answers: [String], unprompted: Bool = false) throws -> (status: Int32, transcript: String) {
        let driver = "\(dir)/terminal-driver.py"
        try """
        import os, pty, sys
        prog, answers, unprompted, args = sys.argv[1], sys.argv[2].split("\\x1f"), sys.argv[3] == "1", sys.argv[4:]
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(prog, [prog] + args)
        out = b""
        if unprompted:
            for a in answers:
                os.write(fd, a.encode() + b"\\n")
            answers = []
        prompts = [b"Password:", b"Again (for verification):"]
        sent = 0
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            while sent < len(answers) and out.count(b":") > 0 and sum(out.count(p) for p in prompts) > sent:
                os.write(fd, answers[sent].encode() + b"\\n")
                sent += 1
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(out.decode(errors="replace"))
        sys.exit(os.WEXITSTATUS(status))
        """.write(toFile: driver, atomically: true, encoding: .utf8)
        let r = try Harness.run("/usr/bin/env", ["python3", driver, Harness.binary("nestbox-passwd"),
                                                 answers.joined(separator: "\u{1f}"), unprompted ? "1" : "0", "-C", configPath] + args, timeout: 20)
        return (r.status, r.stdout + r.stderr)
    }

    func testPromptsOnATerminalWithEchoOff() throws {
        let made = try onTerminal(["-c", "hana"], answers: ["typed-twice", "typed-twice"])
        XCTAssertEqual(made.status, 0, made.transcript)
        XCTAssertTrue(made.transcript.contains("Password:") && made.transcript.contains("Again (for verification):"), made.transcript)
        XCTAssertFalse(made.transcript.contains("typed-twice"), "echo must be off: \(made.transcript)")
        XCTAssertEqual(try passwd(["--check", "hana"], input: "typed-twice\n").status, 0)

        let mismatch = try onTerminal(["hana"], answers: ["one", "other"])
        XCTAssertEqual(mismatch.status, 65, mismatch.transcript)
        XCTAssertTrue(mismatch.transcript.contains("the two passwords do not match"), mismatch.transcript)
        XCTAssertEqual(try passwd(["--check", "hana"], input: "typed-twice\n").status, 0, "unchanged after a mismatch")

        // -p on a terminal: one line, no prompt.
        let piped = try onTerminal(["-p", "hana"], answers: ["third-one"], unprompted: true)
        XCTAssertEqual(piped.status, 0, piped.transcript)
        XCTAssertFalse(piped.transcript.contains("Password:"), piped.transcript)
        XCTAssertEqual(try passwd(["--check", "hana"], input: "third-one\n").status, 0)
    }

    // MARK: The file

    func testDatabaseIsCreated0640RootAndGroupAndKeepsItsModeOnEveryChange() throws {
        XCTAssertEqual(try passwd(["-c", "alice"], input: "pw\n").status, 0)
        var st = stat()
        XCTAssertEqual(stat(database, &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o640)
        XCTAssertEqual(st.st_uid, 0)
        XCTAssertEqual(st.st_gid, try XCTUnwrap(getgrnam("sasl")).pointee.gr_gid)
        XCTAssertFalse(FileManager.default.fileExists(atPath: database + ".lock"), "the lock is gone after")

        chmod(database, 0o600)
        for (args, input) in [(["-c", "bob"], "pw\n"), (["bob"], "pw2\n"), (["-d", "bob"], nil)] as [([String], String?)] {
            XCTAssertEqual(try passwd(args, input: input).status, 0)
            XCTAssertEqual(stat(database, &st), 0)
            XCTAssertEqual(st.st_mode & 0o7777, 0o600, "\(args) changed the mode")
        }
        let badGroup = try passwd(["-o", "sasl_sasldb_group=no-such-group-here", "-f", "\(dir)/other", "-c", "x"], input: "pw\n")
        assertRefused(badGroup, 78, "-o:1: sasl_sasldb_group no-such-group-here: no such group on this system")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/other"))
    }

    func testTwentyConcurrentCreatesAreAllListed() throws {
        let users = (1...20).map { "user\($0)" }
        var statuses = [Int32](repeating: -1, count: users.count)
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: users.count) { i in
            let status = (try? passwd(["-c", users[i]], input: "pw-\(i)\n").status) ?? -2
            lock.lock(); statuses[i] = status; lock.unlock()
        }
        XCTAssertEqual(statuses, [Int32](repeating: 0, count: users.count))
        let expected = users.flatMap { ["\($0)@example.org: authPassword", "\($0)@example.org: userPassword"] }.sorted()
        XCTAssertEqual(try realList(), expected)
        XCTAssertEqual(try ourList().sorted(), expected)
        for (i, user) in users.enumerated() {
            XCTAssertEqual(try passwd(["--check", user], input: "pw-\(i)\n").status, 0, user)
        }
    }
}
