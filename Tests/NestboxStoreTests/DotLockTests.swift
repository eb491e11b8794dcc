#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport

/// Dovecot-style dotlocks: `<path>.lock`, content `<pid>:<host>`, stale rules, timeouts.
final class DotLockTests: TempDirTestCase {
    var lockPath: String { "\(dir)/dovecot-uidlist.lock" }
    var ourContent: String { "\(getpid()):\(Host.name)" }

    /// The pid of a process that has exited and been reaped.
    func deadPID() -> pid_t {
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        defer { free(argv[0]) }
        let rc = posix_spawn(&pid, "/bin/true", nil, nil, &argv, environ)
        precondition(rc == 0, "posix_spawn /bin/true: \(errnoText(rc))")
        var status: Int32 = 0
        precondition(waitpid(pid, &status, 0) == pid)
        precondition(kill(pid, 0) != 0 && errno == ESRCH, "pid \(pid) is not dead")
        return pid
    }

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

    func testDefaultOptionsAreDovecots() {
        let o = DotLock.Options()
        XCTAssertEqual(o.timeout, 122)
        XCTAssertEqual(o.staleAfter, 120)
    }
}
