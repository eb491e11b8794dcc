import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// Mbox purge between the real peers: Postfix local(8) delivers to an mbox spool file (with its
/// own locking, `fcntl, dotlock` as Debian configures it), Dovecot reads it and marks messages
/// \Deleted (writing X-UID, X-IMAPbase and X-Status: D into the file), Mbox.purge removes them,
/// and Dovecot then sees exactly the survivors with their UIDs, flags and UIDVALIDITY, with no
/// complaint in its log; Postfix goes on delivering to the replaced file.
final class MboxInteropTests: PostfixTestCase {
    static let user = Harness.mailOwner  // local(8) delivers to a passwd account: vmail
    var spool: String { mailRoot }
    var mbox: String { "\(spool)/\(Self.user)" }
    var doveHome = ""
    var dove: Dovecot?
    var doveLog = ""

    override func setUpWithError() throws {
        try super.setUpWithError()
        try preparePostfixInstance(label: "nbmbox", tools: ["/usr/bin/doveadm"])
        let settings: [(String, String)] = [
            ("mail_spool_directory", spool),
            ("mailbox_delivery_lock", "fcntl, dotlock"),
            ("mailbox_transport", ""),
            ("mailbox_command", ""),
            ("home_mailbox", ""),
            ("local_transport", "local:$myhostname"),
            ("local_recipient_maps", "proxy:unix:passwd.byname"),
        ]
        try writeMainCf(sample: settings, header: "written by MboxInteropTests: local(8) into mbox spool files")
        try writeMasterCf(header: "written by MboxInteropTests")
        try startPostfix()

        doveHome = "\(base)/home"
        try makeDir(doveHome)
        try makeDir("\(doveHome)/mail")
        dove = try Dovecot(mailRoot: doveHome, user: Self.user)
    }

    override func tearDown() {
        if let dove { Harness.removeTree((dove.configPath as NSString).deletingLastPathComponent) }
        super.tearDown()
    }

    /// doveadm through the shared throwaway configuration, switched to this mbox (with a fresh
    /// index directory when asked) and without the Maildir quota plugin. Everything Dovecot
    /// logs (log_path is stderr there) is kept for the final check.
    @discardableResult
    func doveadm(_ args: [String], freshIndex: String? = nil) throws -> Harness.Result {
        let index = freshIndex.map { ":INDEX=\($0)" } ?? ""
        let r = try dove!.doveadm(["-o", "mail_location=mbox:\(doveHome)/mail:INBOX=\(mbox)\(index)",
                                   "-o", "mail_plugins=", "-o", "mbox_write_locks=fcntl dotlock"] + args)
        doveLog += r.stderr
        return r
    }

    /// `freshIndex`: a Dovecot that never saw the file before (index files of its own), so that
    /// what it shows comes from the file alone.
    func fetch(freshIndex: String? = nil) throws -> [[String: String]] {
        let fields = "uid flags hdr.message-id"
        let r = try doveadm(["fetch", fields, "mailbox", "INBOX", "all"], freshIndex: freshIndex)
        return Dovecot.parseFetch(r.stdout, fields: fields.split(separator: " ").map(String.init))
    }

    func status(_ field: String, freshIndex: String? = nil) throws -> String {
        let text = try doveadm(["-f", "flow", "mailbox", "status", field, "INBOX"], freshIndex: freshIndex).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return text.split(separator: "=").last.map(String.init) ?? text
    }

    func deliver(_ n: Int) throws {
        let rcpt = "\(Self.user)@\(Self.localDomain)"
        let qid = try send(to: rcpt, subject: "message \(n)",
                           body: "Body of message \(n).\n\nFrom here on a line Postfix quotes.\n")
        try requireStatus(qid: qid, recipient: rcpt, "sent", relay: "local")
    }

    func flags(_ row: [String: String]) -> Set<String> {
        Set((row["flags"] ?? "").split(separator: " ").map(String.init)).subtracting(["\\Recent"])
    }

