#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// Store housekeeping: expired duplicate records, old spool files and old creation trees go;
/// fresh ones stay.
final class HousekeepingTests: TempDirTestCase {
    func testRemovesOnlyWhatIsOld() throws {
        let store = MailStore(config: try NamesTests.config([("partition-default", "\(dir)/mail")]))
        try store.prepare()
        let db = DuplicateDB(directory: store.duplicatesDirectory, expiry: 3600)
        let oldKey = DuplicateDB.key(messageID: "<old@x>", date: nil, mailbox: "alice")!
        let newKey = DuplicateDB.key(messageID: "<new@x>", date: nil, mailbox: "alice")!
        db.record(oldKey, seconds: time(nil) - 7200)
        db.record(newKey)
        TestFS.write("\(store.spoolDirectory)/fresh", "x")
        TestFS.write("\(store.spoolDirectory)/stale", "x")
        TestFS.mkdirs("\(store.creationDirectory)/fresh/cur")
        TestFS.mkdirs("\(store.creationDirectory)/stale/cur")
        TestFS.age("\(store.creationDirectory)/stale", by: 2 * 86400)

        // Spool files are judged by ctime, which cannot be set back: a zero age takes every
        // file; creation trees by mtime.
        let result = store.housekeeping(duplicates: db, age: 86400)
        XCTAssertEqual(result.duplicateRecords, 1)
        XCTAssertFalse(db.contains(oldKey))
        XCTAssertTrue(db.contains(newKey))
        XCTAssertEqual(result.creationTrees, 1)
        XCTAssertEqual(TestFS.list(store.creationDirectory), ["fresh"])
        XCTAssertEqual(result.spoolFiles, 0)
        XCTAssertEqual(TestFS.list(store.spoolDirectory), ["fresh", "stale"])

        let again = store.housekeeping(duplicates: nil, age: 0)
        XCTAssertEqual(again.duplicateRecords, 0)
        XCTAssertEqual(again.spoolFiles, 2)
        XCTAssertEqual(TestFS.list(store.spoolDirectory), [])
    }

    /// Lock files (DotLockHitch.swift) of processes that are gone go; a live process's stays.
    func testLockFilesOfProcessesThatAreGone() throws {
        let store = MailStore(config: try NamesTests.config([("partition-default", "\(dir)/mail")]))
        try store.prepare()
        XCTAssertFalse(Files.isDirectory(store.locksDirectory), "not made for every delivery")
        // Ours, made by a lock as nestbox-lmtpd makes it (and with it the directory).
        DotLock.hitch = DotLockHitch(base: store.root, relative: MailStore.locksRelative)
        defer { DotLock.hitch?.remove(); DotLock.hitch = nil }
        try DotLock.acquire("\(dir)/x.lock").release()
        XCTAssertTrue(Files.isDirectory(store.locksDirectory), "made by the first hitch")
        let host = DotLockHitch.hostLabel
        let ours = TestFS.list(store.locksDirectory).filter { $0.hasPrefix("lock.\(host).\(getpid()).") }
        XCTAssertEqual(ours.count, 1)
        let dead = deadPID()
        TestFS.write("\(store.locksDirectory)/lock.\(host).\(dead).1a", "\(dead):\(Host.name)")
        TestFS.write("\(store.locksDirectory)/lock.\(host).1.2b", "1:\(Host.name)")  // init: alive
        TestFS.write("\(store.locksDirectory)/lock.other_host.\(dead).3c", "\(dead):other.host")
        TestFS.write("\(store.locksDirectory)/lock.\(host).\(dead).4d", "")  // its maker died before writing
        TestFS.age("\(store.locksDirectory)/lock.\(host).\(dead).4d", by: 60)

        let result = store.housekeeping(duplicates: nil, age: 86400)
        XCTAssertEqual(result.lockFiles, 2)
        XCTAssertEqual(TestFS.list(store.locksDirectory), (["lock.\(host).1.2b", "lock.other_host.\(dead).3c"] + ours).sorted(),
                       "another host's pid cannot be judged here: only its age counts")
        XCTAssertEqual(store.housekeeping(duplicates: nil, age: -1).lockFiles, 1, "older than the age: another host's")
        XCTAssertEqual(TestFS.list(store.locksDirectory), (["lock.\(host).1.2b"] + ours).sorted(),
                       "this host's live processes keep theirs however old")
    }

    func testToolFormUsesTheConfiguredDatabaseAndExpiry() throws {
        let store = MailStore(config: try NamesTests.config([("partition-default", "\(dir)/mail"),
                                                             ("duplicatesuppression", "no")]))
        try store.prepare()
        let db = DuplicateDB(directory: store.duplicatesDirectory, expiry: store.config.duplicateExpire)
        let key = DuplicateDB.key(messageID: "<old@x>", date: nil, mailbox: "alice")!
        db.record(key, seconds: time(nil) - 400 * 86400)
        XCTAssertEqual(store.housekeeping().duplicateRecords, 1)
        XCTAssertFalse(db.contains(key))
    }

    func testLinkedAreasAreNotCleaned() throws {
        // .nestbox/spool and a duplicate bucket replaced by links to a directory outside the
        // mail root: the old files there are not ours and stay.
        let store = MailStore(config: try NamesTests.config([("partition-default", "\(dir)/mail")]))
        try store.prepare()
        let elsewhere = "\(dir)/elsewhere"
        TestFS.mkdirs(elsewhere)
        TestFS.write("\(elsewhere)/old", "x")
        TestFS.age("\(elsewhere)/old", by: 400 * 86400)
        XCTAssertEqual(rmdir(store.spoolDirectory), 0)
        XCTAssertEqual(symlink(elsewhere, store.spoolDirectory), 0)
        TestFS.mkdirs(store.duplicatesDirectory)
        XCTAssertEqual(symlink(elsewhere, "\(store.duplicatesDirectory)/ab"), 0)
        XCTAssertEqual(symlink("\(elsewhere)/old", "\(store.duplicatesDirectory)/cd.log"), 0)
        let result = store.housekeeping(duplicates: DuplicateDB(directory: store.duplicatesDirectory, expiry: 1), age: 0)
        XCTAssertEqual(result.spoolFiles, 0)
        XCTAssertEqual(result.duplicateRecords, 0)
        XCTAssertEqual(TestFS.list(elsewhere), ["old"])
    }
}
