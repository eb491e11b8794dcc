#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest

/// nestbox-reconstruct against real Dovecot: a table of damaged uidlists and folders (each on a
/// mailbox the store delivered and Dovecot served), an IMAP session that stays open across a
/// repair, and repairs running while LMTP deliveries pour into the same folder.
final class ReconstructInteropTests: XCTestCase {

    var fixture: DeliverFixture!
    var home = ""

    override func setUpWithError() throws {
        try super.setUpWithError()
        guard Harness.isRoot else {
            XCTFail("needs root (files belong to the mail owner): run the suite as root (as CI does)")
            throw LMTPTestError("not root")
        }
        guard FileManager.default.isExecutableFile(atPath: Harness.binary("nestbox-reconstruct")) else {
            XCTFail("built program not found: \(Harness.binary("nestbox-reconstruct"))")
            throw LMTPTestError("no binary")
        }
        fixture = try DeliverFixture("reconstruct-interop")
        home = try fixture.makeUser("alice")
    }

    override func tearDown() {
        fixture = nil
        super.tearDown()
    }

    func message(_ n: Int) -> String {
        "From: a@example.org\nSubject: number \(n)\nMessage-ID: <x\(n)@example.org>\n\nbody \(n)\n"
    }

    func reconstruct(_ arguments: [String]) throws -> Harness.Result {
        try Harness.run(Harness.binary("nestbox-reconstruct"), ["-C", fixture.configPath] + arguments)
    }

    static let complaints = ["UIDVALIDITY changed", "corrupt", "renumber", "Duplicate file", "Panic", "Error"]

    /// Message-ID -> "uid flags" as Dovecot reports them (\Recent left out: it depends on who
    /// looked first), and doveadm's stderr.
    func dovecotView(_ dovecot: Dovecot) throws -> (view: [String: [String]], stderr: String) {
        let r = try dovecot.doveadm(["fetch", "uid flags hdr.message-id", "mailbox", "INBOX", "all"])
        var view: [String: [String]] = [:]
        for m in Dovecot.parseFetch(r.stdout, fields: ["uid", "flags", "hdr.message-id"]) {
            let id = (m["hdr.message-id"] ?? "").trimmingCharacters(in: .whitespaces)
            let flags = (m["flags"] ?? "").split(separator: " ").filter { $0 != "\\Recent" }.sorted().joined(separator: " ")
            view[id, default: []].append("\(m["uid"] ?? "?") \(flags)")
        }
        return (view, r.stderr)
    }

    /// Ten delivered messages, flags set through Dovecot (so it has served the folder and its
    /// index files exist).
    func populate() throws -> Dovecot {
        for n in 1...10 { XCTAssertEqual(try fixture.deliver(["alice"], message(n)).status, 0) }
        let dovecot = try Dovecot(mailRoot: home)
        _ = try dovecot.doveadm(["flags", "add", "\\Seen \\Flagged", "mailbox", "INBOX", "uid", "2"])
        _ = try dovecot.doveadm(["flags", "add", "\\Answered", "mailbox", "INBOX", "uid", "5"])
        _ = try dovecot.doveadm(["flags", "add", "\\Seen", "mailbox", "INBOX", "uid", "9"])
        return dovecot
    }

    var listPath: String { "\(home)/dovecot-uidlist" }

    func listLines() -> [String] {
        Harness.read(listPath).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    }

    func writeList(_ lines: [String]) throws { try fixture.writeFile(listPath, lines.joined(separator: "\n")) }

