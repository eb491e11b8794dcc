#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Dispatch
import XCTest
import NestboxSupport
@testable import NestboxStore

/// mbox scan and purge: message boundaries as Dovecot sees them, exact bytes kept, the
/// pseudo-message, dates, locks (ours and other processes'), failures.
final class MboxTests: TempDirTestCase {
    var mbox: String { "\(dir)/alice" }
    let fast = DotLock.Options(timeout: 10, staleAfter: 120)

    // The fixture, one piece per message, so that expected files are built from the same bytes.
    static let pseudo = """
    From MAILER-DAEMON Thu Nov 26 09:00:00 2026
    Date: 26 Nov 2026 09:00:00 +0000
    From: Mail System Internal Data <MAILER-DAEMON@mx.example.org>
    Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA
    Message-ID: <1764147600@mx.example.org>
    X-IMAP: 1764147600 0000000004 $Junk
    Status: RO

    This text is part of the internal format of your mail folder, and is not
    a real message.  It is created automatically by the mail system software.
    If deleted, the folder will lose some of its internal data.


    """
    static let one = """
    From alice@example.org  Thu Nov 26 10:00:00 2026
    Return-Path: <alice@example.org>
    Date: Thu, 26 Nov 2026 10:00:00 +0100
    Subject: one
    Message-ID: <1@example.org>
    Status: RO
    X-Status: D
    X-UID: 1
    X-Keywords: $Label1

    Body one
    >From quoted by Postfix Thu Nov 26 10:00:00 2026
    From not after an empty line Thu Nov 26 10:00:00 2026

    From the desk of Bob: not a From_ line (no date)

    Still one.


    """
    static let two = """
    From bob@example.org Fri Nov 27 11:30 2026
    Subject: two
    Date: Fri, 27 Nov 2026 11:30:00 -0500 (EST)
    Status: R
    X-Status: F
    X-UID: 2

    Body two


    """
    static let three = """
    From "carol smith"@example.org  Sat Nov 28 12:00:00 2026
    Subject: three
    Date: garbage
    X-Status: DF
    X-UID: 3

    Body three


    """
    static let four = "From MAILER-DAEMON  Sun Nov 29 13:00:00 2026\nSubject: four\nDate: 29 Nov 26 13:00 GMT\nX-UID: 4\n\nBody four, no newline at the end"

    static var fixture: String { pseudo + one + two + three + four }

    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    func write(_ text: String) { TestFS.write(mbox, bytes(text)) }

    /// Local time of a date, as the From_ line means it.
    func local(_ y: Int32, _ mo: Int32, _ d: Int32, _ h: Int32, _ mi: Int32, _ s: Int32 = 0) -> Int64 {
        var tm = Glibc.tm()
        tm.tm_year = y - 1900; tm.tm_mon = mo - 1; tm.tm_mday = d; tm.tm_hour = h; tm.tm_min = mi; tm.tm_sec = s
        tm.tm_isdst = -1
        return Int64(mktime(&tm))
    }

    func utc(_ y: Int32, _ mo: Int32, _ d: Int32, _ h: Int32, _ mi: Int32, _ s: Int32 = 0) -> Int64 {
        var tm = Glibc.tm()
        tm.tm_year = y - 1900; tm.tm_mon = mo - 1; tm.tm_mday = d; tm.tm_hour = h; tm.tm_min = mi; tm.tm_sec = s
        return Int64(timegm(&tm))
    }

    func stat(_ path: String) -> Glibc.stat {
        var st = Glibc.stat()
        XCTAssertEqual(lstat(path, &st), 0, path)
        return st
    }

    /// Nothing but the mbox in the directory: no lock, no temporary file.
    func assertOnlyMbox(file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(TestFS.list(dir), ["alice"], file: file, line: line)
    }

    // MARK: - scan

