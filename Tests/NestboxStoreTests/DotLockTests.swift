#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Dispatch
import XCTest
import NestboxSupport

/// Dovecot-style dotlocks: `<path>.lock`, content `<pid>:<host>`, stale rules, timeouts.
final class DotLockTests: TempDirTestCase {
    var lockPath: String { "\(dir)/dovecot-uidlist.lock" }
    var ourContent: String { "\(getpid()):\(Host.name)" }

    func testAcquireAndRelease() throws {
        let lock = try DotLock.acquire(lockPath)
        XCTAssertEqual(lock.path, lockPath)
        XCTAssertEqual(TestFS.readText(lockPath), ourContent, "<pid>:<hostname>, no newline")
        var st = stat()
        XCTAssertEqual(lstat(lockPath, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        lock.release()
        XCTAssertFalse(TestFS.exists(lockPath))
        lock.release()  // twice is fine
        XCTAssertFalse(TestFS.exists(lockPath))

        let again = try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 1))
        XCTAssertTrue(TestFS.exists(lockPath))
        again.release()
        XCTAssertFalse(TestFS.exists(lockPath))
    }

    func testDeinitReleases() throws {
        do {
            let lock = try DotLock.acquire(lockPath)
            XCTAssertTrue(TestFS.exists(lock.path))
        }
        XCTAssertFalse(TestFS.exists(lockPath))
    }

    func testReleaseLeavesSomeoneElsesLockAlone() throws {
        let lock = try DotLock.acquire(lockPath)
        // Someone judged it stale and replaced it (a new inode: made before the old one goes).
        TestFS.write("\(lockPath).new", "1:otherhost")
        XCTAssertEqual(rename("\(lockPath).new", lockPath), 0)
        lock.release()
        XCTAssertEqual(TestFS.readText(lockPath), "1:otherhost", "not our inode: not removed")
    }