    func testPurgeOfDovecotDeletedMessagesInAPostfixMbox() throws {
        for n in 1...4 { try deliver(n) }
        let delivered = Harness.read(mbox)
        XCTAssertEqual(delivered.components(separatedBy: "\n>From here on").count, 5, "Postfix quoted the body lines")
        XCTAssertEqual(try Mbox.scan(path: mbox).count, 4)

        // Dovecot reads the file, numbers the messages, and writes the flags into it.
        let first = try fetch()
        XCTAssertEqual(first.map { $0["uid"] }, ["1", "2", "3", "4"])
        let ids = first.map { $0["hdr.message-id"] ?? "" }
        XCTAssertEqual(Set(ids).count, 4, "\(first)")
        let validity = try status("uidvalidity")
        try doveadm(["flags", "add", "\\Deleted", "mailbox", "INBOX", "uid", "1,3"])
        try doveadm(["flags", "add", "\\Flagged", "mailbox", "INBOX", "uid", "2"])
        try doveadm(["flags", "add", "\\Seen \\Answered", "mailbox", "INBOX", "uid", "4"])
        let scanned = try Mbox.scan(path: mbox)
        XCTAssertEqual(scanned.map(\.deleted), [true, false, true, false], "Dovecot wrote X-Status: D into the file")
        XCTAssertEqual(scanned.map(\.uid), [1, 2, 3, 4], "and X-UID")
        let before = Array(Harness.read(mbox).utf8)

        let result = try Mbox.purge(path: mbox, locks: [.fcntl, .dotlock], options: DotLock.Options(timeout: 30),
                                    dryRun: false) { $0.deleted }
        XCTAssertEqual(result.removed.map(\.uid), [1, 3])
        XCTAssertEqual(result.remainingMessages, 2)
        // The survivors' bytes are the ones Dovecot wrote.
        let after = Array(Harness.read(mbox).utf8)
        for m in scanned where !m.deleted {
            let old = before[Int(m.offset)..<Int(m.offset + m.length)]
            XCTAssertNotNil(after.firstRange(of: old), "message \(m.uid ?? 0) kept byte for byte")
        }
        var st = stat()
        XCTAssertEqual(lstat(mbox, &st), 0)
        XCTAssertEqual(st.st_uid, getpwnam(Harness.mailOwner)!.pointee.pw_uid, "owner kept")
        XCTAssertEqual(st.st_mode & 0o7777, 0o600)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: spool).sorted(), [Self.user],
                       "no lock or temporary file left")

        // First, what the file alone says, to a Dovecot without an index (X-IMAPbase went with UID 1: the
        // pseudo-message keeps it; a Dovecot with its index would write it back itself).
        let fresh = "\(base)/fresh-index"
        try makeDir(fresh)
        XCTAssertEqual(try fetch(freshIndex: fresh).map { $0["uid"] }, ["2", "4"])
        XCTAssertEqual(try status("uidvalidity", freshIndex: fresh), validity)
        XCTAssertEqual(try status("uidnext", freshIndex: fresh), "5")
        let survivors = try fetch()
        XCTAssertEqual(survivors.map { $0["uid"] }, ["2", "4"], "the survivors keep their UIDs")
        XCTAssertEqual(survivors.map { $0["hdr.message-id"] ?? "" }, [ids[1], ids[3]])
        XCTAssertEqual(survivors.map(flags), [["\\Flagged"], ["\\Seen", "\\Answered"]])
        XCTAssertEqual(try status("uidvalidity"), validity, "same UIDVALIDITY: clients keep their caches")

        // Postfix goes on delivering to the new file; Dovecot gives the next UID.
        try deliver(5)
        let last = try fetch()
        XCTAssertEqual(last.map { $0["uid"] }, ["2", "4", "5"])
        XCTAssertEqual(try status("uidvalidity"), validity)

        let log = doveLog
        let complaints = log.split(separator: "\n").filter { $0.contains("Error") || $0.contains("Warning") || $0.contains("Panic") }
        XCTAssertEqual(complaints, [], log)
        let maillog = Harness.read(maillog).split(separator: "\n").filter { $0.contains("warning") || $0.contains("error") }
        XCTAssertEqual(maillog, [], logTail())
    }

    /// 1000 messages delivered by Postfix local(8) into the mbox while nestbox-purge --mbox runs
    /// again and again, one run in four killed with SIGKILL at a random instant: every message
    /// not marked \Deleted by its sender (X-Status: D, every third) is in the file exactly once at
    /// the end, every marked one is gone, and no lock or temporary file is left. (A purge killed
    /// between creating its dotlock and writing its pid once left an empty lock, which Postfix
    /// honours for 500 s: the lock is now made whole before it gets its name.)
    func testPurgesRacingPostfixDeliveriesAndKillsLoseNothing() throws {
        let total = 1000
        let rcpt = "\(Self.user)@\(Self.localDomain)"
        let nbRoot = "\(base)/nestbox"
        try makeDir(nbRoot)
        try Harness.chownToMailOwner(nbRoot)
        let conf = try Harness.writeConfig(in: base, ["partition-default": nbRoot, "mbox_write_locks": "dotlock fcntl",
                                                      "lock_timeout": "60"])
        let messages = "\(base)/messages"
        try makeDir(messages)
        for n in 0..<total {
            let deleted = n % 3 == 0 ? "X-Status: D\n" : ""
            try "From: \(Self.sender)\nTo: \(rcpt)\nSubject: racing \(n)\nMessage-ID: <race\(n)@example.org>\n\(deleted)\nbody \(n)\n"
                .write(toFile: "\(messages)/\(n)", atomically: false, encoding: .utf8)
        }
        let sender = Process()
        sender.executableURL = URL(fileURLWithPath: "/bin/sh")
        sender.arguments = ["-c", "for f in \(messages)/*; do /usr/sbin/sendmail -C \(configDir) -f \(Self.sender) \(rcpt) < $f || echo \"failed $f\"; done; echo sent"]
        let senderOut = Pipe()
        sender.standardOutput = senderOut
        try sender.run()

        func purge() throws -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Harness.binary("nestbox-purge"))
            p.arguments = ["-C", conf, "-q", "--mbox", mbox]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            return p
        }
        func delivered() -> Int {
            Harness.read(maillog).split(separator: "\n").filter { $0.contains("to=<\(rcpt)>") && $0.contains("status=sent") }.count
        }
        var runs = 0, kills = 0
        let deadline = Date().addingTimeInterval(240)
        var flushed = Date()
        while (sender.isRunning || delivered() < total) && Date() < deadline {
            // local(8) gives up on the dotlock after 20 tries a second apart and defers the
            // message (4.2.0, "unable to create lock file"): with purges back to back on a slow
            // disk that happens. A deferred message is not lost; it waits for the queue's next
            // run (minutes away), so ask for that run now, purges still racing it.
            if !sender.isRunning && Date().timeIntervalSince(flushed) > 5 {
                _ = try Harness.sh("/usr/sbin/postqueue -c \(configDir) -f >/dev/null 2>&1", timeout: 30)
                flushed = Date()
            }
            let p = try purge()
            if runs % 4 == 3 {
                usleep(UInt32.random(in: 0...40_000))
                if p.isRunning { kill(p.processIdentifier, SIGKILL); kills += 1 }
            }
            p.waitUntilExit()
            if p.terminationReason == .exit { XCTAssertTrue([0, 67].contains(p.terminationStatus), "purge exited \(p.terminationStatus)") }
            runs += 1
        }
        sender.waitUntilExit()
        XCTAssertEqual(String(decoding: senderOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self), "sent\n")
        XCTAssertEqual(delivered(), total, logTail())
        let last = try purge()
        last.waitUntilExit()
        XCTAssertEqual(last.terminationStatus, 0)
        XCTAssertGreaterThan(runs, 10)
        XCTAssertGreaterThan(kills, 0)

        let left = try Mbox.scan(path: mbox)
        let ids = left.compactMap(\.messageID)
        XCTAssertEqual(ids.count, left.count)
        XCTAssertEqual(Set(ids).count, ids.count, "a message is in the file twice")
        let expected = Set((0..<total).filter { $0 % 3 != 0 }.map { "<race\($0)@example.org>" })
        XCTAssertEqual(Set(ids), expected, "missing: \(expected.subtracting(ids).sorted().prefix(5))")
        XCTAssertFalse(left.contains { $0.deleted })
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: spool).sorted(), [Self.user],
                       "no lock or temporary file left")
    }
}