    /// The message file of uid `uid`, as the list names it (path in new/ or cur/).
    func file(ofUID uid: Int) throws -> String {
        let line = try XCTUnwrap(listLines().dropFirst().first { $0.hasPrefix("\(uid) ") })
        let stem = String(line[line.index(after: try XCTUnwrap(line.firstIndex(of: ":")))...])
        for sub in ["new", "cur"] {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: "\(home)/\(sub)")) ?? [] where name.hasPrefix(stem) {
                return "\(home)/\(sub)/\(name)"
            }
        }
        throw LMTPTestError("no file for uid \(uid)")
    }

    func baseOf(_ path: String) -> String {
        let name = (path as NSString).lastPathComponent
        return String(name.prefix { $0 != "," && $0 != ":" })
    }

    struct Case {
        var name: String
        /// Damages the folder; returns the report fragments the repair must print.
        var damage: (ReconstructInteropTests) throws -> [String]
        /// Message-IDs that are gone after the repair.
        var gone: Set<String> = []
        /// Message-ID -> the "uid flags" entries Dovecot must show after the repair (when they
        /// differ from before the damage).
        var changed: [String: [String]] = [:]
        /// Every UID moves up by this much (the list was lost: fresh UIDs above every UID
        /// Dovecot used, under the same UIDVALIDITY).
        var shift = 0
    }

    static let cases: [Case] = [
        Case(name: "torn last line, base whole", damage: { t in
            let text = Harness.read(t.listPath)
            try t.fixture.writeFile(t.listPath, String(text.dropLast(10)))
            return ["torn last line", "kept uid 10 for "]
        }),
        Case(name: "torn last line inside its base", damage: { t in
            let text = Harness.read(t.listPath)
            let last = text.dropLast().split(separator: "\n").last!
            try t.fixture.writeFile(t.listPath, String(text.dropLast(last.count + 1)) + String(last.prefix(9)))
            return ["torn last line", "has no uid", "added as uid 11"]
        }, changed: ["<x10@example.org>": ["11 "]]),
        Case(name: "garbage line in the middle", damage: { t in
            var lines = t.listLines()
            lines.insert("garbage that is no record", at: 5)
            try t.writeList(lines)
            return ["uidlist line 6: garbage", "dropped"]
        }),
        Case(name: "two records swapped", damage: { t in
            var lines = t.listLines()
            lines.swapAt(3, 4)
            try t.writeList(lines)
            return ["uid 3 not above 4", "sorted"]
        }),
        Case(name: "duplicated record line", damage: { t in
            var lines = t.listLines()
            lines.insert(lines[5], at: 6)
            try t.writeList(lines)
            return ["uids 5 and 5 both name", "kept uid 5"]
        }),
        Case(name: "header N lower than the records", damage: { t in
            var lines = t.listLines()
            lines[0] = lines[0].split(separator: " ").map { $0.hasPrefix("N") ? "N3" : String($0) }.joined(separator: " ")
            try t.writeList(lines)
            return []   // the store's own format: appends never rewrite N
        }),
        Case(name: "header V0", damage: { t in
            var lines = t.listLines()
            lines[0] = lines[0].split(separator: " ").map { $0.hasPrefix("V") ? "V0" : String($0) }.joined(separator: " ")
            try t.writeList(lines)
            return ["uidvalidity is 0", "dropped", "uidlist has no readable UIDVALIDITY", "from dovecot.index"]
        }),
        Case(name: "uidlist deleted", damage: { t in
            try FileManager.default.removeItem(atPath: t.listPath)
            return ["dovecot-uidlist missing", "uidlist has no readable UIDVALIDITY", "from dovecot.index", "added as uid 11", "added as uid 20"]
        }, shift: 10),
        Case(name: "record whose file was deleted", damage: { t in
            try FileManager.default.removeItem(atPath: try t.file(ofUID: 3))
            return ["uid 3 has no file", "dropped"]
        }, gone: ["<x3@example.org>"]),
        Case(name: "message file with no record", damage: { t in
            let source = try t.file(ofUID: 4)
            let name = (source as NSString).lastPathComponent
            let fresh = "\(t.home)/new/1700000000.M1P1Q1.test" + name[name.firstIndex(of: ",")!...]
            try FileManager.default.copyItem(atPath: source, toPath: fresh)
            try Harness.chownToMailOwner(fresh)
            return ["1700000000.M1P1Q1.test", "has no uid", "added as uid 11"]
        }, changed: ["<x4@example.org>": ["4 ", "11 "]]),
        Case(name: "two files with the same base", damage: { t in
            let source = try t.file(ofUID: 6)
            let name = (source as NSString).lastPathComponent
            let stem = String(name.prefix { $0 != ":" })
            let twin = source.contains("/new/") ? "\(t.home)/cur/\(stem):2," : "\(t.home)/new/\(stem)"
            try FileManager.default.copyItem(atPath: source, toPath: twin)
            try Harness.chownToMailOwner(twin)
            return ["base \(t.baseOf(source)) used by two files", "renamed to base", "added as uid 11"]
        }, changed: ["<x6@example.org>": ["6 ", "11 "]]),
        Case(name: "wrong size in the file name", damage: { t in
            let source = try t.file(ofUID: 7)
            let wrong = source.replacingOccurrences(of: ",S=", with: ",S=9")
            try FileManager.default.moveItem(atPath: source, toPath: wrong)
            return ["file name has ,S=9", "renamed with ,S="]
        }),
        Case(name: "empty message file", damage: { t in
            let source = try t.file(ofUID: 8)
            try t.fixture.writeFile(source, "")
            return ["empty message file", "moved to", "lost+found", "uid 8 has no file"]
        }, gone: ["<x8@example.org>"]),
    ]

    func testCorruptionTableKeepsUIDsAndFlagsDovecotSees() throws {
        for c in Self.cases {
            do { try check(c) } catch { XCTFail("\(c.name): \(error)") }
        }
    }

    func check(_ c: Case) throws {
        do {
            // A fresh mailbox per case.
            fixture = try DeliverFixture("reconstruct-interop")
            home = try fixture.makeUser("alice")
            let dovecot = try populate()
            let before = try dovecotView(dovecot).view
            XCTAssertEqual(before.count, 10, c.name)
            XCTAssertEqual(before["<x2@example.org>"], ["2 \\Flagged \\Seen"], c.name)

            let expected = try c.damage(self)
            let repair = try reconstruct(["user/alice"])
            XCTAssertEqual(repair.status, 0, "\(c.name): \(repair.stdout) \(repair.stderr)")
            for fragment in expected {
                XCTAssertTrue(repair.stdout.contains(fragment), "\(c.name): no \"\(fragment)\" in:\n\(repair.stdout)")
            }
            for loud in ["NO UID COULD BE KEPT", "took new UIDVALIDITY"] {
                XCTAssertFalse((repair.stdout + repair.stderr).contains(loud), "\(c.name): \(repair.stdout) \(repair.stderr)")
            }

            let (after, stderr) = try dovecotView(dovecot)
            for complaint in Self.complaints {
                XCTAssertFalse(stderr.contains(complaint), "\(c.name): doveadm: \(stderr)")
            }
            for (id, entries) in before where !c.gone.contains(id) {
                let shifted = entries.map { e -> String in
                    let uid = Int(e.prefix { $0 != " " })!
                    return "\(uid + c.shift)" + e.drop { $0 != " " }
                }
                XCTAssertEqual(after[id], c.changed[id] ?? shifted, "\(c.name): \(id)")
            }
            for id in c.gone { XCTAssertNil(after[id], "\(c.name): \(id) is still there") }
            XCTAssertEqual(Set(after.keys), Set(before.keys).subtracting(c.gone), c.name)

            // Idempotent: nothing left to report.
            let again = try reconstruct(["-q", "user/alice"])
            XCTAssertEqual(again.status, 0, "\(c.name): \(again.stdout) \(again.stderr)")
            XCTAssertEqual(again.stdout, "", c.name)
            let plain = try reconstruct(["user/alice"])
            XCTAssertTrue(plain.stdout.contains(" 0 problems"), "\(c.name): \(plain.stdout)")
            // And Dovecot still agrees.
            XCTAssertEqual(try dovecotView(dovecot).view, after, c.name)
        }
    }

    /// One IMAP session across a repair: the script selects INBOX and fetches, then waits for a
    /// line on stdin (the damage and the repair happen meanwhile), then NOOP and fetches again.
    /// Prints JSON: both fetches (uid -> flags without \Recent), every untagged line after
    /// the repair, and errors.
    /// Usage: session.py <imap> <dovecot.conf> <home> <imap-log>
    static let sessionScript = #"""
    import json, re, subprocess, sys

    imap, conf, home, imaplog = sys.argv[1:5]
    \#(Dovecot.imapPrelude)
    untagged = []
    def fetch():
        got = {}
        pending = None
        for s in cmd("UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"):
            m = re.search(r"UID (\d+) FLAGS \(([^)]*)\)", s)
            if m:
                pending = (m.group(1), " ".join(sorted(f for f in m.group(2).split() if f != "\\Recent")))
                continue
            m = re.match(r"Message-ID: (<[^>]*>)", s)
            if m and pending:
                got[pending[0]] = pending[1] + " " + m.group(1)
                pending = None
        return got
    errors = []
    result = {}
    try:
        p.stdout.readline()  # * PREAUTH
        selected = cmd("SELECT INBOX")
        result["select"] = selected
        result["before"] = fetch()
        print("ready", flush=True)
        sys.stdin.readline()
        untagged += cmd("NOOP")
        result["after"] = fetch()
        print("again", flush=True)
        sys.stdin.readline()
        untagged += cmd("NOOP")
        result["later"] = fetch()
        cmd("LOGOUT")
    except Exception as e:
        errors.append(repr(e))
    result["untagged"] = untagged
    result["errors"] = errors
    print(json.dumps(result), flush=True)
    """#

    func testOpenIMAPSessionKeepsWorkingAcrossARepair() throws {
        let dovecot = try populate()
        let imapLog = "\(fixture.dir)/imap.log"
        let session = try IMAPScript(Self.sessionScript, name: "session.py", in: fixture.dir, [dovecot.configPath, home, imapLog])
        // The session has selected INBOX and fetched.
        XCTAssertTrue(session.waitFor("ready"), session.text)

        // The damage: a garbage line and the record of uid 6 gone (its file stays).
        var lines = listLines()
        let six = try XCTUnwrap(lines.dropFirst().firstIndex { $0.hasPrefix("6 ") })
        lines.remove(at: six)
        lines.insert("garbage that is no record", at: 3)
        try writeList(lines)
        let repair = try reconstruct(["user/alice"])
        XCTAssertEqual(repair.status, 0, repair.stdout + repair.stderr)
        XCTAssertTrue(repair.stdout.contains("garbage"), repair.stdout)
        XCTAssertTrue(repair.stdout.contains("has no uid"), repair.stdout)

        // NOOP and fetch right after the repair; then a delivery (so the session must sync the
        // folder) and NOOP and fetch again.
        session.send("go")
        session.waitFor("again")
        XCTAssertEqual(try fixture.deliver(["alice"], message(11)).status, 0)
        session.send("go")
        let json = try session.finish()
        let text = session.text
        XCTAssertEqual(json["errors"] as? [String], [])
        let before = try XCTUnwrap(json["before"] as? [String: String])
        let after = try XCTUnwrap(json["after"] as? [String: String], text)
        let later = try XCTUnwrap(json["later"] as? [String: String], text)
        XCTAssertEqual(before.count, 10)
        XCTAssertEqual(before["2"], "\\Flagged \\Seen <x2@example.org>")
        XCTAssertEqual(before["5"], "\\Answered <x5@example.org>")
        // Every message whose record was readable keeps its UID and flags in the open session.
        for (uid, entry) in before where uid != "6" {
            XCTAssertEqual(after[uid], entry, "uid \(uid) right after the repair")
            XCTAssertEqual(later[uid], entry, "uid \(uid) after the next sync")
        }
        // The message whose record was lost is there once (under a UID above every used one
        // once the session has synced), and so is the new delivery.
        let sixes = later.filter { $0.value.hasSuffix("<x6@example.org>") }.map(\.key)
        XCTAssertEqual(sixes.count, 1, "\(later)")
        XCTAssertTrue(sixes.allSatisfy { $0 == "6" || Int($0)! > 10 }, "\(sixes)")
        XCTAssertEqual(later.filter { $0.value.hasSuffix("<x11@example.org>") }.count, 1, "\(later)")
        XCTAssertEqual(later.count, 11, "\(later)")
        let untagged = try XCTUnwrap(json["untagged"] as? [String])
        for line in untagged {
            XCTAssertFalse(line.contains("BYE"), line)
            XCTAssertFalse(line.contains("UIDVALIDITY"), line)
        }
        let complaints = Harness.read(imapLog).split(separator: "\n").filter { l in
            l.contains("dovecot-uidlist") || Self.complaints.contains { l.contains($0) }
        }
        XCTAssertEqual(complaints, [], "Dovecot's imap complained")
        // doveadm agrees with the session and has nothing to say either.
        let (view, stderr) = try dovecotView(dovecot)
        for (uid, entry) in later {
            let id = String(entry[entry.range(of: "<")!.lowerBound...])
            let flags = entry.dropLast(id.count).trimmingCharacters(in: .whitespaces)
            XCTAssertEqual(view[id], ["\(uid) \(flags)"], id)
        }
        for complaint in Self.complaints { XCTAssertFalse(stderr.contains(complaint), stderr) }
        let again = try reconstruct(["-q", "user/alice"])
        XCTAssertEqual(again.status, 0, again.stdout + again.stderr)
        XCTAssertEqual(again.stdout, "")
    }

    /// LMTP clients deliver to alice while a loop runs nestbox-reconstruct on her INBOX again
    /// and again. Prints JSON: LMTP failures, and per reconstruct run its exit status and output.
    /// Usage: storm.py <port> <reconstruct> <nestbox.conf> <clients> <per-client>
    static let stormScript = #"""
    import json, socket, subprocess, sys, threading

    port, program, conf = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    clients, per = int(sys.argv[4]), int(sys.argv[5])
    lock = threading.Lock()
    failures = []
    runs = []
    delivering = threading.Event()
    delivering.set()

    def lmtp(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=120)
            f = s.makefile("rb")
            def reply():
                while True:
                    line = f.readline().decode()
                    if not line:
                        raise EOFError("server closed")
                    if len(line) < 4 or line[3] != "-":
                        return line.strip()
            reply()
            s.sendall(b"LHLO storm.test\r\n"); reply()
            for i in range(per):
                mid = "<storm-%d-%d@test>" % (n, i)
                s.sendall(b"MAIL FROM:<s@test>\r\nRCPT TO:<alice>\r\nDATA\r\n")
                for want in ("250", "250", "354"):
                    r = reply()
                    if not r.startswith(want):
                        with lock: failures.append("lmtp %s: %s" % (mid, r))
                s.sendall(("Message-ID: %s\r\nSubject: storm %d %d\r\n\r\nbody\r\n.\r\n" % (mid, n, i)).encode())
                r = reply()
                if not r.startswith("250"):
                    with lock: failures.append("lmtp %s: %s" % (mid, r))
            s.sendall(b"QUIT\r\n"); reply()
        except Exception as e:
            with lock: failures.append("lmtp client %d: %r" % (n, e))

    def repairs():
        while delivering.is_set():
            r = subprocess.run([program, "-C", conf, "-q", "user/alice"], capture_output=True, text=True,
                               env={"SWIFT_BACKTRACE": "enable=yes,interactive=no", "PATH": "/usr/bin:/bin"})
            runs.append({"status": r.returncode, "stdout": r.stdout, "stderr": r.stderr})

    loop = threading.Thread(target=repairs)
    loop.start()
    senders = [threading.Thread(target=lmtp, args=(n,)) for n in range(clients)]
    for t in senders: t.start()
    for t in senders: t.join()
    delivering.clear()
    loop.join(timeout=120)
    print(json.dumps({"failures": failures, "runs": runs}))
    """#

    func testRepairsDuringOneThousandLMTPDeliveriesLoseNothing() throws {
        let port = try Net.freeLoopbackPort()
        try fixture.set("servername", "storm.example.test")
        try fixture.set("lmtp_listen", "127.0.0.1:\(port)")
        let server = LMTPDaemon(configPath: fixture.configPath, logPath: "\(fixture.dir)/lmtpd.log", socketPath: nil, port: port)
        try server.start()
        defer { server.stop() }
        let clients = 4, perClient = 250
        let r = try Python.run(Self.stormScript, name: "storm.py", in: fixture.dir,
                               [String(port), Harness.binary("nestbox-reconstruct"), fixture.configPath,
                                String(clients), String(perClient)], timeout: 600)
        XCTAssertEqual(r.status, 0, r.stderr)
        guard let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
              let failures = json["failures"] as? [String], let runs = json["runs"] as? [[String: Any]] else {
            XCTFail("no report from the script: \(r.stdout) \(r.stderr)")
            return
        }
        XCTAssertEqual(failures, [])
        XCTAssertGreaterThan(runs.count, 1, "the repairs ran while delivering")
        for run in runs {
            let status = run["status"] as? Int ?? -1
            XCTAssertTrue(status == 0 || status == 75, "reconstruct exited \(status): \(run["stdout"] ?? "") \(run["stderr"] ?? "")")
            // Deliveries hold the list's lock while they name a file: a repair never finds one
            // half done.
            if status == 0 { XCTAssertEqual(run["stdout"] as? String, "", "a repair found a problem mid-delivery") }
        }

        // Every Message-ID stored exactly once.
        var ids: [String: Int] = [:]
        var stems: [String] = []
        for sub in ["new", "cur"] {
            for name in try FileManager.default.contentsOfDirectory(atPath: "\(home)/\(sub)") {
                let text = Harness.read("\(home)/\(sub)/\(name)")
                let id = MaildirCheck.header("Message-ID", in: text) ?? "none: \(name)"
                ids[id, default: 0] += 1
                stems.append(String(name.prefix { $0 != ":" }))
            }
        }
        XCTAssertEqual(ids.count, clients * perClient, "distinct messages stored")
        XCTAssertEqual(ids.filter { $0.value != 1 }.count, 0, "stored twice: \(ids.filter { $0.value != 1 }.prefix(5))")
        for n in 0..<clients {
            for i in 0..<perClient where ids["<storm-\(n)-\(i)@test>"] == nil {
                XCTFail("<storm-\(n)-\(i)@test> was lost")
            }
        }
        // Every file has one UID, every UID one file.
        let records = listLines().dropFirst().filter { !$0.isEmpty }
        let recordStems = records.compactMap { line in line.firstIndex(of: ":").map { String(line[line.index(after: $0)...]) } }
        let uids = records.compactMap { $0.split(separator: " ").first.flatMap { Int($0) } }
        XCTAssertEqual(Set(uids).count, uids.count, "a UID is used twice")
        XCTAssertEqual(recordStems.count, Set(recordStems).count, "a file is named twice")
        XCTAssertEqual(Set(recordStems), Set(stems), "the list and the files disagree")
        XCTAssertEqual(uids, uids.sorted(), "the list is not in UID order")

        // A final repair finds nothing, and Dovecot sees every message once.
        let final = try reconstruct(["user/alice"])
        XCTAssertEqual(final.status, 0, final.stdout + final.stderr)
        XCTAssertEqual(final.stdout.split(separator: "\n").count, 1, final.stdout)
        XCTAssertTrue(final.stdout.contains("\(clients * perClient) messages, 0 problems"), final.stdout)
        let (view, stderr) = try dovecotView(try Dovecot(mailRoot: home))
        XCTAssertEqual(view.count, clients * perClient)
        XCTAssertEqual(view.filter { $0.value.count != 1 }.count, 0)
        for complaint in Self.complaints { XCTAssertFalse(stderr.contains(complaint), stderr) }
    }
}
