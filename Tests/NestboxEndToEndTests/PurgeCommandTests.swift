#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// The purge tests' setting: the built nestbox-purge, and a mail root with alice's INBOX (a
/// 100 MiB, 100000-message maildirsize limit) and her Trash.
class PurgeTestCase: XCTestCase {
    var fixture: DeliverFixture!
    var home = ""

    override func setUpWithError() throws {
        try super.setUpWithError()
        guard FileManager.default.isExecutableFile(atPath: Harness.binary("nestbox-purge")) else {
            XCTFail("built program not found: \(Harness.binary("nestbox-purge"))")
            throw LMTPTestError("no binary")
        }
        fixture = try DeliverFixture("purge")
        home = try fixture.makeUser("alice", limits: QuotaLimits(bytes: 104_857_600, messages: 100_000), folders: ["Trash"])
    }

    override func tearDown() {
        fixture = nil
        super.tearDown()
    }

    func purge(_ arguments: [String], environment: [String: String]? = nil) throws -> Harness.Result {
        try Harness.run(Harness.binary("nestbox-purge"), ["-C", fixture.configPath] + arguments, environment: environment)
    }
}

/// nestbox-purge as an administrator meets it: usage errors and unknown mailboxes, a dry run
/// that leaves the tree byte for byte, the JSON report, a lock that cannot be had, an mbox
/// spool, and the nightly line of cron/nestbox run exactly as written.
final class PurgeCommandTests: PurgeTestCase {

    func message(_ n: Int, date: String = "Tue, 1 Dec 2026 10:00:00 +0000") -> String {
        "From: a@example.org\nDate: \(date)\nSubject: number \(n)\nMessage-ID: <p\(n)@example.org>\n\nbody \(n)\n"
    }

    /// Delivers `count` messages to alice's INBOX and flags those of `deleted` (1-based) \Deleted.
    func populate(_ count: Int, deleted: Set<Int>) throws {
        for n in 1...count { XCTAssertEqual(try fixture.deliver(["alice"], message(n)).status, 0) }
        let inbox = fixture.store.inbox(of: home)
        for m in try inbox.messages() where deleted.contains(Int(m.uid!)) {
            try inbox.setFlags(uid: m.uid!, flags: ["\\Deleted"], keywords: [])
        }
        try Harness.chownTreeToMailOwner(fixture.root)
    }

    /// Every file below the mail root: relative path -> its inode, size, mtime and bytes (tmp/
    /// files only by stat: reading them would make them look recently used).
    func tree() -> [String: String] {
        var out: [String: String] = [:]
        for name in Harness.files(under: fixture.root) {
            var st = stat()
            XCTAssertEqual(lstat("\(fixture.root)/\(name)", &st), 0, name)
            var entry = "\(st.st_ino) \(st.st_size) \(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec) \(st.st_mode)"
            if !name.contains("tmp/") { entry += " " + (FileManager.default.contents(atPath: "\(fixture.root)/\(name)") ?? Data()).base64EncodedString() }
            out[name] = entry
        }
        return out
    }

    func testUsageErrorsAndUnknownMailboxes() throws {
        for arguments in [[], ["--all", "user/alice"], ["-d", "soon", "-f", "user/alice"], ["-b", "1", "-k", "1", "-f", "user/alice"],
                          ["-x", "-f", "user/alice"], ["-i", "-f", "user/alice"], ["-E", "x3"], ["-b", "-5", "-f", "user/alice"],
                          ["-Q", "user/alice"], ["user/alice"]] {
            let r = try purge(arguments)
            XCTAssertEqual(r.status, 64, "\(arguments): \(r.stdout) \(r.stderr)")
        }
        let unknown = try purge(["-f", "user/nobody"])
        XCTAssertEqual(unknown.status, 67, unknown.stderr)
        XCTAssertTrue(unknown.stderr.contains("user/nobody: no such mailbox"), unknown.stderr)
        XCTAssertEqual(try purge(["-f", "user/nobody/*"]).status, 67, "a pattern that matches nothing")
        // A pattern without -f takes only shared folders: none here, nothing done, exit 0.
        let shared = try purge(["user/*"])
        XCTAssertEqual(shared.status, 0, shared.stderr)
        XCTAssertTrue(shared.stdout.contains("all 0 mailboxes"), shared.stdout)
    }

