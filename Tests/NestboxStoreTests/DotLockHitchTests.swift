#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
@testable import NestboxSupport

/// Locks taken as links to the process's hitch: the same lock to everyone else (content, mode,
/// fresh mtime, exclusion), no inode made or freed per lock, and O_EXCL whenever a link cannot do.
final class DotLockHitchTests: TempDirTestCase {
    var lockPath: String { "\(dir)/folder/dovecot-uidlist.lock" }
    var ourContent: String { "\(getpid()):\(Host.name)" }

    override func setUp() {
        super.setUp()
        XCTAssertEqual(mkdir("\(dir)/folder", 0o700), 0)
        XCTAssertEqual(mkdir("\(dir)/.nestbox", 0o700), 0)
        XCTAssertEqual(mkdir("\(dir)/.nestbox/locks", 0o700), 0)
        DotLock.hitch = DotLockHitch(base: dir, relative: ".nestbox/locks")
    }

    override func tearDown() {
        DotLock.hitch?.remove()
        DotLock.hitch = nil
        super.tearDown()
    }

    private func hitches() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "\(dir)/.nestbox/locks")) ?? []).sorted()
    }

    private func status(_ path: String) -> stat? {
        var st = stat()
        return lstat(path, &st) == 0 ? st : nil
    }

    func testALockIsALinkToTheHitchAndLooksLikeAnyOther() throws {
        let lock = try DotLock.acquire(lockPath)
        let made = hitches()
        XCTAssertEqual(made.count, 1)
        XCTAssertTrue(made[0].hasPrefix("lock.\(DotLockHitch.hostLabel).\(getpid())."), made[0])
        let hitch = "\(dir)/.nestbox/locks/\(made[0])"
        let st = try XCTUnwrap(status(lockPath))
        XCTAssertEqual(st.st_ino, status(hitch)?.st_ino)
        XCTAssertEqual(st.st_nlink, 2)
        XCTAssertEqual(st.st_mode & 0o7777, 0o600)
        XCTAssertEqual(TestFS.readText(lockPath), ourContent, "<pid>:<hostname>, as an O_EXCL lock")
        lock.release()
        XCTAssertNil(status(lockPath))
        XCTAssertEqual(status(hitch)?.st_nlink, 1, "the hitch stays for the next lock")

        // A second lock and a third beside it: the same inode, nothing made.
        let again = try DotLock.acquire(lockPath)
        let other = try DotLock.acquire("\(dir)/folder/dovecot-keywords.lock")
        XCTAssertEqual(status(hitch)?.st_nlink, 3)
        XCTAssertEqual(hitches(), made)
        other.release()
        again.release()
        XCTAssertEqual(status(hitch)?.st_nlink, 1)
        DotLock.hitch?.remove()
        XCTAssertEqual(hitches(), [], "removed at exit")
    }

    func testEachLockHasAFreshMtimeForStaleJudges() throws {
        _ = try DotLock.acquire(lockPath)  // makes the hitch; released at once
        let hitch = "\(dir)/.nestbox/locks/\(hitches()[0])"
        var old = [timeval(tv_sec: time(nil) - 3600, tv_usec: 0), timeval(tv_sec: time(nil) - 3600, tv_usec: 0)]
        XCTAssertEqual(utimes(hitch, &old), 0)
        let lock = try DotLock.acquire(lockPath)
        let st = try XCTUnwrap(status(lockPath))
        XCTAssertLessThan(abs(Int(time(nil)) - Int(st.st_mtim.tv_sec)), 3, "not the hitch's old time")
        // Another process judging it: a live holder, fresh: not stale.
        var unremovable: String? = nil
        XCTAssertFalse(try DotLock.removeIfStale(lockPath, watched: [], staleAfter: 120, unremovable: &unremovable))
        XCTAssertTrue(TestFS.exists(lockPath))
        lock.release()
    }

    func testAHeldLockExcludesAndADeadOneIsTakenOver() throws {
        TestFS.write(lockPath, "1:\(Host.name)")  // init: alive
        let failure = XCTAssertThrowsFailure(try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 0.3)))
        XCTAssertEqual(failure?.outcome.exitCode, 75)
        XCTAssertEqual(TestFS.readText(lockPath), "1:\(Host.name)", "left as it was")
        XCTAssertEqual(unlink(lockPath), 0)

        // The hitched lock of a process killed while holding it: its hitch left behind,
        // linked as the lock. Judged by its content like any lock, and taken over at once.
        let dead = "\(dir)/.nestbox/locks/lock.\(DotLockHitch.hostLabel).1.dead"
        TestFS.write(dead, "\(deadPID()):\(Host.name)")
        XCTAssertEqual(link(dead, lockPath), 0)
        let start = monotonicSeconds()
        let lock = try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 5))
        XCTAssertLessThan(monotonicSeconds() - start, 1.0)
        XCTAssertEqual(TestFS.readText(lockPath), ourContent)
        XCTAssertEqual(status(dead)?.st_nlink, 1, "the dead hitch is for the housekeeping")
        lock.release()
        XCTAssertNil(status(lockPath))
    }

    /// A lock of ours judged stale and removed by another process, then taken again by
    /// another thread of ours at the same path: the first holder's release leaves the second
    /// holder's lock alone (same inode, same content: only the link's owner may remove it).
    func testAReleaseNeverRemovesTheLatestLinkOfAnotherHolder() throws {
        let first = try DotLock.acquire(lockPath)
        XCTAssertEqual(unlink(lockPath), 0)  // judged stale by someone else
        let second = try DotLock.acquire(lockPath, options: DotLock.Options(timeout: 1))
        first.release()
        XCTAssertEqual(status(lockPath)?.st_nlink, 2, "the second holder's lock stands")
        second.release()
        XCTAssertNil(status(lockPath))

        // Replaced by another process's own lock (another inode): left alone.
        let third = try DotLock.acquire(lockPath)
        XCTAssertEqual(unlink(lockPath), 0)
        TestFS.write(lockPath, "1:\(Host.name)")
        third.release()
        XCTAssertEqual(TestFS.readText(lockPath), "1:\(Host.name)")
    }

    /// After `remove` (at exit) locks still held are released as usual and new ones are made
    /// with O_EXCL: no hitch is made again.
    func testRemoveAtExitLeavesHeldLocksReleasable() throws {
        let held = try DotLock.acquire(lockPath)
        DotLock.hitch?.remove()
        XCTAssertEqual(hitches(), [])
        let later = try DotLock.acquire("\(dir)/folder/other.lock")
        XCTAssertEqual(status("\(dir)/folder/other.lock")?.st_nlink, 1)
        later.release()
        held.release()
        XCTAssertNil(status(lockPath))
        XCTAssertEqual(hitches(), [])
    }

    func testAHitchRemovedBySomeoneElseIsMadeAgain() throws {
        try DotLock.acquire(lockPath).release()
        let first = hitches()
        XCTAssertEqual(first.count, 1)
        XCTAssertEqual(unlink("\(dir)/.nestbox/locks/\(first[0])"), 0)
        let lock = try DotLock.acquire(lockPath)
        let now = hitches()
        XCTAssertEqual(now.count, 1)
        XCTAssertNotEqual(now, first)
        XCTAssertEqual(status(lockPath)?.st_nlink, 2)
        lock.release()
        XCTAssertNil(status(lockPath))
    }

    func testWithoutALinkTheLockIsMadeWithOExcl() throws {
        // Another file system: link(2) gives EXDEV.
        let elsewhere = "/dev/shm/nestbox-hitch-\(getpid())"
        XCTAssertEqual(mkdir(elsewhere, 0o700), 0)
        defer { TestFS.removeTree(elsewhere) }
        let lock = try DotLock.acquire("\(elsewhere)/dovecot-uidlist.lock")
        XCTAssertEqual(status("\(elsewhere)/dovecot-uidlist.lock")?.st_nlink, 1)
        XCTAssertEqual(TestFS.readText("\(elsewhere)/dovecot-uidlist.lock"), ourContent)
        lock.release()
        XCTAssertNil(status("\(elsewhere)/dovecot-uidlist.lock"))

        // No directory can be made for the hitch (a level is a file), or one is reached
        // through a link.
        TestFS.write("\(dir)/file", "x")
        DotLock.hitch = DotLockHitch(base: dir, relative: "file/locks")
        let plain = try DotLock.acquire(lockPath)
        XCTAssertEqual(status(lockPath)?.st_nlink, 1)
        plain.release()
        XCTAssertNil(status(lockPath))
        XCTAssertEqual(symlink("\(dir)/.nestbox", "\(dir)/linked"), 0)
        DotLock.hitch = DotLockHitch(base: dir, relative: "linked/locks")
        let refused = try DotLock.acquire(lockPath)
        XCTAssertEqual(status(lockPath)?.st_nlink, 1, "no hitch made through a symbolic link")
        refused.release()

        // The lock directory missing: the same error as without a hitch.
        DotLock.hitch = DotLockHitch(base: dir, relative: ".nestbox/locks")
        XCTAssertThrowsError(try DotLock.acquire("\(dir)/nowhere/x.lock", options: DotLock.Options(timeout: 0.3)))
    }
}
