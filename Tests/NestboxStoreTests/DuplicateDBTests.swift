#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// The duplicate database's records on disk: what a reader sees at each step of a delivery.
final class DuplicateDBTests: TempDirTestCase {
    private var root: String { dir }
    var db: DuplicateDB { DuplicateDB(directory: "\(root)/dup", expiry: 3600) }
    let key = DuplicateDB.key(messageID: "<m@example.org>", date: "Mon, 30 Nov 2026 12:00:00 +0000", mailbox: "alice")!

    /// The one record file of the database.
    func recordPath() throws -> String {
        let buckets = TestFS.list("\(root)/dup")
        XCTAssertEqual(buckets.count, 1)
        let names = TestFS.list("\(root)/dup/\(buckets[0])")
        XCTAssertEqual(names.count, 1)
        return "\(root)/dup/\(buckets[0])/\(names[0])"
    }

    func testPendingRecordSuppressesOnlyWhileItsFileExists() throws {
        XCTAssertEqual(mkdir("\(root)/new", 0o700), 0)
        XCTAssertEqual(mkdir("\(root)/cur", 0o700), 0)
        let message = "\(root)/new/1.M1P1Q1.host,S=10,W=11"
        db.recordPending(key, messagePath: message)
        XCTAssertFalse(db.contains(key), "no file: the retry must be stored")
        TestFS.write(message, "0123456789")
        XCTAssertTrue(db.contains(key), "the file is there: the retry must be suppressed")
        XCTAssertEqual(rename(message, "\(root)/cur/1.M1P1Q1.host,S=10,W=11:2,S"), 0)
        XCTAssertTrue(db.contains(key), "flags set by Dovecot: still the same message")
    }

    func testMakingARecordFinalOnlyCutsIt() throws {
        XCTAssertEqual(mkdir("\(root)/new", 0o700), 0)
        db.recordPending(key, messagePath: "\(root)/new/x")
        let path = try recordPath()
        let inode = TestFS.inode(path)
        let pending = try XCTUnwrap(Files.read(path))
        XCTAssertTrue(pending.starts(with: key) && pending.count > key.count)
        db.record(key)
        // Same file, cut back to the key: no instant at which it was empty.
        XCTAssertEqual(TestFS.inode(path), inode)
        XCTAssertEqual(try Files.read(path), key)
        XCTAssertTrue(db.contains(key))
    }

    func testPendingRecordOverAnOlderLongerOneNamesTheNewFile() throws {
        XCTAssertEqual(mkdir("\(root)/new", 0o700), 0)
        db.recordPending(key, messagePath: "\(root)/new/a-rather-long-name-of-a-file-that-is-gone")
        db.recordPending(key, messagePath: "\(root)/new/short")
        let path = try recordPath()
        XCTAssertEqual(try Files.read(path), key + DuplicateDB.pendingMarker + Array("\(root)/new/short".utf8))
        TestFS.write("\(root)/new/short", "x")
        XCTAssertTrue(db.contains(key))
    }

    func testEmptyRecordLeftByACrashNeitherSuppressesNorBlocks() throws {
        db.record(key)
        let path = try recordPath()
        TestFS.write(path, [UInt8]())
        XCTAssertFalse(db.contains(key))
        let other = DuplicateDB.key(messageID: "<other@example.org>", date: nil, mailbox: "alice")!
        XCTAssertFalse(db.contains(other))
    }
}
