#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// nestbox-purge against the real Dovecot and against everything else that writes the folder at
/// the same time: \Deleted set by doveadm purged with the survivors' UIDs and Dovecot's quota
/// unchanged for them; an open IMAP session polling through the purge; deliveries racing purges;
/// purges killed with SIGKILL at random instants.
final class PurgeInteropTests: PurgeTestCase {
    static let complaints = ["dovecot-uidlist", "Duplicate file entry", "Error", "Panic", "corrupt", "Fatal"]

    func message(_ n: Int) -> String {
        "From: s@example.org\nSubject: message \(n)\nMessage-ID: <i\(n)@example.org>\n\n" + String(repeating: "line \(n)\n", count: n % 7 + 1)
    }

    func complaintsIn(_ text: String) -> [String] {
        text.split(separator: "\n").map(String.init).filter { line in Self.complaints.contains { line.contains($0) } }
    }

    /// uid -> Message-ID as Dovecot sees the INBOX.
    func dovecotView(_ dovecot: Dovecot) throws -> [Int: String] {
        var out: [Int: String] = [:]
        for m in try dovecot.fetch("uid hdr.message-id", mailbox: "INBOX") {
            out[Int(m["uid"] ?? "") ?? -1] = (m["hdr.message-id"] ?? "").trimmingCharacters(in: .whitespaces)
        }
        return out
    }

    /// The folder agrees with itself and with its quota: every file has exactly one record and
    /// `expected` (stem -> uid) for those that had one; no record twice; maildirsize at least
    /// the files' usage (`exact`: equal).
    func assertConsistent(_ inbox: Folder, expected: [String: UInt32], exact: Bool, _ label: String) throws {
        let scan = try FolderScan.scan(inbox, readFiles: false)
        XCTAssertEqual(scan.unrecorded.map(\.path), [], "\(label): files without a record")
        XCTAssertEqual(scan.duplicateBases.count, 0, "\(label): two files with one base")
        for m in scan.messages {
            if let uid = expected[m.name.stem] { XCTAssertEqual(m.uid, uid, "\(label): \(m.name.stem) changed UID") }
        }
        let list = try XCTUnwrap(try inbox.uidList.read())
        XCTAssertEqual(Set(list.records.map(\.stem)).count, list.records.count, "\(label): a file recorded twice")
        let files = QuotaUsage(bytes: scan.messages.map(\.quotaBytes).reduce(0, +), messages: Int64(scan.messages.count))
        let counted = try XCTUnwrap(try QuotaRoot(root: inbox.mailRoot).current()).usage
        if exact {
            XCTAssertEqual(counted, files, "\(label): maildirsize")
        } else {
            XCTAssertGreaterThanOrEqual(counted.bytes, files.bytes, "\(label): maildirsize under-counts bytes")
            XCTAssertGreaterThanOrEqual(counted.messages, files.messages, "\(label): maildirsize under-counts messages")
        }
    }