    func testScanFindsMessagesAsDovecotDoes() throws {
        write(Self.fixture)
        let messages = try Mbox.scan(path: mbox)
        XCTAssertEqual(messages.map(\.index), [0, 1, 2, 3], "the pseudo-message is not counted")
        XCTAssertEqual(messages.map(\.uid), [1, 2, 3, 4])
        XCTAssertEqual(messages.map(\.envelopeSender),
                       ["alice@example.org", "bob@example.org", "\"carol smith\"@example.org", "MAILER-DAEMON"])
        // Offsets and lengths tile the file after the pseudo-message.
        let pieces = [Self.one, Self.two, Self.three, Self.four].map { Int64($0.utf8.count) }
        XCTAssertEqual(messages.map(\.length), pieces)
        XCTAssertEqual(messages.map(\.offset), [0, 1, 2, 3].map { i in
            Int64(Self.pseudo.utf8.count) + pieces[0..<i].reduce(0, +)
        })
        // Size: without the From_ line and the separating empty line.
        let firstLine = Int64("From alice@example.org  Thu Nov 26 10:00:00 2026\n".utf8.count)
        XCTAssertEqual(messages[0].size, pieces[0] - firstLine - 1)
        XCTAssertEqual(messages[3].size, Int64(Self.four.utf8.count - "From MAILER-DAEMON  Sun Nov 29 13:00:00 2026\n".utf8.count),
                       "the last message has no separator to leave out")
        XCTAssertEqual(messages.map(\.deleted), [true, false, true, false])
        XCTAssertEqual(messages.map(\.flagged), [false, true, true, false])
        XCTAssertEqual(messages.map(\.status), ["RO", "R", "", ""])
        XCTAssertEqual(messages.map(\.xStatus), ["D", "F", "DF", ""])
        XCTAssertEqual(messages[0].keywords, "$Label1")
        XCTAssertEqual(messages[0].messageID, "<1@example.org>")
        XCTAssertEqual(messages.map(\.envelopeDate), [local(2026, 11, 26, 10, 0), local(2026, 11, 27, 11, 30),
                                                      local(2026, 11, 28, 12, 0), local(2026, 11, 29, 13, 0)])
        XCTAssertEqual(messages.map(\.headerDate), [utc(2026, 11, 26, 9, 0), utc(2026, 11, 27, 16, 30), nil,
                                                    utc(2026, 11, 29, 13, 0)])
    }

    func testFromLineDates() {
        let cases: [(String, String?, Int64?)] = [
            ("MAILER-DAEMON  Thu Nov 26 10:00:00 2026", "MAILER-DAEMON", local(2026, 11, 26, 10, 0)),
            ("a@b Thu Nov  5 10:00:00 2026", "a@b", local(2026, 11, 5, 10, 0)),
            ("a@b Thu Nov 26 10:00 2026", "a@b", local(2026, 11, 26, 10, 0)),
            ("a@b Thu Nov 26 10:00:00 +0200 2026", "a@b", utc(2026, 11, 26, 8, 0)),
            ("a@b Thu Nov 26 10:00:00 2026 -0100", "a@b", utc(2026, 11, 26, 11, 0)),
            ("a@b Thu Nov 26 10:00:00 EET 2026", "a@b", local(2026, 11, 26, 10, 0)),
            ("a@b Thu Nov 26 10:00:00 2026 remote from uucphost", "a@b", local(2026, 11, 26, 10, 0)),
            ("Thu Nov 26 10:00:00 2026", "", local(2026, 11, 26, 10, 0)),
            ("the desk of Bob:", nil, nil),
            ("a@b Thu Nov 26 25:00:00 2026", nil, nil),
        ]
        for (text, sender, date) in cases {
            let parsed = MboxDate.parseFromLine(text[...])
            XCTAssertEqual(parsed?.sender, sender, text)
            XCTAssertEqual(parsed?.date, date, text)
        }
    }

    func testHeaderDates() {
        let cases: [(String, Int64?)] = [
            ("Thu, 26 Nov 2026 10:00:00 +0100", utc(2026, 11, 26, 9, 0)),
            ("26 Nov 2026 10:00 -0000", utc(2026, 11, 26, 10, 0)),
            ("Thu, 26 Nov 2026 10:00:00 +0100 (CET)", utc(2026, 11, 26, 9, 0)),
            ("Thu,\n 26 Nov 2026\n 10:00:00 EST", utc(2026, 11, 26, 15, 0)),
            ("Thu, 26 Nov 26 10:00:00 PDT", utc(2026, 11, 26, 17, 0)),
            ("Thu, 26 Nov 126 10:00:00 GMT", utc(2026, 11, 26, 10, 0)),
            ("Thu, 26 Nov 99 10:00:00 UT", utc(1999, 11, 26, 10, 0)),
            ("Thu, 26 Nov 2026 10:00:00 A", utc(2026, 11, 26, 10, 0)),  // military: -0000
            ("not a date", nil),
            ("", nil),
        ]
        for (text, date) in cases { XCTAssertEqual(MboxDate.parseRFC5322(text), date, text) }
    }

