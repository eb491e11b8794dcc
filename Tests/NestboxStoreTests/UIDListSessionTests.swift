#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// The locked uidlist session: the lock is held from begin to finish, append, rewrite and
/// removal keep UIDVALIDITY and never lower N, and rewrites replace the file by rename.
final class UIDListSessionTests: TempDirTestCase {
    let policy = MaintenanceFixture.lockPolicy

    func testBeginTakesTheLockAndFinishReleasesIt() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        let session = try folder.beginUIDListSession(options: policy)
        XCTAssertTrue(TestFS.exists(folder.uidList.lockPath))
        XCTAssertTrue(session.isOpen)
        // A second taker (another process's view: same rules) times out while it is held.
        XCTAssertThrowsFailure(try folder.beginUIDListSession(options: DotLock.Options(timeout: 0.2)))
        session.finish()
        XCTAssertFalse(TestFS.exists(folder.uidList.lockPath))
        session.finish()  // twice is harmless
        XCTAssertFalse(session.isOpen)
    }

    func testAppendThenReadUnderTheLock() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        let session = try folder.beginUIDListSession(options: policy)
        defer { session.finish() }
        XCTAssertNil(try session.read())
        XCTAssertEqual(try session.append(["a,S=1,W=1", "b,S=2,W=2"]), [1, 2])
        XCTAssertEqual(try session.append(["c,S=3,W=3", "a,S=1,W=1"]), [3, 1], "a recorded stem keeps its UID")
        let list = try XCTUnwrap(try session.read())
        XCTAssertEqual(list.records.map(\.uid), [1, 2, 3])
        XCTAssertEqual(list.records.map(\.stem), ["a,S=1,W=1", "b,S=2,W=2", "c,S=3,W=3"])
    }

    func testRemoveKeepsOtherUIDsValidityAndN() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        let session = try folder.beginUIDListSession(options: policy)
        defer { session.finish() }
        _ = try session.append(["a", "b", "c", "d"])
        let before = try XCTUnwrap(try session.read())
        let inode = TestFS.inode(folder.uidList.path)
        let removed = try session.remove(uids: [2, 4, 99])
        XCTAssertEqual(removed.map(\.uid), [2, 4])
        let after = try XCTUnwrap(try session.read())
        XCTAssertEqual(after.records.map(\.uid), [1, 3])
        XCTAssertEqual(after.records.map(\.stem), ["a", "c"])
        XCTAssertEqual(after.header.uidValidity, before.header.uidValidity)
        XCTAssertEqual(after.header.guid, before.header.guid)
        XCTAssertEqual(after.header.nextUID, 5, "N stays above the removed last UID")
        XCTAssertNotEqual(TestFS.inode(folder.uidList.path), inode, "a rewrite is a new file (rename)")
        XCTAssertFalse(TestFS.exists("\(folder.uidList.path).tmp"))
        XCTAssertEqual(try session.append(["e"]), [5], "a removed UID is never given again")
        XCTAssertEqual(try session.remove(uids: []), [])
    }

    func testRewriteRefusesWhatDovecotWouldDiscard() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        let session = try folder.beginUIDListSession(options: policy)
        defer { session.finish() }
        _ = try session.append(["a", "b", "c"])
        let list = try XCTUnwrap(try session.read())
        let bytes = TestFS.read(folder.uidList.path)

        var lower = list
        lower.records.removeLast()
        lower.header.nextUID = 3
        XCTAssertThrowsFailure(try session.rewrite(lower), "N lowered")

        var otherValidity = list
        otherValidity.header.uidValidity += 1
        XCTAssertThrowsFailure(try session.rewrite(otherValidity), "UIDVALIDITY changed")

        var unordered = list
        unordered.records.swapAt(0, 1)
        XCTAssertThrowsFailure(try session.rewrite(unordered), "UIDs not increasing")

        var badName = list
        badName.records[0].name = "a/b"
        XCTAssertThrowsFailure(try session.rewrite(badName), "name with /")

        XCTAssertEqual(TestFS.read(folder.uidList.path), bytes, "nothing written by a refused rewrite")

        var fine = list
        fine.records[1].extensions = ["W1260"]
        try session.rewrite(fine)
        let written = try XCTUnwrap(try session.read())
        XCTAssertEqual(written.records, fine.records)
        XCTAssertEqual(written.header.nextUID, 4, "a rewrite writes the effective N into the header")
        XCTAssertEqual(written.header.uidValidity, list.header.uidValidity)
    }

    func testDeliveryAppendWorksAfterASessionRewrite() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        let session = try folder.beginUIDListSession(options: policy)
        _ = try session.append(["a", "b"])
        try session.remove(uids: [2])
        session.finish()
        // The delivery path (lock, appendLocked) as GroupCommit uses it.
        let lock = try folder.uidList.lock(options: policy)
        XCTAssertEqual(try folder.uidList.appendLocked(["c"]), [3])
        lock.release()
        XCTAssertEqual(try folder.uidList.read()?.records.map(\.uid), [1, 3])
    }
}

extension UIDListSessionTests {
    /// keepAlive touches the lock only once 10 s have passed: calling it on every file costs
    /// nothing, and a long holder is never judged stale.
    func testKeepAliveIsRateLimited() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        let session = try folder.beginUIDListSession(options: policy)
        defer { session.finish() }
        TestFS.age(folder.uidList.lockPath, by: 60)
        let aged = try XCTUnwrap(try Files.status(folder.uidList.lockPath)).st_mtim.tv_sec
        session.keepAlive()
        XCTAssertEqual(try Files.status(folder.uidList.lockPath)?.st_mtim.tv_sec, aged, "not yet 10 s since begin")
    }
}
