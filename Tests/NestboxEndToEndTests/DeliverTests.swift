import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// A mail root in a temporary directory with its own nestbox.conf, and the built
/// nestbox-deliver run against it the way Postfix's pipe(8) runs it.
final class DeliverFixture {
    let dir: String
    let root: String
    var settings: [String: String]
    private(set) var configPath: String

    init(_ label: String = "deliver", settings extra: [String: String] = [:]) throws {
        dir = try Harness.makeTempDir(label)
        root = "\(dir)/mail"
        // These tests send the same message again and again on purpose: duplicate suppression
        // is off unless a test turns it on (DeliverTests.testDuplicateSuppression does).
        settings = ["partition-default": root, "mail_owner": Harness.mailOwner, "duplicatesuppression": "no"]
        for (k, v) in extra { settings[k] = v }
        configPath = try Harness.writeConfig(in: dir, settings)
    }

    func set(_ key: String, _ value: String) throws {
        settings[key] = value
        configPath = try Harness.writeConfig(in: dir, settings)
    }

    var config: Config {
        var c = Config()
        for (k, v) in settings { try! c.set(k, v, file: "test", line: 0) }
        return c
    }

    var store: MailStore { MailStore(config: config) }

    /// Creates a user's INBOX (and folders) as the mail owner would have it.
    @discardableResult
    func makeUser(_ user: String, limits: QuotaLimits? = nil, folders: [String] = []) throws -> String {
        let userRoot = try store.userRoot(try store.parseRecipient(user))
        try store.createUser(root: userRoot, limits: limits, folders: folders)
        try Harness.chownTreeToMailOwner(root)
        return userRoot
    }

    func writeFile(_ path: String, _ text: String) throws {
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        try Harness.chownToMailOwner(path)
    }

    @discardableResult
    func deliver(_ arguments: [String], _ message: String) throws -> Harness.Result {
        try deliver(arguments, data: Data(message.utf8))
    }

    @discardableResult
    func deliver(_ arguments: [String], data: Data) throws -> Harness.Result {
        try Harness.run(Harness.binary("nestbox-deliver"), ["-C", configPath, "-L"] + arguments, input: data)
    }

    func messages(_ user: String, folder: String = "INBOX") throws -> [StoredMessage] {
        let userRoot = try store.userRoot(try store.parseRecipient(user))
        return try store.folder(folder, in: userRoot).messages()
    }

    func body(_ m: StoredMessage) -> String { Harness.read(m.path) }

    deinit { Harness.removeTree(dir) }
}

let sampleMessage = "From: Sender <s@example.org>\r\nTo: alice@example.test\r\nSubject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\nfirst line\r\nsecond line\r\n"

