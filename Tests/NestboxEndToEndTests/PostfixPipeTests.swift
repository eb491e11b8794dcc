import Foundation
import XCTest

/// Postfix -> pipe(8) -> nestbox-deliver, end to end (PostfixTestCase: a private Postfix per test).
///
/// The `nestbox` and `nestbox-virtual` services are copied from postfix/master.cf (only the
/// program path is replaced by the built binary and `-C <test nestbox.conf>` is inserted after
/// it), and the settings of postfix/main.cf and postfix/main.cf.virtual are applied, so the
/// samples are what is tested.
final class PostfixPipeTests: PostfixTestCase {
    override var expectedRelay: String? { "nestbox" }

    // MARK: - setup

    override func setUpWithError() throws {
        try super.setUpWithError()
        try startPipeInstance(label: "nbpostfix", settings: [
            "virtdomains": "userid",
            "autocreate_post": "no",
            "autocreate_quota": "-1",
        ])
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
        // The sample passes ${queue_id}: one grep for Postfix's queue id finds the message.
        XCTAssertTrue(text.contains(" (queue id \(qid))\n"), "Received: line without Postfix's queue id \(qid):\n\(text.prefix(600))")
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

    /// A mail root that the mail owner cannot write (here: owned by root) defers the message,
    /// and the reason is in Postfix's own log line and in `postqueue -p`, not only in syslog.
    func testMailRootNotWritableDefersWithTheReasonInPostfixsLog() throws {
        try makeMaildir("dora")
        Harness.removeTree("\(mailRoot)/.nestbox")
        XCTAssertEqual(chown(mailRoot, 0, 0), 0)
        chmod(mailRoot, 0o755)
        defer { try? Harness.chownToMailOwner(mailRoot) }
        let rcpt = "dora@\(Self.localDomain)"
        let qid = try send(to: rcpt, subject: "for dora", body: "The spool belongs to root. \(Self.token())")
        let uid = getpwnam(Harness.mailOwner)!.pointee.pw_uid
        let reason = "mail root \(mailRoot) not writable by uid \(uid) (vmail): owner root, mode 0755; mail_owner is vmail"
        let line = try requireStatus(qid: qid, recipient: rcpt, "deferred", dsn: "4.3.0")
        XCTAssertTrue(line.contains(reason), line)
        let queue = try Harness.sh("/usr/sbin/postqueue -c \(configDir) -p")
        let flat = queue.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" }).joined(separator: " ")
        XCTAssertTrue(flat.contains(qid) && flat.contains("not writable by uid \(uid)"), queue.stdout)
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
        try makeMaildir("domain/\(Self.virtualDomain)/dave")
        let token = Self.token()
        let rcpt = "dave@\(Self.virtualDomain)"
        let qid = try send(to: rcpt, subject: "virtual \(token)", body: "For dave in the virtual domain. \(token)")
        try requireStatus(qid: qid, recipient: rcpt, "sent", dsn: "2.0.0", relay: "nestbox-virtual")
        let found = try waitForMessage(in: "\(mailRoot)/domain/\(Self.virtualDomain)/dave/new", containing: token)
        XCTAssertEqual(filesContaining(token, under: mailRoot), ["domain/\(Self.virtualDomain)/dave/new/\(found)"])
        let text = Harness.read("\(mailRoot)/domain/\(Self.virtualDomain)/dave/new/\(found)")
        XCTAssertTrue(text.hasPrefix("Return-Path: <\(Self.sender)>\n"), String(text.prefix(400)))
    }
}