    func testDeadHolderOnThisHostIsTakenOverQuickly() throws {
        let pid = deadPID()
        TestFS.write(lockPath, "\(pid):\(Host.name)")
        let start = monotonicSeconds()
        let lock = try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 10))
        XCTAssertLessThan(monotonicSeconds() - start, 1.0, "no waiting for the timeout or staleAfter")
        XCTAssertEqual(TestFS.readText(lockPath), ourContent)
        lock.release()
    }

    func testLiveHolderMakesAcquireTimeOutWithTemporaryFailure() throws {
        let held = try DotLock.acquire(lockPath)
        let start = monotonicSeconds()
        let failure = XCTAssertThrowsFailure(try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 0.5)))
        let elapsed = monotonicSeconds() - start
        XCTAssertEqual(failure?.outcome.isTemporary, true)
        XCTAssertEqual(failure?.outcome.exitCode, 75)
        XCTAssertEqual(failure?.outcome.status, "4.3.0")
        XCTAssertGreaterThanOrEqual(elapsed, 0.5)
        XCTAssertLessThan(elapsed, 5)
        XCTAssertEqual(TestFS.readText(lockPath), ourContent, "the holder's lock is untouched")
        held.release()
        XCTAssertFalse(TestFS.exists(lockPath))
    }

    func testDeadPIDOnAnotherHostIsNotStale() {
        let content = "\(deadPID()):other-host.invalid"
        TestFS.write(lockPath, content)
        let failure = XCTAssertThrowsFailure(try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 0.3)))
        XCTAssertEqual(failure?.outcome.isTemporary, true)
        XCTAssertEqual(TestFS.readText(lockPath), content, "another host's pid cannot be checked: lock kept")
    }

    func testGarbageLockIsNotStaleWhileFresh() {
        TestFS.write(lockPath, "")
        XCTAssertThrowsFailure(try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 0.3)))
        XCTAssertTrue(TestFS.exists(lockPath))
    }

    func testEmptyLockOlderThanTwoSecondsIsStale() throws {
        // Its creator died between O_EXCL and writing pid:host; a live creator writes at once.
        TestFS.write(lockPath, "")
        TestFS.age(lockPath, by: 5)
        let start = monotonicSeconds()
        let lock = try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 5))
        XCTAssertLessThan(monotonicSeconds() - start, 1.0)
        XCTAssertEqual(TestFS.readText(lockPath), ourContent)
        lock.release()
    }

    func testLockOlderThanStaleAfterIsOverridden() throws {
        // Held by a live process (this one) on this host, but untouched for 200 s.
        TestFS.write(lockPath, ourContent)
        TestFS.age(lockPath, by: 200)
        let start = monotonicSeconds()
        let lock = try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 5, staleAfter: 120))
        XCTAssertLessThan(monotonicSeconds() - start, 1.0)
        var st = stat()
        XCTAssertEqual(lstat(lockPath, &st), 0)
        XCTAssertLessThan(abs(wallSeconds() - Double(st.st_mtim.tv_sec)), 5, "a fresh lock")
        lock.release()
    }

    func testOldLockFromAnotherHostIsOverridden() throws {
        TestFS.write(lockPath, "12345:other-host.invalid")
        TestFS.age(lockPath, by: 10)
        let lock = try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 5, staleAfter: 5))
        XCTAssertEqual(TestFS.readText(lockPath), ourContent)
        lock.release()
    }

    func testOldLockIsKeptWhileTheWatchedFileChanges() {
        let watched = "\(dir)/dovecot-uidlist"
        TestFS.write(watched, "3 V1 N1\n")
        TestFS.write(lockPath, "12345:other-host.invalid")
        TestFS.age(lockPath, by: 200)
        let failure = XCTAssertThrowsFailure(try DotLock.acquire(lockPath, watching: [watched],
                                                                 options: DotLock.Options(timeout: 0.3, staleAfter: 120)))
        XCTAssertEqual(failure?.outcome.isTemporary, true)
        XCTAssertEqual(TestFS.readText(lockPath), "12345:other-host.invalid")

        TestFS.age(watched, by: 200)
        let lock = try? DotLock.acquire(lockPath, watching: [watched], options: DotLock.Options(timeout: 5, staleAfter: 120))
        XCTAssertNotNil(lock, "once nothing changed for staleAfter, the lock is stale")
        lock?.release()
    }

    func testTouchRefreshesTheLock() throws {
        let lock = try DotLock.acquire(lockPath)
        TestFS.age(lockPath, by: 300)
        lock.touch()
        var st = stat()
        XCTAssertEqual(lstat(lockPath, &st), 0)
        XCTAssertLessThan(abs(wallSeconds() - Double(st.st_mtim.tv_sec)), 5)
        // A touched lock is not stale for a waiter.
        XCTAssertThrowsFailure(try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 0.2, staleAfter: 120)))
        lock.release()
    }

    func testLockInMissingDirectoryFailsAtOnce() {
        let start = monotonicSeconds()
        let failure = XCTAssertThrowsFailure(try DotLock.acquire("\(dir)/missing/x.lock", options: DotLock.Options(timeout: 10)))
        XCTAssertLessThan(monotonicSeconds() - start, 1.0)
        XCTAssertEqual(failure?.outcome.isTemporary, true)
    }

    // MARK: Locks that no waiter can get past

    /// Runs `DotLock.acquire` on a thread of its own and waits for it at most `limit` seconds, so
    /// that a waiter ignoring its timeout fails the test instead of hanging it (such a thread is
    /// left behind until the process exits). Returns the failure it threw (nil after recording
    /// a test failure), how long it took on the monotonic clock, and what it logged.
    func acquireFailure(_ path: String, timeout: Double, within limit: Double,
                        file: StaticString = #filePath, line: UInt = #line) -> (failure: NestboxFailure?, seconds: Double, log: String) {
        final class Attempt: @unchecked Sendable {
            var result: Result<DotLock, Error>? = nil
            var seconds = 0.0
            let done = DispatchSemaphore(value: 0)
        }
        let attempt = Attempt()
        let logPath = "\(TestFS.makeTempDir("nestbox-log"))/stderr"
        defer { TestFS.removeTree(Files.directoryName(logPath)) }
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        precondition(logFD >= 0, "open \(logPath): \(errnoText(errno))")
        let savedStderr = dup(2)
        dup2(logFD, 2)
        close(logFD)
        DispatchQueue.global().async {
            let start = monotonicSeconds()
            attempt.result = Result { try DotLock.acquire(path, options: DotLock.Options(timeout: timeout)) }
            attempt.seconds = monotonicSeconds() - start
            attempt.done.signal()
        }
        let finished = attempt.done.wait(timeout: .now() + limit) == .success
        dup2(savedStderr, 2)
        close(savedStderr)
        let log = TestFS.readText(logPath) ?? ""
        guard finished else {
            XCTFail("acquire with a timeout of \(timeout) s still waiting after \(limit) s; logged \(log.utf8.count) bytes", file: file, line: line)
            return (nil, limit, log)
        }
        switch attempt.result! {
        case .success(let lock):
            XCTFail("acquired \(lock.path), expected a failure", file: file, line: line)
            lock.release()
            return (nil, attempt.seconds, log)
        case .failure(let error):
            guard let failure = error as? NestboxFailure else {
                XCTFail("expected a NestboxFailure, got \(type(of: error)): \(error)", file: file, line: line)
                return (nil, attempt.seconds, log)
            }
            return (failure, attempt.seconds, log)
        }
    }

    /// A lock path that is not a regular file is nobody's lock and not ours to remove: a
    /// temporary failure at once (not after the timeout) that tells the administrator what it is.
    @discardableResult
    func assertRefusedAtOnce(_ what: String, file: StaticString = #filePath, line: UInt = #line) -> NestboxFailure? {
        let (failure, seconds, log) = acquireFailure(lockPath, timeout: 5, within: 10, file: file, line: line)
        XCTAssertLessThan(seconds, 1.0, "no waiting for the timeout", file: file, line: line)
        XCTAssertEqual(failure?.outcome.status, "4.3.0", file: file, line: line)
        XCTAssertEqual(failure?.outcome.exitCode, 75, file: file, line: line)
        XCTAssertEqual(failure?.outcome.isTemporary, true, file: file, line: line)
        XCTAssertEqual(failure?.detail.contains(lockPath), true, failure?.detail ?? "", file: file, line: line)
        XCTAssertEqual(failure?.detail.contains("is \(what)"), true, failure?.detail ?? "", file: file, line: line)
        XCTAssertLessThanOrEqual(log.split(separator: "\n").count, 1, log, file: file, line: line)
        return failure
    }

    func testLockThatIsADirectoryFailsAtOnce() {
        // Old enough to be stale by every rule: removing it is what used to be tried without end.
        XCTAssertEqual(mkdir(lockPath, 0o700), 0)
        TestFS.age(lockPath, by: 200)
        assertRefusedAtOnce("a directory")
        XCTAssertTrue(Files.isDirectory(lockPath), "left for the administrator")
        XCTAssertEqual(rmdir(lockPath), 0)
        // A fresh one as well.
        XCTAssertEqual(mkdir(lockPath, 0o700), 0)
        assertRefusedAtOnce("a directory")
        XCTAssertTrue(Files.isDirectory(lockPath))
    }

    func testLockThatIsASymbolicLinkFailsAtOnceAndItsTargetIsUntouched() {
        let target = "\(dir)/target"
        let content = "\(deadPID()):\(Host.name)"  // stale, were it a lock
        TestFS.write(target, content)
        TestFS.age(target, by: 200)
        XCTAssertEqual(symlink(target, lockPath), 0)
        assertRefusedAtOnce("a symbolic link")
        XCTAssertEqual(TestFS.readText(target), content, "the link's target is untouched")
        var st = stat()
        XCTAssertEqual(lstat(lockPath, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFLNK, "the link is left for the administrator")
        // A dangling one as well.
        XCTAssertEqual(unlink(lockPath), 0)
        XCTAssertEqual(symlink("\(dir)/nowhere", lockPath), 0)
        assertRefusedAtOnce("a symbolic link")
        XCTAssertFalse(TestFS.exists("\(dir)/nowhere"), "nothing created through the link")
    }

    func testLockThatIsANamedPipeFailsAtOnce() {
        // Opening a fifo for reading would block until a writer comes.
        XCTAssertEqual(mkfifo(lockPath, 0o600), 0)
        assertRefusedAtOnce("a named pipe")
    }

    /// Runs a program to completion; its exit status (-1 if it could not be started).
    func runProgram(_ arguments: [String]) -> Int32 {
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        guard posix_spawnp(&pid, arguments[0], nil, nil, &argv, environ) == 0 else { return -1 }
        var status: Int32 = 0
        guard waitpid(pid, &status, 0) == pid else { return -1 }
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
    }

    func testStaleLockThatCannotBeRemovedTimesOutWithOneLogLine() throws {
        let content = "\(deadPID()):\(Host.name)"
        TestFS.write(lockPath, Array(content.utf8), mode: 0o644)
        // unlink must fail: as root only an immutable lock does it (chattr +i; EPERM), otherwise
        // a directory we may not write to (EACCES).
        if getuid() == 0 {
            guard runProgram(["chattr", "+i", lockPath]) == 0 else {
                return XCTFail("chattr +i failed (e2fsprogs, a file system with immutable files): no lock that root cannot remove")
            }
        } else {
            XCTAssertEqual(chmod(dir, 0o555), 0)
        }
        defer {
            if getuid() == 0 { _ = runProgram(["chattr", "-i", lockPath]) } else { chmod(dir, 0o700) }
        }
        XCTAssertNotEqual(unlink(lockPath), 0, "the lock can be removed: the case is not set up")

        let (failure, seconds, log) = acquireFailure(lockPath, timeout: 1, within: 10)
        XCTAssertGreaterThanOrEqual(seconds, 1.0, "waited for the timeout")
        XCTAssertLessThan(seconds, 2.0, "gave up at the timeout")
        XCTAssertEqual(failure?.outcome.status, "4.3.0")
        XCTAssertEqual(failure?.outcome.exitCode, 75)
        XCTAssertEqual(failure?.detail.contains("timed out"), true, failure?.detail ?? "")
        XCTAssertEqual(failure?.detail.contains(lockPath), true, failure?.detail ?? "")
        let lines = log.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "one line about the lock that cannot be removed, not one per retry:\n\(log.prefix(2000))")
        XCTAssertEqual(lines.first?.contains(lockPath), true, log)
        XCTAssertEqual(TestFS.readText(lockPath), content, "the lock is as it was")
    }

    func testDefaultOptionsAreDovecots() {
        let o = DotLock.Options()
        XCTAssertEqual(o.timeout, 122)
        XCTAssertEqual(o.staleAfter, 120)
    }
}