    /// \Deleted set through doveadm (after Dovecot indexed and cached the folder) is purged by
    /// us: doveadm fetch shows the survivors under their UIDs with their flags, and
    /// doveadm quota get agrees with maildirsize to the byte.
    func testDeletedFlaggedByDoveadmIsPurgedAndDovecotAgrees() throws {
        for n in 1...8 { XCTAssertEqual(try fixture.deliver(["alice"], message(n)).status, 0) }
        let dovecot = try Dovecot(mailRoot: home)
        _ = try dovecot.fetch("uid size.physical size.virtual", mailbox: "INBOX")
        _ = try dovecot.doveadm(["flags", "add", "\\Deleted", "mailbox", "INBOX", "uid", "2,5,6"])
        _ = try dovecot.doveadm(["flags", "add", "\\Seen \\Flagged", "mailbox", "INBOX", "uid", "3"])
        let before = try dovecotView(dovecot)
        let sizes = Dictionary(uniqueKeysWithValues: try fixture.messages("alice").map { (Int($0.uid!), $0.size) })

        let r = try purge(["-f", "-v", "user/alice"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        for uid in [2, 5, 6] { XCTAssertTrue(r.stdout.contains("user/alice: expunged uid \(uid) "), r.stdout) }
        let removed = sizes[2]! + sizes[5]! + sizes[6]!
        XCTAssertTrue(r.stdout.contains("expunged 3 messages \(removed) bytes"), r.stdout)

        let fetched = try dovecot.fetch("uid flags hdr.message-id", mailbox: "INBOX")
        XCTAssertEqual(fetched.map { $0["uid"] }, ["1", "3", "4", "7", "8"])
        for m in fetched {
            let uid = Int(m["uid"]!)!
            XCTAssertEqual(m["hdr.message-id"]?.trimmingCharacters(in: .whitespaces), before[uid], "uid \(uid) is its message")
        }
        XCTAssertEqual(fetched.first { $0["uid"] == "3" }?["flags"].map { Set($0.split(separator: " ")) }?.subtracting(["\\Recent"]),
                       ["\\Seen", "\\Flagged"])
        let quota = try dovecot.doveadm(["-f", "tab", "quota", "get"])
        XCTAssertEqual(complaintsIn(quota.stderr), [])
        var rows: [String: [String]] = [:]
        for line in quota.stdout.split(separator: "\n").dropFirst() {
            let cols = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            if cols.count >= 4 { rows[cols[1]] = cols }
        }
        let survivors = sizes.filter { ![2, 5, 6].contains($0.key) }.map(\.value).reduce(0, +)
        let usage = try XCTUnwrap(try QuotaRoot(root: home).current()).usage
        XCTAssertEqual(usage, QuotaUsage(bytes: survivors, messages: 5))
        XCTAssertEqual(rows["MESSAGE"]?[2], "5", quota.stdout)
        XCTAssertEqual(rows["STORAGE"]?[2], String((survivors + 1023) / 1024), quota.stdout)
        XCTAssertEqual(try dovecot.status("uidnext", mailbox: "INBOX"), "9", "N is not lowered")
        // Deliveries go on with the next UID.
        XCTAssertEqual(try fixture.deliver(["alice"], message(9)).status, 0)
        XCTAssertEqual(try dovecot.fetch("uid", mailbox: "INBOX").compactMap { $0["uid"] }, ["1", "3", "4", "7", "8", "9"])
    }

    /// One IMAP session: selects INBOX and fetches (uid by sequence number), prints "ready",
    /// then sends NOOP every 20 ms, applying each `* n EXPUNGE` to its sequence, until the stop
    /// file exists; then NOOP and fetch once more. Prints JSON: before (uid -> flags), the UIDs
    /// its EXPUNGE responses removed, after, every other untagged line, errors.
    /// Usage: poll.py <imap> <dovecot.conf> <home> <imap-log> <stop-file>
    static let pollScript = #"""
    import json, os, re, subprocess, sys, time

    imap, conf, home, imaplog, stop = sys.argv[1:6]
    \#(Dovecot.imapPrelude)
    sequence = []
    expunged = []
    other = []
    def fetch():
        got = {}
        order = []
        for s in cmd("FETCH 1:* (UID FLAGS)"):
            m = re.match(r"\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\)\)", s)
            if m:
                got[m.group(2)] = " ".join(sorted(f for f in m.group(3).split() if f != "\\Recent"))
                order.append(int(m.group(2)))
        return got, order
    def absorb(lines):
        for s in lines:
            m = re.match(r"\* (\d+) EXPUNGE$", s)
            if m:
                expunged.append(sequence.pop(int(m.group(1)) - 1))
            else:
                other.append(s)
    result = {"errors": []}
    try:
        p.stdout.readline()  # * PREAUTH
        cmd("SELECT INBOX")
        result["before"], sequence = fetch()
        print("ready", flush=True)
        polls = 0
        while not os.path.exists(stop):
            absorb(cmd("NOOP"))
            polls += 1
            time.sleep(0.02)
        absorb(cmd("NOOP"))
        result["after"], order = fetch()
        result["sequence"] = sequence
        result["order"] = order
        result["polls"] = polls
        cmd("LOGOUT")
    except Exception as e:
        result["errors"].append(repr(e))
    result["expunged"] = expunged
    result["untagged"] = other
    print(json.dumps(result), flush=True)
    """#

    func testLiveIMAPSessionSeesTheExpungesAndKeepsItsUIDs() throws {
        for n in 1...30 { XCTAssertEqual(try fixture.deliver(["alice"], message(n)).status, 0) }
        let dovecot = try Dovecot(mailRoot: home)
        let doomed = [2, 3, 10, 17, 29, 30]
        _ = try dovecot.doveadm(["flags", "add", "\\Deleted", "mailbox", "INBOX", "uid", doomed.map(String.init).joined(separator: ",")])
        _ = try dovecot.doveadm(["flags", "add", "\\Answered", "mailbox", "INBOX", "uid", "4,18"])

        let imapLog = "\(fixture.dir)/imap.log"
        let stop = "\(fixture.dir)/stop"
        let session = try IMAPScript(Self.pollScript, name: "poll.py", in: fixture.dir, [dovecot.configPath, home, imapLog, stop])
        XCTAssertTrue(session.waitFor("ready"), session.text)

        // The purge while the session polls, then a little more polling before it stops.
        let r = try purge(["-f", "user/alice"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("expunged 6 messages"), r.stdout)
        usleep(300_000)
        FileManager.default.createFile(atPath: stop, contents: Data())
        let json = try session.finish()
        let text = session.text
        XCTAssertEqual(json["errors"] as? [String], [])
        let before = try XCTUnwrap(json["before"] as? [String: String])
        let after = try XCTUnwrap(json["after"] as? [String: String], text)
        XCTAssertEqual(before.count, 30)
        XCTAssertGreaterThan(json["polls"] as? Int ?? 0, 0, "the session polled during the purge")
        // The session was told: one EXPUNGE per purged message, naming exactly those.
        XCTAssertEqual((json["expunged"] as? [Int])?.sorted(), doomed)
        XCTAssertEqual(json["sequence"] as? [Int], json["order"] as? [Int], "the session's sequence matches the server's")
        // The survivors keep their UIDs and flags in the open session.
        XCTAssertEqual(after.count, 24)
        for (uid, flags) in before where !doomed.contains(Int(uid)!) { XCTAssertEqual(after[uid], flags, "uid \(uid)") }
        XCTAssertEqual(after["4"], "\\Answered")
        for line in try XCTUnwrap(json["untagged"] as? [String]) {
            XCTAssertFalse(line.contains("BYE") || line.contains("UIDVALIDITY"), line)
        }
        XCTAssertEqual(complaintsIn(Harness.read(imapLog)), [], "Dovecot's imap complained")
        let view = try dovecotView(dovecot)
        XCTAssertEqual(view.keys.sorted(), (1...30).filter { !doomed.contains($0) })
    }

    /// Deliveries through nestbox-deliver into the INBOX while purges run on it again and again
    /// (and doveadm flags more messages \Deleted between them): every delivered message is
    /// there once under one UID, exactly the flagged ones are gone, and maildirsize is exact.
    func testPurgesRacingDeliveriesLoseNothing() throws {
        for n in 1...60 { XCTAssertEqual(try fixture.deliver(["alice"], message(n)).status, 0) }
        let dovecot = try Dovecot(mailRoot: home)
        _ = try dovecot.doveadm(["flags", "add", "\\Deleted", "mailbox", "INBOX", "uid", "1:20"])
        try Harness.chownTreeToMailOwner(fixture.root)

        let deliveries = 1000
        let script = """
        i=1000
        while [ $i -lt \(1000 + deliveries) ]; do
          printf 'From: s@example.org\\nSubject: racing %d\\nMessage-ID: <i%d@example.org>\\n\\nbody\\n' $i $i \\
            | '\(Harness.binary("nestbox-deliver"))' -C '\(fixture.configPath)' -L alice 2>/dev/null || echo "failed $i: $?"
          i=$((i + 1))
        done
        echo done
        """
        let loop = Process()
        loop.executableURL = URL(fileURLWithPath: "/bin/sh")
        loop.arguments = ["-c", script]
        let loopOut = Pipe()
        loop.standardOutput = loopOut
        try loop.run()
        var runs = 0
        var flagged = 21
        var purged = 0
        while loop.isRunning || runs < 3 {
            if flagged <= 50 {
                _ = try dovecot.doveadm(["flags", "add", "\\Deleted", "mailbox", "INBOX", "uid", "\(flagged):\(flagged + 4)"])
                flagged += 5
            }
            let r = try purge(["-f", "--json", "user/alice"])
            XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
            if let object = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] {
                purged += (object["expunged"] as? [String: Int])?["messages"] ?? 0
            }
            runs += 1
        }
        loop.waitUntilExit()
        let loopText = String(decoding: loopOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(loopText, "done\n", "every delivery succeeded")
        XCTAssertEqual(try purge(["-f", "user/alice"]).status, 0)
        XCTAssertGreaterThan(runs, 3)
        XCTAssertEqual(purged, flagged - 1, "each flagged message purged once")

        let view = try dovecotView(dovecot)
        let ids = Array(view.values)
        XCTAssertEqual(Set(ids).count, ids.count, "a message is there twice")
        let expected = Set((flagged...60).map { "<i\($0)@example.org>" } + (1000..<(1000 + deliveries)).map { "<i\($0)@example.org>" })
        XCTAssertEqual(Set(ids), expected)
        try assertConsistent(fixture.store.inbox(of: home), expected: [:], exact: true, "after the race")
        let status = try dovecot.doveadm(["mailbox", "status", "messages", "INBOX"])
        XCTAssertEqual(complaintsIn(status.stderr), [])
    }

    /// Purges killed with SIGKILL, round after round over a folder of 3000 messages with 100
    /// more flagged \Deleted each round. The instant of the kill is steered into the purge's
    /// work (later when a kill found nothing done, earlier when the purge had finished) until
    /// three kills have interrupted it midway (at least one must, in 25 rounds). After every
    /// kill each file has its record and its old UID, no message not flagged is gone, and
    /// maildirsize never under-counts; a last purge finishes the work and Dovecot reads the
    /// folder without a complaint.
    func testKilledPurgesLeaveAConsistentFolder() throws {
        let inbox = fixture.store.inbox(of: home)
        let count = 3000
        let base = Int(time(nil)) - 7200
        for n in 1...count {
            let body = message(n)
            let lfs = body.utf8.filter { $0 == 10 }.count
            let stem = MaildirName.stem(base: "\(base + n).M\(n)P1Q1.kill", size: Int64(body.utf8.count), virtualSize: Int64(body.utf8.count + lfs))
            try body.write(toFile: "\(home)/new/\(stem)", atomically: false, encoding: .utf8)
        }
        XCTAssertEqual(try inbox.assignUIDs(), count)
        _ = try QuotaRoot(root: home).recalculate(limits: QuotaLimits(bytes: 104_857_600, messages: 100_000))
        try Harness.chownTreeToMailOwner(fixture.root)
        let uids = try XCTUnwrap(try inbox.uidList.read()).uidsByStem()
        XCTAssertEqual(uids.count, count)

        // Where to start: how long a dry run (start, configuration, scan) takes.
        let started = Date()
        XCTAssertEqual(try purge(["-n", "-q", "-f", "user/alice"]).status, 0)
        var delay = Date().timeIntervalSince(started)
        var step = delay / 3
        var generator = SystemRandomNumberGenerator()
        var doomed: Set<String> = []
        var interrupted = 0
        var round = 0
        while interrupted < 3 && round < 25 {
            round += 1
            // 100 more messages flagged \Deleted, renamed into cur/ as a client's flag change is.
            for stem in uids.keys.filter({ !doomed.contains($0) }).sorted().shuffled(using: &generator).prefix(100) {
                let from = FileManager.default.fileExists(atPath: "\(home)/new/\(stem)") ? "\(home)/new/\(stem)" : "\(home)/cur/\(stem):2,S"
                XCTAssertEqual(rename(from, "\(home)/cur/\(stem):2,ST"), 0, from)
                doomed.insert(stem)
            }
            let pending = doomed.intersection(try FolderScan.scan(inbox, readFiles: false).messages.map(\.name.stem))
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Harness.binary("nestbox-purge"))
            process.arguments = ["-C", fixture.configPath, "-q", "-f", "user/alice"]
            process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
            process.standardError = FileHandle(forWritingAtPath: "/dev/null")
            try process.run()
            usleep(UInt32(max(0, delay) * 1_000_000))
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()

            // This round's invariants: what is not doomed is all there, with its UID.
            let scan = try FolderScan.scan(inbox, readFiles: false)
            let present = Set(scan.messages.map(\.name.stem))
            XCTAssertTrue(present.isSuperset(of: Set(uids.keys).subtracting(doomed)), "round \(round): a message not flagged is gone")
            XCTAssertEqual(scan.missingFiles.map(\.stem).filter { !doomed.contains($0) }, [], "round \(round): a record lost its file")
            try assertConsistent(inbox, expected: uids, exact: false, "round \(round)")
            // Where the kill landed, and where the next one should.
            let removed = pending.subtracting(present)
            if !scan.missingFiles.isEmpty || (!removed.isEmpty && removed != pending) {
                interrupted += 1  // some files unlinked, or records not yet dropped
            } else if removed.isEmpty {
                delay += step  // it had not begun removing
            } else {
                delay -= step  // the purge had finished
            }
            step = max(step * 0.7, 0.002)
            // Some unflagged messages move to cur/ with \Seen, as a client reading them makes them.
            for m in scan.messages where m.subdirectory == "new" && Bool.random(using: &generator) {
                XCTAssertEqual(rename(m.path, "\(home)/cur/\(m.name.stem):2,S"), 0)
            }
        }
        XCTAssertGreaterThanOrEqual(interrupted, 1, "kills that interrupted a purge midway, in \(round) rounds")

        // A last purge (after any lock left by a killed one goes stale) finishes the work.
        let last = try purge(["-f", "user/alice"])
        XCTAssertEqual(last.status, 0, last.stdout + last.stderr)
        let left = try FolderScan.scan(inbox, readFiles: false).messages
        XCTAssertEqual(Set(left.map(\.name.stem)), Set(uids.keys).subtracting(doomed))
        try assertConsistent(inbox, expected: uids, exact: false, "after the last purge")
        let dovecot = try Dovecot(mailRoot: home)
        let fetched = try dovecot.doveadm(["fetch", "uid", "mailbox", "INBOX", "all"])
        XCTAssertEqual(complaintsIn(fetched.stderr), [])
        let dovecotUIDs = Dovecot.parseFetch(fetched.stdout, fields: ["uid"]).compactMap { $0["uid"].flatMap { UInt32($0) } }
        XCTAssertEqual(Set(dovecotUIDs), Set(left.compactMap(\.uid)), "Dovecot sees the same UIDs")
    }
}