    func testEmptyFileIsAnEmptyMailbox() throws {
        write("")
        XCTAssertEqual(try Mbox.scan(path: mbox), [])
        let r = try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl], options: fast, dryRun: false) { _ in true }
        XCTAssertEqual(r, MboxPurgeResult(messages: 0, bytes: 0, removedMessages: 0, removedBytes: 0))
        assertOnlyMbox()
    }

    func testMissingFileAndNotAnMbox() throws {
        let missing = XCTAssertThrowsFailure(try Mbox.purge(path: mbox, locks: [.dotlock], options: fast, dryRun: false) { _ in true })
        XCTAssertEqual(missing?.outcome.exitCode, 67)
        XCTAssertTrue(missing?.detail.contains(mbox) ?? false, missing?.detail ?? "")
        XCTAssertEqual(XCTAssertThrowsFailure(try Mbox.scan(path: mbox))?.outcome.exitCode, 67)
        XCTAssertEqual(TestFS.list(dir), [], "no lock made for a missing mbox")

        write("Return-Path: <a@b>\nSubject: x\n\nbody\n")
        for dry in [true, false] {
            let bad = XCTAssertThrowsFailure(try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl], options: fast, dryRun: dry) { _ in true })
            XCTAssertEqual(bad?.outcome, .dataError.with(text: "Not a mailbox"))
            XCTAssertTrue(bad?.detail.hasPrefix("\(mbox): line 1:") ?? false, bad?.detail ?? "")
        }
        XCTAssertEqual(XCTAssertThrowsFailure(try Mbox.scan(path: mbox))?.outcome.exitCode, 65)
        XCTAssertEqual(TestFS.readText(mbox), "Return-Path: <a@b>\nSubject: x\n\nbody\n")
        assertOnlyMbox()

        let none = XCTAssertThrowsFailure(try Mbox.purge(path: mbox, locks: [], options: fast, dryRun: false) { _ in true })
        XCTAssertEqual(none?.outcome.exitCode, 78)
    }

    // MARK: - purge

    func testPurgeKeepsEveryOtherByteAndThePseudoMessage() throws {
        write(Self.fixture)
        chmod(mbox, 0o620)
        let before = stat(mbox)
        let r = try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl, .flock], options: fast, dryRun: false) { $0.deleted }
        XCTAssertEqual(r.removed.map(\.uid), [1, 3])
        XCTAssertEqual(r.messages, 4)
        XCTAssertEqual(r.removedMessages, 2)
        XCTAssertEqual(r.bytes, Int64(Self.fixture.utf8.count))
        XCTAssertEqual(r.removedBytes, Int64(Self.one.utf8.count + Self.three.utf8.count))
        XCTAssertEqual(r.remainingMessages, 2)
        XCTAssertEqual(TestFS.read(mbox), bytes(Self.pseudo + Self.two + Self.four), "exact bytes")
        XCTAssertEqual(r.remainingBytes, TestFS.size(mbox))
        let after = stat(mbox)
        XCTAssertNotEqual(after.st_ino, before.st_ino, "replaced by rename, not rewritten in place")
        XCTAssertEqual(after.st_mode, before.st_mode)
        XCTAssertEqual(after.st_uid, before.st_uid)
        XCTAssertEqual(after.st_gid, before.st_gid)
        assertOnlyMbox()
        XCTAssertEqual(try Mbox.scan(path: mbox).map(\.uid), [2, 4], "still a valid mbox")
    }

    func testRemovingTheLastMessageLeavesAValidEnding() throws {
        write(Self.fixture)
        _ = try Mbox.purge(path: mbox, locks: [.fcntl], options: fast, dryRun: false) { $0.uid == 4 }
        XCTAssertEqual(TestFS.read(mbox), bytes(Self.pseudo + Self.one + Self.two + Self.three))
        XCTAssertTrue(TestFS.readText(mbox)!.hasSuffix("Body three\n\n"))
        // Everything: only the pseudo-message stays.
        _ = try Mbox.purge(path: mbox, locks: [.dotlock], options: fast, dryRun: false) { _ in true }
        XCTAssertEqual(TestFS.read(mbox), bytes(Self.pseudo))
        XCTAssertEqual(try Mbox.scan(path: mbox), [])
        assertOnlyMbox()
    }

    func testNothingChosenRewritesNothing() throws {
        write(Self.fixture)
        let inode = TestFS.inode(mbox)
        let r = try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl], options: fast, dryRun: false) { _ in false }
        XCTAssertEqual(r.removedMessages, 0)
        XCTAssertEqual(TestFS.inode(mbox), inode)
        assertOnlyMbox()
    }

    func testDryRunChangesNothing() throws {
        write(Self.fixture)
        TestFS.age(mbox, by: 600)
        let before = stat(mbox)
        let dry = try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl, .flock], options: fast, dryRun: true) { $0.deleted }
        let after = stat(mbox)
        XCTAssertEqual(TestFS.read(mbox), bytes(Self.fixture))
        XCTAssertEqual(after.st_ino, before.st_ino)
        XCTAssertEqual(after.st_mtim.tv_sec, before.st_mtim.tv_sec)
        XCTAssertEqual(after.st_ctim.tv_sec, before.st_ctim.tv_sec)
        assertOnlyMbox()
        let real = try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl, .flock], options: fast, dryRun: false) { $0.deleted }
        XCTAssertEqual(dry, real, "a dry run reports what the purge does")
    }

    func testDryRunNeedsNoDotlockAndWaitsForNoReader() throws {
        write(Self.fixture)
        TestFS.write("\(mbox).lock", "\(getpid()):\(Host.name)")  // a live holder
        let dry = try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl], options: DotLock.Options(timeout: 0.2), dryRun: true) { $0.deleted }
        XCTAssertEqual(dry.removedMessages, 2)
    }

    func testRemovingTheXIMAPbaseCarrierAddsAPseudoMessage() throws {
        let first = """
        From a@example.org  Thu Nov 26 10:00:00 2026
        X-IMAPbase: 1764147600 0000000003 $Junk NonJunk
        Subject: first
        X-UID: 1
        Status: RO
        X-Status: D

        one


        """
        write(first + Self.two + Self.three)
        _ = try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl], options: fast, dryRun: false) { $0.uid == 1 }
        let text = TestFS.readText(mbox)!
        XCTAssertTrue(text.hasSuffix(Self.two + Self.three), "the survivors' bytes as they were")
        let added = String(text.dropLast((Self.two + Self.three).utf8.count))
        XCTAssertTrue(added.hasPrefix("From MAILER-DAEMON "), added)
        XCTAssertTrue(added.contains("\nSubject: \(Mbox.pseudoSubject)\n"), added)
        XCTAssertTrue(added.contains("\nX-IMAP: 1764147600 0000000003 $Junk NonJunk\n"), added)
        XCTAssertTrue(added.hasSuffix("\n\n"))
        XCTAssertEqual(try Mbox.scan(path: mbox).map(\.uid), [2, 3], "the new pseudo-message is hidden")
        // Kept carrier: nothing added.
        write(first + Self.two)
        _ = try Mbox.purge(path: mbox, locks: [.dotlock], options: fast, dryRun: false) { $0.uid == 2 }
        XCTAssertEqual(TestFS.readText(mbox), first)
        // A pseudo-message already there holds the folder's data: no second one.
        write(Self.pseudo + first + Self.two)
        _ = try Mbox.purge(path: mbox, locks: [.dotlock], options: fast, dryRun: false) { $0.uid == 1 }
        XCTAssertEqual(TestFS.readText(mbox), Self.pseudo + Self.two)
    }

    // MARK: - locks

    func testHeldDotlockTimesOutWithTemporaryFailure() throws {
        write(Self.fixture)
        TestFS.write("\(mbox).lock", "\(getpid()):\(Host.name)")
        let start = monotonicSeconds()
        let failure = XCTAssertThrowsFailure(try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl],
                                                            options: DotLock.Options(timeout: 0.5), dryRun: false) { $0.deleted })
        let elapsed = monotonicSeconds() - start
        XCTAssertEqual(failure?.outcome.isTemporary, true)
        XCTAssertEqual(failure?.outcome.exitCode, 75)
        XCTAssertTrue(failure?.detail.contains("\(mbox).lock") ?? false, failure?.detail ?? "")
        XCTAssertGreaterThanOrEqual(elapsed, 0.5)
        XCTAssertLessThan(elapsed, 2.0)
        XCTAssertEqual(TestFS.read(mbox), bytes(Self.fixture))
        XCTAssertEqual(TestFS.readText("\(mbox).lock"), "\(getpid()):\(Host.name)", "someone else's lock is left alone")
    }

    /// Postfix's dotlock is empty, mode 0, and lives for the whole delivery: it is not stale
    /// after 2 s as an empty dovecot-uidlist.lock is.
    func testEmptyPostfixDotlockIsNotTakenOver() throws {
        write(Self.fixture)
        let lock = "\(mbox).lock"
        TestFS.write(lock, [], mode: 0)
        TestFS.age(lock, by: 10)
        let failure = XCTAssertThrowsFailure(try Mbox.purge(path: mbox, locks: [.dotlock],
                                                            options: DotLock.Options(timeout: 0.3), dryRun: false) { $0.deleted })
        XCTAssertEqual(failure?.outcome.exitCode, 75)
        XCTAssertTrue(TestFS.exists(lock))
        // Older than staleAfter (and the mbox unchanged as long): stale.
        TestFS.age(lock, by: 200)
        TestFS.age(mbox, by: 200)
        let r = try Mbox.purge(path: mbox, locks: [.dotlock], options: DotLock.Options(timeout: 1, staleAfter: 120), dryRun: false) { $0.deleted }
        XCTAssertEqual(r.removedMessages, 2)
        assertOnlyMbox()
    }

    func testDeadHoldersDotlockIsTakenOver() throws {
        write(Self.fixture)
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        defer { free(argv[0]) }
        XCTAssertEqual(posix_spawn(&pid, "/bin/true", nil, nil, &argv, environ), 0)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        TestFS.write("\(mbox).lock", "\(pid):\(Host.name)")
        let start = monotonicSeconds()
        let r = try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl], options: DotLock.Options(timeout: 5), dryRun: false) { $0.deleted }
        XCTAssertLessThan(monotonicSeconds() - start, 1.0)
        XCTAssertEqual(r.removedMessages, 2)
        assertOnlyMbox()
    }

    /// What a delivery appends while we wait on the dotlock survives: the scan is made under
    /// the locks.
    func testMailAppendedWhileWaitingOnTheDotlockSurvives() throws {
        write(Self.pseudo + Self.one + Self.two)
        let lock = "\(mbox).lock"
        TestFS.write(lock, "\(getpid()):\(Host.name)")
        let path = mbox
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var outcome: Result<MboxPurgeResult, Error>? = nil
        DispatchQueue.global().async {
            outcome = Result { try Mbox.purge(path: path, locks: [.dotlock, .fcntl], options: DotLock.Options(timeout: 10), dryRun: false) { $0.deleted } }
            done.signal()
        }
        usleep(300_000)
        let appended = "From late@example.org  Mon Nov 30 08:00:00 2026\nSubject: late\nX-Status: D\n\nlate body\n\n"
        let fd = open(mbox, O_WRONLY | O_APPEND)
        XCTAssertGreaterThanOrEqual(fd, 0)
        _ = appended.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
        unlink(lock)
        XCTAssertEqual(done.wait(timeout: .now() + 15), .success)
        let r = try XCTUnwrap(outcome).get()
        XCTAssertEqual(r.removed.map(\.envelopeSender), ["alice@example.org", "late@example.org"],
                       "the appended message was scanned (and chosen: it is \\Deleted)")
        XCTAssertEqual(TestFS.readText(mbox), Self.pseudo + Self.two)
        assertOnlyMbox()
    }

    /// Another process's fcntl lock (a delivery in progress): we wait for it, and what it
    /// appended under its lock is kept.
    func testOtherProcessesFcntlLockIsWaitedForAndItsMailKept() throws {
        write(Self.pseudo + Self.two)
        let appended = "From late@example.org  Mon Nov 30 08:00:00 2026\nSubject: late\n\nlate body\n\n"
        // perl holds F_WRLCK for 0.8 s, appends, then exits (closing releases the lock).
        let script = """
        use Fcntl; open(my $f, '>>', $ARGV[0]) or die; my $l = pack('s s x4 q q i x4', F_WRLCK, 0, 0, 0, 0);
        fcntl($f, F_SETLKW, $l) or die "fcntl: $!"; open(my $r, '>', $ARGV[1]); close($r);
        select(undef, undef, undef, 0.8); print $f $ARGV[2]; close($f);
        """
        let ready = "\(dir)/.ready"
        let child = try spawn(["/usr/bin/perl", "-e", script, mbox, ready, appended])
        defer { reap(child) }
        waitFor(ready)
        let start = monotonicSeconds()
        let r = try Mbox.purge(path: mbox, locks: [.fcntl], options: DotLock.Options(timeout: 10), dryRun: false) { $0.uid == 2 }
        XCTAssertGreaterThan(monotonicSeconds() - start, 0.3, "waited for the other process's lock")
        XCTAssertEqual(r.removedMessages, 1)
        XCTAssertEqual(TestFS.readText(mbox), Self.pseudo + appended)
        unlink(ready)
        assertOnlyMbox()
    }

    func testOtherProcessesFlockTimesOut() throws {
        write(Self.fixture)
        let ready = "\(dir)/.ready"
        let child = try spawn(["/usr/bin/flock", "-x", mbox, "/bin/sh", "-c", ": > \(ready); sleep 3"])
        defer { kill(child, SIGTERM); reap(child) }
        waitFor(ready)
        let start = monotonicSeconds()
        let failure = XCTAssertThrowsFailure(try Mbox.purge(path: mbox, locks: [.dotlock, .flock],
                                                            options: DotLock.Options(timeout: 0.4), dryRun: false) { $0.deleted })
        XCTAssertEqual(failure?.outcome.exitCode, 75)
        XCTAssertTrue(failure?.detail.hasPrefix("flock lock \(mbox)") ?? false, failure?.detail ?? "")
        XCTAssertLessThan(monotonicSeconds() - start, 2.0)
        XCTAssertEqual(TestFS.read(mbox), bytes(Self.fixture))
        XCTAssertFalse(TestFS.exists("\(mbox).lock"), "our dotlock is released on failure")
    }

    /// A leftover temporary file of a killed purge is replaced, never taken for the mbox.
    func testLeftoverTemporaryFileIsReplaced() throws {
        write(Self.fixture)
        let tmp = Mbox.temporaryPath(mbox)
        XCTAssertEqual(tmp, "\(dir)/.alice.nestbox-purge")
        TestFS.write(tmp, "half a mailbox")
        _ = try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl], options: fast, dryRun: false) { $0.deleted }
        XCTAssertEqual(TestFS.read(mbox), bytes(Self.pseudo + Self.two + Self.four))
        assertOnlyMbox()
    }

    /// A purge that could only rewrite in place (a directory it may not write, a sticky spool
    /// directory and someone else's mbox) refuses with a configuration failure and touches
    /// nothing. Run as `nobody` in a forked child (the tests run as root, as in CI); the child
    /// exits with the failure's code.
    func testUnreplaceableMboxIsAConfigurationFailure() throws {
        guard getuid() == 0, let nobody = getpwnam("nobody") else {
            XCTFail("this test switches to the user nobody and must run as root (as in CI)")
            return
        }
        let (uid, gid) = (nobody.pointee.pw_uid, nobody.pointee.pw_gid)
        func purgeAsNobody() -> Int32 {
            let path = mbox
            let options = fast
            let pid = fork()
            if pid == 0 {
                guard setgid(gid) == 0, setuid(uid) == 0 else { _exit(99) }
                do {
                    _ = try Mbox.purge(path: path, locks: [.dotlock, .fcntl], options: options, dryRun: false) { $0.deleted }
                    _exit(0)
                } catch let failure as NestboxFailure {
                    _exit(failure.outcome.exitCode)
                } catch {
                    _exit(98)
                }
            }
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            return (status >> 8) & 0xff
        }
        chmod(dir, 0o755)
        write(Self.fixture)
        // nobody's own mbox in a directory nobody may not write (/var/mail 2775 root:mail).
        chown(mbox, uid, gid)
        XCTAssertEqual(purgeAsNobody(), 78)
        XCTAssertEqual(TestFS.read(mbox), bytes(Self.fixture))
        assertOnlyMbox()
        // A sticky directory everyone may write (/var/mail 1777), someone else's mbox.
        chmod(dir, 0o1777)
        chown(mbox, 0, 0)
        chmod(mbox, 0o666)
        XCTAssertEqual(purgeAsNobody(), 78)
        XCTAssertEqual(TestFS.read(mbox), bytes(Self.fixture))
        assertOnlyMbox()
        // Its own mbox there: replaced.
        chown(mbox, uid, gid)
        chmod(mbox, 0o600)
        XCTAssertEqual(purgeAsNobody(), 0)
        XCTAssertEqual(TestFS.read(mbox), bytes(Self.pseudo + Self.two + Self.four))
        XCTAssertEqual(stat(mbox).st_uid, uid)
        assertOnlyMbox()
    }

    // MARK: - crash

    /// A purge killed (SIGKILL) at random instants, in a forked child, leaves the complete old
    /// mbox or the complete new one, never anything else; the next purge then takes over the
    /// dead child's dotlock and replaces its temporary file. The child does nothing but the
    /// purge and _exit (no XCTest in it).
    func testKillAtAnyInstantLeavesOldOrNewMbox() throws {
        var text = Self.pseudo
        for i in 0..<1000 {
            text += i % 3 == 0 ? Self.one : i % 3 == 1 ? Self.two : Self.three
        }
        let old = bytes(text)
        // The expected result, computed in this process on a copy.
        let copy = "\(dir)/copy"
        TestFS.write(copy, old)
        let start = monotonicSeconds()
        _ = try Mbox.purge(path: copy, locks: [.dotlock, .fcntl], options: fast, dryRun: false) { $0.deleted }
        let duration = monotonicSeconds() - start
        let new = try XCTUnwrap(TestFS.read(copy))
        XCTAssertLessThan(new.count, old.count)
        unlink(copy)

        var outcomes: [String: Int] = [:]
        let rounds = 16
        for round in 0..<rounds {
            TestFS.write(mbox, old)
            let path = mbox
            let options = fast
            let pid = fork()
            if pid == 0 {
                _ = try? Mbox.purge(path: path, locks: [.dotlock, .fcntl], options: options, dryRun: false) { $0.deleted }
                _exit(0)
            }
            XCTAssertGreaterThan(pid, 0, "fork: \(errnoText(errno))")
            // First round: killed at once; last: not killed; the others spread over 1.5 times
            // the purge's own duration.
            if round < rounds - 1 {
                usleep(UInt32(Double(round) / Double(rounds - 1) * duration * 1.5 * 1e6))
                kill(pid, SIGKILL)
            }
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            let now = TestFS.read(mbox)
            if now == old {
                outcomes["old", default: 0] += 1
            } else if now == new {
                outcomes["new", default: 0] += 1
            } else {
                XCTFail("round \(round): the mbox is neither the old nor the new one (\(now?.count ?? -1) bytes)")
            }
        }
        XCTAssertGreaterThan(outcomes["old"] ?? 0, 0, "\(outcomes)")
        XCTAssertGreaterThan(outcomes["new"] ?? 0, 0, "\(outcomes)")
        // Whatever the last kill left (a dead holder's dotlock, a temporary file) is taken over.
        TestFS.write(mbox, old)
        let again = monotonicSeconds()
        _ = try Mbox.purge(path: mbox, locks: [.dotlock, .fcntl], options: DotLock.Options(timeout: 5), dryRun: false) { $0.deleted }
        XCTAssertLessThan(monotonicSeconds() - again, 2.0)
        XCTAssertEqual(TestFS.read(mbox), new)
        assertOnlyMbox()
    }

    // MARK: - helpers

    func spawn(_ argv: [String]) throws -> pid_t {
        var pid: pid_t = 0
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        let rc = posix_spawn(&pid, argv[0], nil, nil, &cargs, environ)
        guard rc == 0 else {
            XCTFail("spawn \(argv[0]): \(errnoText(rc))")
            throw NestboxFailure(.temporary, "spawn")
        }
        return pid
    }

    func reap(_ pid: pid_t) {
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    func waitFor(_ path: String) {
        let deadline = monotonicSeconds() + 10
        while !TestFS.exists(path) && monotonicSeconds() < deadline { usleep(10_000) }
        XCTAssertTrue(TestFS.exists(path), "helper did not start")
    }
}