final class DeliverTests: XCTestCase {
    func testDeliversWithTraceHeadersAndLFLineEndings() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        let msg = "Return-Path: <forged@example.net>\r\n" + sampleMessage
        let r = try f.deliver(["-r", "s@example.org", "alice"], msg)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertEqual(r.stdout, "", "nothing on stdout on success")
        let ms = try f.messages("alice")
        XCTAssertEqual(ms.count, 1)
        let text = f.body(ms[0])
        XCTAssertTrue(text.hasPrefix("Return-Path: <s@example.org>\nReceived: by "), text)
        XCTAssertFalse(text.contains("forged@example.net"), "old Return-Path replaced")
        XCTAssertFalse(text.contains("\r"), "stored with LF line endings")
        XCTAssertTrue(text.hasSuffix("\nfirst line\nsecond line\n"))
        let bytes = Int64(text.utf8.count)
        XCTAssertEqual(ms[0].size, bytes)
        XCTAssertEqual(ms[0].virtualSize, bytes + Int64(text.filter { $0 == "\n" }.count))
        XCTAssertEqual(ms[0].uid, 1)
        XCTAssertTrue(r.stderr.contains("to=<alice> mailbox=alice uid=1"), r.stderr)
        XCTAssertTrue(r.stderr.contains("msgid=<m1@example.org> status=sent (delivered)"), r.stderr)
    }

    /// The Received: line names the host as Postfix does (servername when set, else the fully
    /// qualified name, as `hostname --fqdn` finds it) and carries Postfix's queue id from
    /// --queue-id, which the delivery's log line carries too.
    func testReceivedNamesTheHostAndThePostfixQueueID() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        let r = try f.deliver(["--queue-id", "4XyZ1s2Qz3", "-r", "s@example.org", "alice"], sampleMessage)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let fqdn = try Harness.run("/bin/hostname", ["--fqdn"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let short = try Harness.run("/bin/hostname", []).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let host = fqdn.contains(".") ? fqdn : short
        let text = f.body(try XCTUnwrap(try f.messages("alice").first))
        let received = try XCTUnwrap(text.range(of: #"Received: by \S+ \(Nestbox\) with local id [0-9A-F]+ \(queue id 4XyZ1s2Qz3\)\n\tfor <alice>; "#,
                                                options: .regularExpression), text)
        XCTAssertTrue(text[received].hasPrefix("Received: by \(host) (Nestbox)"), "\(text[received]) names \(host)")
        XCTAssertTrue(r.stderr.contains("queue_id=4XyZ1s2Qz3 to=<alice>") || r.stderr.contains("to=<alice> queue_id=4XyZ1s2Qz3"), r.stderr)

        try f.set("servername", "mx.example.test")
        XCTAssertEqual(try f.deliver(["--queue-id", "ABC123", "alice"], sampleMessage).status, 0)
        let sorted = try f.messages("alice").sorted { ($0.uid ?? 0) < ($1.uid ?? 0) }
        XCTAssertEqual(sorted.count, 2)
        let second = f.body(try XCTUnwrap(sorted.last))
        XCTAssertTrue(second.hasPrefix("Received: by mx.example.test (Nestbox) with local id "), second)
        XCTAssertTrue(second.contains(" (queue id ABC123)\n"), second)
        // pipe(8) passes an empty ${queue_id} when it has none: no queue id then.
        XCTAssertEqual(try f.deliver(["--queue-id", "", "alice"], sampleMessage).status, 0)
        let third = try XCTUnwrap(try f.messages("alice").sorted { ($0.uid ?? 0) < ($1.uid ?? 0) }.dropFirst(2).first)
        XCTAssertFalse(f.body(third).contains("queue id"))
        let bad = try f.deliver(["--queue-id", "A\nX-Injected: 1", "alice"], sampleMessage)
        XCTAssertEqual(bad.status, 64, "a queue id is letters and digits")
        XCTAssertEqual(try f.messages("alice").count, 3)
    }

    /// Without servername, a host whose name resolves to a fully qualified one (here a host
    /// name and /etc/hosts of our own, in private namespaces) is named by its full name.
    func testReceivedUsesTheFullyQualifiedHostName() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        try "127.0.0.1 localhost\n127.0.1.1 mx.example.test mx\n".write(toFile: "\(f.dir)/hosts", atomically: true, encoding: .utf8)
        let probe = try Harness.run("/usr/bin/unshare", ["--uts", "--mount", "true"])
        guard probe.status == 0 else {
            // The suite needs namespaces elsewhere too (LMTPServerTests, PasswdCommandTests).
            return XCTFail("unshare --uts --mount: \(probe.stderr)")
        }
        let r = try Harness.run("/usr/bin/unshare", ["--uts", "--mount", "/bin/sh", "-c",
            "hostname mx && mount --bind \(f.dir)/hosts /etc/hosts && exec \(Harness.binary("nestbox-deliver")) -C \(f.configPath) alice"],
            input: Data(sampleMessage.utf8))
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let text = f.body(try XCTUnwrap(try f.messages("alice").first))
        XCTAssertTrue(text.hasPrefix("Received: by mx.example.test (Nestbox) with local id "), text)
    }

    func testNullSenderAndMailerDaemon() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        for sender in ["", "<>", "MAILER-DAEMON"] {
            let r = try f.deliver(["-r", sender, "alice"], sampleMessage)
            XCTAssertEqual(r.status, 0, r.stdout)
        }
        for m in try f.messages("alice") { XCTAssertTrue(f.body(m).hasPrefix("Return-Path: <>\n")) }
    }

    func testEightBitBodyNoFinalNewlineAndMboxFromLine() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        var data = Data("From s@example.org Thu Nov 26 10:00:00 2026\nSubject: caf\u{e9}\n\n".utf8)
        data.append(contentsOf: [0xE9, 0xFF, 0x80, 0x41])  // raw 8-bit bytes, no final newline
        let r = try f.deliver(["-r", "s@example.org", "alice"], data: data)
        XCTAssertEqual(r.status, 0, r.stdout)
        let m = try f.messages("alice")[0]
        let bytes = try Data(contentsOf: URL(fileURLWithPath: m.path))
        XCTAssertEqual(Array(bytes.suffix(5)), [0xE9, 0xFF, 0x80, 0x41, 0x0A])
        XCTAssertFalse(String(decoding: bytes, as: UTF8.self).contains("From s@example.org Thu"))
        XCTAssertEqual(Int64(bytes.count), m.size)
    }

    func testSeveralUsersOneUnknown() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        try f.makeUser("bob")
        let r = try f.deliver(["-r", "s@example.org", "alice", "nobody", "bob"], sampleMessage)
        XCTAssertEqual(r.status, 67)
        XCTAssertEqual(r.stdout, "5.1.1 User unknown\n")
        XCTAssertEqual(try f.messages("alice").count, 1)
        XCTAssertEqual(try f.messages("bob").count, 1)
        XCTAssertNotEqual(try f.messages("alice")[0].name.base, try f.messages("bob")[0].name.base,
                          "each copy has its own base name")
        XCTAssertEqual(Harness.files(under: f.store.spoolDirectory), [], "spool file removed")
    }

    func testDetailAndDashMFollowTheACL() throws {
        let f = try DeliverFixture()
        let root = try f.makeUser("alice", folders: ["Work", "My Folder", "Ärger", "Private"])
        try f.writeFile("\(root)/.Work/dovecot-acl", "anyone p\n")
        try f.writeFile("\(root)/.My Folder/dovecot-acl", "anyone lrp\n")
        try f.writeFile("\(root)/.&AMQ-rger/dovecot-acl", "user=bob p\n")
        XCTAssertEqual(try f.deliver(["alice+Work"], sampleMessage).status, 0)
        XCTAssertEqual(try f.deliver(["-m", "My Folder", "alice"], sampleMessage).status, 0)
        XCTAssertEqual(try f.deliver(["-m", "Ärger", "alice"], sampleMessage).status, 0)  // anonymous: no p
        XCTAssertEqual(try f.deliver(["-a", "bob", "-m", "Ärger", "alice"], sampleMessage).status, 0)
        XCTAssertEqual(try f.deliver(["-m", "Private", "alice"], sampleMessage).status, 0)  // no ACL: INBOX
        XCTAssertEqual(try f.deliver(["-a", "alice", "-m", "Private", "alice"], sampleMessage).status, 0)  // owner
        XCTAssertEqual(try f.deliver(["-m", "Missing", "alice"], sampleMessage).status, 0)
        XCTAssertEqual(try f.messages("alice", folder: "Work").count, 1)
        XCTAssertEqual(try f.messages("alice", folder: "My Folder").count, 1)
        XCTAssertEqual(try f.messages("alice", folder: "Ärger").count, 1)
        XCTAssertEqual(try f.messages("alice", folder: "Private").count, 1)
        XCTAssertEqual(try f.messages("alice").count, 3)
    }

    func testSharedFolderNeedsPostRight() throws {
        let f = try DeliverFixture()
        let pub = "\(f.root)/public"
        try f.store.createUser(root: pub, limits: nil, folders: ["News", "Closed"])
        try Harness.chownTreeToMailOwner(f.root)
        try f.writeFile("\(pub)/.News/dovecot-acl", "anyone lrp\n")
        let ok = try f.deliver(["-m", "News"], sampleMessage)
        XCTAssertEqual(ok.status, 0, ok.stdout)
        XCTAssertEqual(try f.store.folder("News", in: pub).messages().count, 1)
        let denied = try f.deliver(["-m", "Closed"], sampleMessage)
        XCTAssertEqual(denied.status, 77)
        XCTAssertEqual(denied.stdout, "5.7.1 Permission denied\n")
        let missing = try f.deliver(["-m", "Nope"], sampleMessage)
        XCTAssertEqual(missing.status, 67)
        try f.set("postuser", "bb")
        XCTAssertEqual(try f.deliver(["bb+News"], sampleMessage).status, 0)
        XCTAssertEqual(try f.store.folder("News", in: pub).messages().count, 2)
    }

    func testAutocreateMakesInboxQuotaAndFolders() throws {
        let f = try DeliverFixture(settings: ["autocreate_post": "yes", "autocreate_quota": "2048",
                                              "autocreate_quota_messages": "100",
                                              "autocreate_inbox_folders": "Sent|Trash|Ärger"])
        let r = try f.deliver(["newuser"], sampleMessage)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let userRoot = "\(f.root)/newuser"
        XCTAssertTrue(Harness.read("\(userRoot)/maildirsize").hasPrefix("2097152S,100C\n"))
        for d in [".Sent", ".Trash", ".&AMQ-rger"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(userRoot)/\(d)/maildirfolder"), d)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(userRoot)/maildirfolder"), "never in the root")
        XCTAssertEqual(Harness.read("\(userRoot)/subscriptions"), "V\t2\n\nSent\nTrash\n&AMQ-rger\n")
        // autocreate_post without a quota >= 0 does not create.
        try f.set("autocreate_quota", "-1")
        XCTAssertEqual(try f.deliver(["other"], sampleMessage).status, 67)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(f.root)/other"))
    }

    func testVirtualDomains() throws {
        let f = try DeliverFixture(settings: ["virtdomains": "userid", "defaultdomain": "example.test"])
        try f.makeUser("alice@example.test")
        try f.makeUser("alice@other.example")
        XCTAssertEqual(try f.deliver(["Alice@Example.TEST"], sampleMessage).status, 0)
        XCTAssertEqual(try f.deliver(["alice@other.example"], sampleMessage).status, 0)
        XCTAssertEqual(Harness.files(under: "\(f.root)/alice/new").count, 1)
        XCTAssertEqual(Harness.files(under: "\(f.root)/domain/other.example/alice/new").count, 1)
        XCTAssertEqual(try f.deliver(["alice@../etc"], sampleMessage).status, 67)
    }

    func testAutocreatePostWithoutAutocreateQuotaSaysWhyNoMailboxWasMade() throws {
        let f = try DeliverFixture(settings: ["autocreate_post": "yes"])
        let r = try f.deliver(["newuser"], sampleMessage)
        XCTAssertEqual(r.status, 67, r.stdout + r.stderr)
        XCTAssertTrue(r.stderr.contains("autocreate_quota -1 turns autocreation off"), r.stderr)
        try f.set("autocreate_quota", "0")
        XCTAssertEqual(try f.deliver(["newuser"], sampleMessage).status, 0)
    }

    /// log_file keeps the log lines in a file on a host without syslog.
    func testLogFileKeepsTheLinesWithoutSyslog() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        let logFile = "\(f.dir)/nestbox.log"
        _ = FileManager.default.createFile(atPath: logFile, contents: nil)
        try Harness.chownToMailOwner(logFile)
        try f.set("log_file", logFile)
        XCTAssertEqual(try Harness.run(Harness.binary("nestbox-deliver"), ["-C", f.configPath, "nobody-here"],
                                       input: Data(sampleMessage.utf8)).status, 67)
        let lines = Harness.read(logFile)
        XCTAssertTrue(lines.contains("nestbox-deliver[") && lines.contains("nobody-here"), lines)
    }

    func testDuplicateSuppression() throws {
        let f = try DeliverFixture(settings: ["duplicatesuppression": "yes"])
        try f.makeUser("alice")
        let withDate = "Message-ID: <d1@example.org>\nDate: Thu, 26 Nov 2026 10:00:00 +0000\nSubject: a\n\nbody\n"
        let noDate = "Message-ID: <d2@example.org>\nSubject: b\n\nbody\n"
        for msg in [withDate, withDate, noDate, noDate] {
            XCTAssertEqual(try f.deliver(["-r", "s@example.org", "alice"], msg).status, 0)
        }
        let r = try f.deliver(["alice"], noDate)
        XCTAssertTrue(r.stderr.contains("status=sent (duplicate suppressed)"), r.stderr)
        XCTAssertEqual(try f.messages("alice").count, 2, "each message once, also without a Date header")
        // Another Date is another message; another mailbox is another delivery.
        XCTAssertEqual(try f.deliver(["alice"], withDate.replacingOccurrences(of: "10:00:00", with: "11:00:00")).status, 0)
        try f.makeUser("bob")
        XCTAssertEqual(try f.deliver(["bob"], withDate).status, 0)
        XCTAssertEqual(try f.messages("alice").count, 3)
        XCTAssertEqual(try f.messages("bob").count, 1)
        // A message whose file is gone while its record is only pending is delivered again.
        let db = DuplicateDB(directory: "\(f.root)/.nestbox/duplicates", expiry: 3600)
        let key = DuplicateDB.key(messageID: "<d3@example.org>", date: nil, mailbox: "alice")!
        db.recordPending(key, messagePath: "\(f.root)/alice/new/gone,S=1,W=1")
        try Harness.chownTreeToMailOwner(f.root)
        XCTAssertFalse(db.contains(key))
        XCTAssertEqual(try f.deliver(["alice"], "Message-ID: <d3@example.org>\n\nx\n").status, 0)
        XCTAssertEqual(try f.messages("alice").count, 4)
    }

    func testDotsInUserNames() throws {
        let f = try DeliverFixture()
        try f.makeUser("john.smith")
        XCTAssertEqual(try f.deliver(["john.smith"], sampleMessage).status, 0)
        XCTAssertEqual(try f.messages("john.smith").count, 1)
    }

    // MARK: Bad input

    func testHostileRecipientNamesStayInsideTheRoot() throws {
        let f = try DeliverFixture(settings: ["autocreate_post": "yes", "autocreate_quota": "0"])
        let before = Harness.files(under: f.dir).filter { !$0.hasPrefix("mail/") }
        let long = String(repeating: "x", count: 300)
        for bad in ["../evil", "..", ".", "a/b", "/etc", "bad\u{1}ctl", "tab\tname", long, ".hidden", "public", "~x"] {
            let r = try f.deliver(["-r", "s@example.org", bad], sampleMessage)
            XCTAssertEqual(r.status, 67, "\(bad): \(r.stdout)")
            XCTAssertTrue(r.stdout.hasPrefix("5.1."), "\(bad): \(r.stdout)")
        }
        XCTAssertEqual(Harness.files(under: f.dir).filter { !$0.hasPrefix("mail/") }, before)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(f.dir)/evil"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: f.root).sorted(), [".nestbox"])
    }

    func testHostileFolderNamesFallBackToInbox() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        for bad in ["../../etc", "a/../../b", "..", "x\u{7}y", String(repeating: "F", count: 2000), "a.b", "~root", "*", "INBOX/../x"] {
            let r = try f.deliver(["-m", bad, "alice"], sampleMessage)
            XCTAssertEqual(r.status, 0, "\(bad): \(r.stdout)")
        }
        XCTAssertEqual(try f.messages("alice").count, 9)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: f.dir).sorted(), ["mail", "nestbox.conf"])
    }

    func testNulBytesAndEmptyMessageAreRefused() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        var nul = Data("Subject: x\n\nbody".utf8)
        nul.append(0)
        nul.append(contentsOf: Array("more\n".utf8))
        let r1 = try f.deliver(["alice"], data: nul)
        XCTAssertEqual(r1.status, 65)
        XCTAssertTrue(r1.stdout.hasPrefix("5.6.0 "), r1.stdout)
        let r2 = try f.deliver(["alice"], data: Data())
        XCTAssertEqual(r2.status, 65)
        XCTAssertTrue(r2.stdout.hasPrefix("5.6.0 "), r2.stdout)
        XCTAssertEqual(try f.messages("alice").count, 0)
        XCTAssertEqual(Harness.files(under: "\(f.root)/alice/tmp"), [])
        XCTAssertEqual(Harness.files(under: f.store.spoolDirectory), [])
    }

    func testStaleUidlistLockOfADeadProcessIsTakenOver() throws {
        let f = try DeliverFixture()
        let root = try f.makeUser("alice")
        XCTAssertEqual(try f.deliver(["alice"], sampleMessage).status, 0)
        // A pid that does not exist: a finished child's.
        let child = try Harness.run("/bin/true", [])
        XCTAssertEqual(child.status, 0)
        var deadPid: Int32 = 999_999
        while kill(deadPid, 0) == 0 { deadPid -= 1 }
        try f.writeFile("\(root)/dovecot-uidlist.lock", "\(deadPid):\(Host.name)")
        let start = Date()
        let r = try f.deliver(["alice"], sampleMessage)
        XCTAssertEqual(r.status, 0, r.stdout)
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        XCTAssertTrue(r.stderr.contains("removed stale lock"), r.stderr)
        XCTAssertEqual(try f.messages("alice").map { $0.uid }, [1, 2])
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(root)/dovecot-uidlist.lock"))
    }

    func testUidlistLockThatIsADirectoryFailsTheDeliveryAtOnce() throws {
        let f = try DeliverFixture()
        let root = try f.makeUser("alice")
        let lock = "\(root)/dovecot-uidlist.lock"
        XCTAssertEqual(mkdir(lock, 0o700), 0)
        try Harness.chownToMailOwner(lock)
        // Old: stale by every rule, the case where removing it was tried again without end.
        var old = [timeval(tv_sec: time(nil) - 3600, tv_usec: 0), timeval(tv_sec: time(nil) - 3600, tv_usec: 0)]
        XCTAssertEqual(utimes(lock, &old), 0)
        let start = Date()
        let r = try Harness.run(Harness.binary("nestbox-deliver"), ["-C", f.configPath, "-L", "-o", "lock_timeout=2", "alice"],
                                input: Data(sampleMessage.utf8), timeout: 30)
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertEqual(r.status, 75, "EX_TEMPFAIL\n\(r.stdout)\n\(r.stderr.prefix(2000))")
        XCTAssertTrue(r.stdout.hasPrefix("4.3.0 "), r.stdout)
        XCTAssertLessThan(elapsed, 2 + 5, "the lock timeout holds")
        XCTAssertLessThanOrEqual(r.stderr.split(separator: "\n").count, 3, "a line or two, not a flood:\n\(r.stderr.prefix(2000))")
        XCTAssertTrue(r.stderr.contains("\(lock): is a directory"), "the log names what to remove:\n\(r.stderr.prefix(2000))")
        var isDirectory: ObjCBool = false
        XCTAssertTrue(FileManager.default.fileExists(atPath: lock, isDirectory: &isDirectory) && isDirectory.boolValue,
                      "left for the administrator")
    }

    func testCorruptMaildirsizeIsRecalculated() throws {
        let f = try DeliverFixture()
        let root = try f.makeUser("alice", limits: QuotaLimits(bytes: 1_000_000))
        XCTAssertEqual(try f.deliver(["alice"], sampleMessage).status, 0)
        try f.writeFile("\(root)/maildirsize", "1000000S\n12 1\ngarbage here\n-99999999 x\n")
        let r = try f.deliver(["alice"], sampleMessage)
        XCTAssertEqual(r.status, 0, r.stdout)
        let ms = try f.messages("alice")
        let total = ms.reduce(Int64(0)) { $0 + $1.size }
        let size = MaildirSize.parse(Array(Harness.read("\(root)/maildirsize").utf8))
        XCTAssertEqual(size?.limits.bytes, 1_000_000)
        XCTAssertEqual(size?.usage, QuotaUsage(bytes: total, messages: 2))
        XCTAssertEqual(size?.damaged, false)
    }

    func testFiftyMegabyteMessageIsStreamed() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        let input = "\(f.dir)/big.eml"
        let line = Data(String(repeating: "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-+", count: 1) .utf8 + [13, 10])
        var chunk = Data()
        for _ in 0..<16384 { chunk.append(line) }  // ~1.1 MB
        FileManager.default.createFile(atPath: input, contents: Data("Subject: big\r\n\r\n".utf8))
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: input))
        h.seekToEndOfFile()
        for _ in 0..<48 { h.write(chunk) }
        try h.close()
        let inputSize = try FileManager.default.attributesOfItem(atPath: input)[.size] as! Int
        XCTAssertGreaterThan(inputSize, 50_000_000)
        // GNU time's %M is the program's own peak RSS (ru_maxrss of a child spawned from this
        // test process would include the test process's own memory, folded in at exec).
        func peakRSS(_ file: String) throws -> Int {
            let r = try Harness.run("/usr/bin/time", ["-f", "%M", Harness.binary("nestbox-deliver"), "-C", f.configPath, "alice"],
                                    inputFile: file)
            XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
            return Int(r.stderr.split(separator: "\n").last ?? "") ?? Int.max
        }
        let small = "\(f.dir)/small.eml"
        FileManager.default.createFile(atPath: small, contents: Data("Subject: small\n\nx\n".utf8))
        let baseline = try peakRSS(small)
        let rss = try peakRSS(input)
        XCTAssertLessThan(rss, 32 * 1024, "peak RSS \(rss) KiB for a 50 MB message")
        XCTAssertLessThan(rss - baseline, 4 * 1024, "memory grows with the message: \(baseline) KiB for a tiny one, \(rss) KiB for 50 MB")
        let m = try XCTUnwrap(try f.messages("alice").first { $0.size > 1_000_000 })
        let stored = try Data(contentsOf: URL(fileURLWithPath: m.path))
        let subject = stored.range(of: Data("Subject: big\n".utf8))!.lowerBound
        // Every CRLF became LF: the input less one byte a line, plus the trace headers.
        XCTAssertEqual(Int64(stored.count), Int64(inputSize - (48 * 16384 + 2) + subject))
        XCTAssertEqual(Int64(stored.count), m.size)
        XCTAssertFalse(stored.contains(13))
        XCTAssertEqual(m.virtualSize! - m.size, Int64(stored.filter { $0 == 10 }.count))
    }

    func testFullDiskIsATemporaryFailureAndLeavesNothing() throws {
        XCTAssertTrue(Harness.isRoot, "this test mounts a tmpfs and must run as root")
        let f = try DeliverFixture()
        let mount = try Harness.sh("mkdir -p \(f.root) && mount -t tmpfs -o size=512k,mode=0755 nestbox-test \(f.root)")
        XCTAssertEqual(mount.status, 0, mount.stderr)
        defer { _ = try? Harness.sh("umount \(f.root)") }
        try Harness.chownToMailOwner(f.root)
        let root = try f.makeUser("alice")
        XCTAssertEqual(try f.deliver(["alice"], sampleMessage).status, 0)
        let uidlistBefore = Harness.read("\(root)/dovecot-uidlist")
        let big = "Subject: big\n\n" + String(repeating: String(repeating: "y", count: 99) + "\n", count: 8000)
        let r = try f.deliver(["alice"], big)
        XCTAssertEqual(r.status, 75, r.stdout + r.stderr)
        XCTAssertEqual(r.stdout, "4.3.1 Insufficient system storage\n")
        XCTAssertEqual(Harness.files(under: f.store.spoolDirectory), [], "no partial spool file")
        XCTAssertEqual(Harness.files(under: "\(root)/tmp"), [])
        XCTAssertEqual(Harness.files(under: "\(root)/new").count, 1)
        XCTAssertEqual(Harness.read("\(root)/dovecot-uidlist"), uidlistBefore)
        XCTAssertNoThrow(try UIDList.parse(Array(uidlistBefore.utf8)))
        // Space again: the same message goes through.
        XCTAssertEqual(try f.deliver(["alice"], sampleMessage).status, 0)
        XCTAssertEqual(try f.messages("alice").map { $0.uid }, [1, 2])
    }

    func testRunsAsTheMailOwnerWithPrivateModes() throws {
        XCTAssertTrue(Harness.isRoot, "this test checks the switch from root to the mail owner")
        let f = try DeliverFixture(settings: ["autocreate_post": "yes", "autocreate_quota": "0", "autocreate_inbox_folders": "Sent"])
        XCTAssertEqual(try f.deliver(["alice"], sampleMessage).status, 0)
        let owner = getpwnam(Harness.mailOwner)!.pointee.pw_uid
        for rel in Harness.files(under: "\(f.root)/alice") {
            var st = stat()
            XCTAssertEqual(lstat("\(f.root)/alice/\(rel)", &st), 0)
            XCTAssertEqual(st.st_uid, owner, rel)
            if !rel.hasPrefix("dovecot-uidvalidity.") { XCTAssertEqual(st.st_mode & 0o777, 0o600, rel) }
        }
        for d in ["alice", "alice/new", "alice/.Sent", "alice/.Sent/cur", ".nestbox/spool"] {
            var st = stat()
            XCTAssertEqual(lstat("\(f.root)/\(d)", &st), 0)
            XCTAssertEqual(st.st_uid, owner, d)
            XCTAssertEqual(st.st_mode & 0o777, 0o700, d)
        }
        // A mail owner that is root is refused before any mail is touched.
        try f.set("mail_owner", "root")
        let r = try f.deliver(["alice"], sampleMessage)
        XCTAssertEqual(r.status, 78)
        XCTAssertTrue(r.stdout.hasPrefix("4.3.5 "), r.stdout)
        XCTAssertEqual(try f.messages("alice").count, 1)
    }

    func testTwentyConcurrentProcessesThousandMessages() throws {
        let f = try DeliverFixture()
        let root = try f.makeUser("alice")
        let perWorker = 50, workers = 20
        let group = DispatchGroup()
        let failures = NSLock()
        nonisolated(unsafe) var failed: [String] = []
        for w in 0..<workers {
            group.enter()
            DispatchQueue.global().async {
                defer { group.leave() }
                for i in 0..<perWorker {
                    let msg = "Subject: w\(w) m\(i)\nMessage-ID: <w\(w).m\(i)@test>\n\nworker \(w) message \(i)\n"
                    do {
                        let r = try f.deliver(["alice"], msg)
                        if r.status != 0 { failures.lock(); failed.append("w\(w) m\(i): \(r.status) \(r.stdout)"); failures.unlock() }
                    } catch {
                        failures.lock(); failed.append("w\(w) m\(i): \(error)"); failures.unlock()
                    }
                }
            }
        }
        group.wait()
        XCTAssertEqual(failed, [])
        let ms = try f.messages("alice")
        XCTAssertEqual(ms.count, workers * perWorker)
        let uids = ms.compactMap { $0.uid }
        XCTAssertEqual(uids, Array(1...UInt32(workers * perWorker)), "UIDs unique, consecutive and increasing")
        var subjects = Set<String>()
        for m in ms {
            let s = Harness.read(m.path).split(separator: "\n").first { $0.hasPrefix("Subject: ") }.map(String.init) ?? ""
            XCTAssertTrue(subjects.insert(s).inserted, "delivered twice: \(s)")
        }
        let list = try UIDList.parse(Array(Harness.read("\(root)/dovecot-uidlist").utf8))
        XCTAssertEqual(list.records.count, workers * perWorker)
        // Dovecot reads the same list: same count and the same UIDs.
        let dove = try Dovecot(mailRoot: root)
        let fetched = try dove.fetch("uid", mailbox: "INBOX")
        XCTAssertEqual(fetched.compactMap { $0["uid"].flatMap { UInt32($0) } }, uids)
        XCTAssertEqual(try dove.status("uidvalidity", mailbox: "INBOX"), "\(list.header.uidValidity)")
    }

    /// A new user's INBOX on a full disk: the delivery defers and no mailbox appears (not even
    /// cur/ new/ tmp/ without maildirsize, which later deliveries would take as made); once
    /// there is room, the next delivery creates it whole, and its limits hold. The disk is
    /// full to the last page (nothing fits) or but for one (the message fits, the mailbox not).
    func testAutocreateOnAFullDiskIsAllOrNothing() throws {
        XCTAssertTrue(Harness.isRoot, "this test mounts a tmpfs and must run as root")
        for freePages in [0, 1] {
            let f = try DeliverFixture(settings: ["autocreate_post": "yes", "autocreate_quota": "100",
                                                  "autocreate_inbox_folders": "Sent|Trash"])
            let mount = try Harness.sh("mkdir -p \(f.root) && mount -t tmpfs -o size=512k,mode=0755 nestbox-test \(f.root)")
            XCTAssertEqual(mount.status, 0, mount.stderr)
            defer { _ = try? Harness.sh("umount \(f.root)") }
            try Harness.chownToMailOwner(f.root)
            let fill = try Harness.sh("dd if=/dev/zero of=\(f.root)/fill bs=4096 2>/dev/null; truncate -s -\(4096 * freePages) \(f.root)/fill")
            XCTAssertEqual(fill.status, 0, fill.stderr)
            let first = try f.deliver(["newbie"], sampleMessage)
            XCTAssertEqual(first.status, 75, first.stdout + first.stderr)
            XCTAssertEqual(first.stdout, "4.3.1 Insufficient system storage\n")
            if freePages == 1 {
                XCTAssertTrue(first.stderr.contains("maildirsize"), "the message fit, the mailbox did not: \(first.stderr)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(f.root)/newbie"), "no half-made INBOX (free pages: \(freePages))")
            XCTAssertEqual(Harness.files(under: "\(f.root)/.nestbox"), [], "no spool file, no tree being built")
            // Room again: the whole mailbox appears with the delivery.
            XCTAssertEqual(unlink("\(f.root)/fill"), 0)
            let big = "Subject: big\n\n" + String(repeating: String(repeating: "y", count: 99) + "\n", count: 1500)
            let second = try f.deliver(["newbie"], big)
            XCTAssertEqual(second.status, 0, second.stdout + second.stderr)
            XCTAssertEqual(second.stderr.components(separatedBy: "created INBOX").count - 1, 1, second.stderr)
            let root = "\(f.root)/newbie"
            XCTAssertEqual(Harness.read("\(root)/maildirsize").split(separator: "\n").first, "102400S")
            for d in [".Sent", ".Trash"] {
                XCTAssertTrue(FileManager.default.fileExists(atPath: "\(root)/\(d)/maildirfolder"), d)
            }
            XCTAssertEqual(Harness.read("\(root)/subscriptions"), "V\t2\n\nSent\nTrash\n")
            // 150 KB stored of 100 KiB: the mailbox is full, further mail is refused.
            for _ in 0..<2 {
                let refused = try f.deliver(["newbie"], big)
                XCTAssertEqual(refused.status, 75, refused.stdout + refused.stderr)
                XCTAssertTrue(refused.stdout.hasPrefix("4.2.2 "), refused.stdout)
            }
            XCTAssertEqual(try f.messages("newbie").count, 1)
            XCTAssertEqual(Harness.files(under: "\(f.root)/.nestbox"), [])
        }
    }

    /// Autocreate happens when a message is stored, not when a recipient is accepted: RCPTs
    /// of a transaction that is reset, or of a session that ends, leave no mailbox behind.
    func testRecipientsOfAResetTransactionCreateNothing() throws {
        let f = try DeliverFixture(settings: ["autocreate_post": "yes", "autocreate_quota": "100",
                                              "autocreate_quota_messages": "50", "autocreate_inbox_folders": "Sent"])
        func session(_ commands: [String]) throws -> Harness.Result {
            let input = commands.map { $0 + "\r\n" }.joined()
            return try Harness.run(Harness.binary("nestbox-deliver"), ["-C", f.configPath, "-L", "-l"], input: Data(input.utf8))
        }
        let data = ["DATA", "Subject: welcome", "", "Hello.", "."]
        let reset = try session(["LHLO client.test", "MAIL FROM:<s@example.org>", "RCPT TO:<ann@example.test>",
                                 "RCPT TO:<ben@example.test>", "RCPT TO:<cid@example.test>", "RSET",
                                 "MAIL FROM:<s@example.org>", "RCPT TO:<dan@example.test>", "QUIT"])
        XCTAssertEqual(reset.stdout.components(separatedBy: "250 2.1.5 Ok").count - 1, 4, reset.stdout)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: f.root), [".nestbox"], reset.stderr)
        // One recipient alone, then two in one transaction: each INBOX made with its limits.
        let stored = try session(["LHLO client.test", "MAIL FROM:<s@example.org>", "RCPT TO:<ann@example.test>"] + data
                                 + ["MAIL FROM:<s@example.org>", "RCPT TO:<ben@example.test>", "RCPT TO:<ann@example.test>"]
                                 + data + ["QUIT"])
        XCTAssertEqual(stored.stdout.components(separatedBy: "250 2.0.0 Ok: delivered").count - 1, 3, stored.stdout)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: f.root).sorted(), [".nestbox", "ann", "ben"])
        XCTAssertEqual(stored.stderr.components(separatedBy: "created INBOX").count - 1, 2, stored.stderr)
        for user in ["ann", "ben"] {
            XCTAssertEqual(Harness.read("\(f.root)/\(user)/maildirsize").split(separator: "\n").first, "102400S,50C", user)
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(f.root)/\(user)/.Sent/maildirfolder"), user)
        }
        XCTAssertEqual(try f.messages("ann").count, 2)
        XCTAssertEqual(try f.messages("ben").count, 1)
        XCTAssertEqual(Harness.files(under: f.store.spoolDirectory), [])
    }

    /// With virtdomains, a user named like a domain and that domain's users, or a domain named
    /// `public` and the shared folders, live apart: no mailbox is ever made inside another's
    /// Maildir, and Dovecot sees in each INBOX only its own messages.
    func testVirtualDomainAreasNeverNestInAMaildir() throws {
        let f = try DeliverFixture(settings: ["virtdomains": "userid", "defaultdomain": "example.com",
                                              "autocreate_post": "yes", "autocreate_quota": "0"])
        for rcpt in ["example.org@example.com", "cur@example.org", "new@example.org", "x@public"] {
            let r = try f.deliver([rcpt], sampleMessage)
            XCTAssertEqual(r.status, 0, "\(rcpt): \(r.stdout) \(r.stderr)")
        }
        for rcpt in ["domain@example.org", "domain", "Domain@example.com"] {
            let r = try f.deliver([rcpt], sampleMessage)
            XCTAssertEqual(r.status, 67, "\(rcpt): \(r.stdout) \(r.stderr)")
            XCTAssertTrue(r.stdout.hasPrefix("5.1.3 "), "\(rcpt): \(r.stdout)")
        }
        let fm = FileManager.default
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: f.root).sorted(), [".nestbox", "domain", "example.org"])
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: "\(f.root)/domain").sorted(), ["example.org", "public"])
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: "\(f.root)/domain/example.org").sorted(), ["cur", "new"])
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: "\(f.root)/domain/public"), ["x"])
        // example.org's Maildir holds one message and nothing else in cur/ new/ tmp/.
        let user = "\(f.root)/example.org"
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: "\(user)/cur"), [])
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: "\(user)/tmp"), [])
        XCTAssertEqual(Harness.files(under: "\(user)/new").count, 1)
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: "\(user)/new").count, 1)
        for root in ["domain/example.org/cur", "domain/example.org/new", "domain/public/x"] {
            XCTAssertEqual(Harness.files(under: "\(f.root)/\(root)/new").count, 1, root)
        }
        XCTAssertEqual(try Dovecot(mailRoot: user).fetch("uid", mailbox: "INBOX").count, 1)
    }
}