    /// -n with every kind of work asked for changes no byte, name or file, and makes no lock.
    func testDryRunChangesNothingAtAll() throws {
        try populate(6, deleted: [2, 5])
        try fixture.writeFile("\(home)/tmp/left-by-a-crash", "x")
        let old = timeval(tv_sec: time(nil) - 40 * 3600, tv_usec: 0)
        var times = [old, old]
        XCTAssertEqual(utimes("\(home)/tmp/left-by-a-crash", &times), 0)
        let before = tree()
        let r = try purge(["-n", "-v", "-f", "--all", "-E", "1d", "--rules"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(tree(), before, "-n changed the tree")
        XCTAssertTrue(r.stdout.contains("user/alice: would expunge uid 2 "), r.stdout)
        XCTAssertTrue(r.stdout.contains("user/alice: would expunge uid 5 "), r.stdout)
        XCTAssertTrue(r.stdout.contains("would prune: 0 duplicate records, 0 spool files, 0 creation trees, 1 tmp/ files"), r.stdout)
        XCTAssertTrue(r.stdout.contains("would expunge 2 messages"), r.stdout)

        // The real run then does what the dry run said.
        let real = try purge(["-f", "--all", "-E", "1d"])
        XCTAssertEqual(real.status, 0, real.stdout + real.stderr)
        XCTAssertTrue(real.stdout.contains("pruned: 0 duplicate records, 0 spool files, 0 creation trees, 1 tmp/ files"), real.stdout)
        XCTAssertEqual(try fixture.messages("alice").compactMap(\.uid), [1, 3, 4, 6])
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(home)/tmp/left-by-a-crash"))
    }

    func testReportLinesAndJSON() throws {
        try populate(4, deleted: [1, 3])
        let sizes = try fixture.messages("alice").map(\.size)
        let json = try purge(["--json", "-f", "user/alice", "user/alice/Trash"])
        XCTAssertEqual(json.status, 0, json.stdout + json.stderr)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let boxes = try XCTUnwrap(object["mailboxes"] as? [[String: Any]])
        XCTAssertEqual(boxes.map { $0["mailbox"] as? String }, ["user/alice", "user/alice/Trash"])
        let expunged = try XCTUnwrap(boxes[0]["expunged"] as? [String: Int])
        XCTAssertEqual(expunged["messages"], 2)
        XCTAssertEqual(expunged["bytes"], Int(sizes[0] + sizes[2]))
        XCTAssertEqual((boxes[0]["remaining"] as? [String: Int])?["messages"], 2)
        XCTAssertEqual((object["total"] as? [String: Int])?["messages"], 4)
        XCTAssertTrue(object["pruned"] is NSNull)
        XCTAssertEqual((object["errors"] as? [Any])?.count, 0)
        // maildirsize counts exactly the survivors.
        let usage = try XCTUnwrap(try QuotaRoot(root: home).current()).usage
        XCTAssertEqual(usage, QuotaUsage(bytes: sizes[1] + sizes[3], messages: 2))

        let lines = try purge(["-f", "user/alice*"])
        XCTAssertEqual(lines.status, 0, lines.stderr)
        XCTAssertEqual(lines.stdout.split(separator: "\n").map(String.init), [
            "user/alice: total 2 messages \(sizes[1] + sizes[3]) bytes, expunged 0 messages 0 bytes, remaining 2 messages \(sizes[1] + sizes[3]) bytes",
            "user/alice/Trash: total 0 messages 0 bytes, expunged 0 messages 0 bytes, remaining 0 messages 0 bytes",
            "all 2 mailboxes: total 2 messages \(sizes[1] + sizes[3]) bytes, expunged 0 messages 0 bytes, remaining 2 messages \(sizes[1] + sizes[3]) bytes",
        ])
    }

    /// A folder whose uidlist lock another live process holds: 75 when nothing could be done,
    /// 1 when another folder was purged.
    func testLockTimeoutIsTemporaryAndPartialFailureIsOne() throws {
        try populate(3, deleted: [2])
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, 255)
        let lock = "\(home)/.Trash/dovecot-uidlist.lock"
        try fixture.writeFile(lock, "\(getpid()):\(String(cString: host))")
        defer { unlink(lock) }
        let alone = try purge(["--override", "lock_timeout=1", "-f", "user/alice/Trash"])
        XCTAssertEqual(alone.status, 75, alone.stdout + alone.stderr)
        XCTAssertTrue(alone.stderr.contains("user/alice/Trash: 4."), alone.stderr)
        let both = try purge(["--override", "lock_timeout=1", "-f", "user/alice", "user/alice/Trash"])
        XCTAssertEqual(both.status, 1, both.stdout + both.stderr)
        XCTAssertTrue(both.stdout.contains("user/alice: total 3 messages"), both.stdout)
        XCTAssertEqual(try fixture.messages("alice").compactMap(\.uid), [1, 3])
    }

    /// --rules: Trash keeps what is younger than its rule and what is \Flagged; INBOX has no
    /// rule and loses only its \Deleted.
    func testRulesExpireByFolder() throws {
        try fixture.set("purge_rules", "Trash=30d Junk=1d+flagged")
        let trash = try fixture.store.folder("Trash", in: home)
        let now = Int(time(nil))
        var stems: [String: String] = [:]
        for (label, age, flags) in [("old", 40, ""), ("old-flagged", 40, "F"), ("young", 3, "")] {
            let body = "Subject: \(label)\n\n\(label)\n"
            let base = "\(now - age * 86400).M1P\(age)Q\(flags.isEmpty ? 1 : 2).test"
            let stem = MaildirName.stem(base: base, size: Int64(body.utf8.count), virtualSize: Int64(body.utf8.count + 3))
            let name = flags.isEmpty ? stem : "\(stem):2,\(flags)"
            try fixture.writeFile("\(trash.path)/\(flags.isEmpty ? "new" : "cur")/\(name)", body)
            stems[label] = stem
        }
        _ = try trash.assignUIDs()
        try Harness.chownTreeToMailOwner(fixture.root)
        let r = try purge(["-f", "-v", "--rules", "user/alice/*"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains(stems["old"]!), r.stdout)
        let left = try trash.messages().map(\.name.stem).sorted()
        XCTAssertEqual(left, [stems["old-flagged"]!, stems["young"]!].sorted())
    }

    /// --mbox: a spool file's D messages go, the rest stays byte for byte.
    func testMboxSpoolFile() throws {
        let spool = "\(fixture.dir)/spool"
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        try Harness.chownToMailOwner(spool)
        try fixture.set("mbox_spool_directory", spool)
        let keep1 = "From a@example.org  Tue Dec  1 10:00:00 2026\nSubject: keep\nStatus: RO\n\nkeep me\n\n"
        let gone = "From b@example.org  Tue Dec  1 10:01:00 2026\nSubject: gone\nStatus: RO\nX-Status: D\n\ndelete me\n\n"
        let keep2 = "From c@example.org  Tue Dec  1 10:02:00 2026\nSubject: keep too\n\nlast\n"
        try fixture.writeFile("\(spool)/alice", keep1 + gone + keep2)
        let dry = try purge(["-n", "--mbox", "alice"])
        XCTAssertEqual(dry.status, 0, dry.stdout + dry.stderr)
        XCTAssertTrue(dry.stdout.contains("\(spool)/alice: total 3 messages"), dry.stdout)
        XCTAssertEqual(Harness.read("\(spool)/alice"), keep1 + gone + keep2)
        let r = try purge(["-f", "--all", "--json"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(Harness.read("\(spool)/alice"), keep1 + keep2)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual((object["expunged"] as? [String: Int])?["messages"], 1)
        XCTAssertEqual(try purge(["--mbox", "bob"]).status, 67, "a spool file that does not exist")
    }

    /// The schedule line of cron/nestbox, run as written (as its user, through sh, with
    /// NESTBOX_CONF for the configuration and the built program for the installed one): it
    /// prints nothing, exits 0, and did the night's work.
    func testNightlyCronLineRunsAsWritten() throws {
        try populate(5, deleted: [1, 4])
        try fixture.set("purge_rules", "Trash=30d")
        let db = DuplicateDB(directory: fixture.store.duplicatesDirectory, expiry: 86400)
        try FileManager.default.createDirectory(atPath: db.directory, withIntermediateDirectories: true)
        let key = DuplicateDB.key(messageID: "<old@example.org>", date: nil, mailbox: "alice")!
        db.record(key, seconds: time(nil) - 10 * 86400)
        try Harness.chownTreeToMailOwner(fixture.root)

        let sample = Harness.read("\(Harness.packageRoot)/cron/nestbox")
        let line = try XCTUnwrap(sample.split(separator: "\n").first { !$0.hasPrefix("#") && $0.contains("nestbox-purge") })
        let fields = line.split(separator: " ", maxSplits: 6, omittingEmptySubsequences: true).map { $0.trimmingCharacters(in: .whitespaces) }
        XCTAssertEqual(fields.count, 7, "m h dom mon dow user command")
        XCTAssertEqual(fields[5], Harness.mailOwner, "runs as the mail owner")
        XCTAssertTrue(sample.contains("MAILTO="), "cron mails what is printed")
        let installed = "/usr/local/bin/nestbox-purge"
        XCTAssertTrue(fields[6].hasPrefix(installed + " "), fields[6])
        let command = fields[6].replacingOccurrences(of: installed, with: Harness.binary("nestbox-purge"))
        let asOwner = Harness.isRoot ? ["/usr/bin/setpriv", "--reuid", Harness.mailOwner, "--regid", Harness.mailOwner,
                                        "--init-groups", "/bin/sh", "-c", command] : ["/bin/sh", "-c", command]
        let r = try Harness.run(asOwner[0], Array(asOwner.dropFirst()), environment: ["NESTBOX_CONF": fixture.configPath])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(r.stdout + r.stderr, "", "a quiet night: cron mails nothing")
        XCTAssertEqual(try fixture.messages("alice").compactMap(\.uid), [2, 3, 5])
        XCTAssertFalse(db.contains(key))
        XCTAssertEqual(Harness.files(under: db.directory), [], "the expired record was pruned")
        XCTAssertEqual(try XCTUnwrap(try QuotaRoot(root: home).current()).usage.messages, 3)

        // A failing night prints, so cron mails it: an unreadable configuration.
        let failing = try Harness.run(asOwner[0], Array(asOwner.dropFirst()), environment: ["NESTBOX_CONF": "\(fixture.dir)/missing.conf"])
        XCTAssertEqual(failing.status, 0, "the echo after || ends the line")
        XCTAssertTrue(failing.stdout.contains("nestbox-purge failed with exit status 78"), failing.stdout + failing.stderr)
    }
}
