#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// Expunge: files unlinked, records dropped with every other UID and N kept, the negative
/// quota delta appended (only where maildirsize exists).
final class ExpungeTests: TempDirTestCase {
    let policy = MaintenanceFixture.lockPolicy

    /// Four messages, UIDs 1..4; 2 and 4 carry \Deleted (T) in cur/.
    private func populated(quota: Bool) throws -> (Folder, [String]) {
        let folder = try MaintenanceFixture.inbox(dir)
        if quota { TestFS.write("\(folder.mailRoot)/maildirsize", "1000000S,100C\n") }
        var stems: [String] = []
        for i in 1...4 {
            let deleted = i % 2 == 0
            stems.append(MaintenanceFixture.put(folder, MaintenanceFixture.message(i), base: "170000000\(i).M1P1.mx",
                                                sub: deleted ? "cur" : "new", flags: deleted ? "ST" : nil))
        }
        try folder.assignUIDs()
        if quota {
            let total = stems.compactMap { MaildirName($0).size }.reduce(0, +)
            try QuotaRoot(root: folder.mailRoot).append(bytes: total, messages: 4)
        }
        return (folder, stems)
    }

    func testExpungeDeletedKeepsSurvivorsUIDsAndN() throws {
        let (folder, stems) = try populated(quota: true)
        let before = try XCTUnwrap(try folder.uidList.read())
        let result = try folder.expunge(options: policy) { $0.has(.deleted) }
        XCTAssertEqual(result.removed.map(\.uid), [2, 4])
        XCTAssertEqual(result.records.map(\.uid), [2, 4])
        XCTAssertEqual(result.count, 2)
        let removedBytes = [stems[1], stems[3]].compactMap { MaildirName($0).size }.reduce(0, +)
        XCTAssertEqual(result.bytes, removedBytes)
        XCTAssertEqual(TestFS.list("\(folder.path)/cur"), [])
        XCTAssertEqual(TestFS.list("\(folder.path)/new"), [stems[0], stems[2]])
        let after = try XCTUnwrap(try folder.uidList.read())
        XCTAssertEqual(after.records.map(\.uid), [1, 3])
        XCTAssertEqual(after.header.uidValidity, before.header.uidValidity)
        XCTAssertEqual(after.nextUID, 5)
        XCTAssertFalse(TestFS.exists(folder.uidList.lockPath), "the lock is released")
        // maildirsize: the delta line appended, and the usage that of the survivors.
        let text = try XCTUnwrap(TestFS.readText("\(folder.mailRoot)/maildirsize"))
        XCTAssertTrue(text.hasSuffix("\n-\(removedBytes) -2\n"), text)
        let usage = try XCTUnwrap(try QuotaRoot(root: folder.mailRoot).current()).usage
        let survivors = [stems[0], stems[2]].compactMap { MaildirName($0).size }.reduce(0, +)
        XCTAssertEqual(usage, QuotaUsage(bytes: survivors, messages: 2))
    }

    func testExpungeByUIDWithoutQuotaFile() throws {
        let (folder, stems) = try populated(quota: false)
        let result = try folder.expunge(uids: [1, 3, 77], options: policy)
        XCTAssertEqual(result.removed.map(\.name.stem), [stems[0], stems[2]])
        XCTAssertEqual(try folder.uidList.read()?.records.map(\.uid), [2, 4])
        XCTAssertFalse(TestFS.exists("\(folder.mailRoot)/maildirsize"), "no maildirsize is made")
    }

    func testRecordOfARequestedUIDWhoseFileIsGoneIsDroppedButNotCounted() throws {
        let (folder, stems) = try populated(quota: true)
        unlink("\(folder.path)/new/\(stems[0])")
        let result = try folder.expunge(uids: [1], options: policy)
        XCTAssertEqual(result.removed, [])
        XCTAssertEqual(result.records.map(\.uid), [1])
        XCTAssertEqual(result.count, 0)
        let text = try XCTUnwrap(TestFS.readText("\(folder.mailRoot)/maildirsize"))
        XCTAssertFalse(text.contains("-"), "nothing removed here, nothing uncounted: \(text)")
    }

    func testExpungeWaitsForTheLockAndFailsTemporarilyWhenHeld() throws {
        let (folder, stems) = try populated(quota: true)
        let session = try folder.beginUIDListSession(options: policy)
        defer { session.finish() }
        XCTAssertThrowsFailure(try folder.expunge(uids: [1], options: DotLock.Options(timeout: 0.2)))
        XCTAssertTrue(TestFS.exists("\(folder.path)/new/\(stems[0])"), "nothing removed without the lock")
    }
}

extension ExpungeTests {
    /// Dovecot renames a file (a flag change) without the uidlist lock: the expunge follows the
    /// stem to its new name.
    func testFollowsAFileRenamedAfterTheScan() throws {
        let (folder, stems) = try populated(quota: true)
        let scan = try FolderScan.scan(folder, readFiles: false)
        let m = try XCTUnwrap(scan.messages.first { $0.uid == 1 })
        rename(m.path, "\(folder.path)/cur/\(stems[0]):2,S")
        XCTAssertEqual(try folder.unlinkMessage(m), "\(folder.path)/cur/\(stems[0]):2,S")
        XCTAssertEqual(TestFS.list("\(folder.path)/cur").filter { $0.hasPrefix(stems[0]) }, [])
        XCTAssertNil(try folder.unlinkMessage(m), "gone everywhere: nil, nothing thrown")
    }
}
