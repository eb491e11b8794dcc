#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// The folder scan: files joined to records by stem, each kind of mismatch reported, nothing
/// changed on disk.
final class FolderScanTests: TempDirTestCase {
    func testCleanFolder() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        let a = MaintenanceFixture.put(folder, MaintenanceFixture.message(1), base: "1700000000.M1P1.mx")
        let b = MaintenanceFixture.put(folder, MaintenanceFixture.message(2), base: "1700000001.M1P1.mx", sub: "cur", flags: "ST")
        try folder.assignUIDs()
        let scan = try FolderScan.scan(folder)
        XCTAssertTrue(scan.isClean, "\(scan)")
        XCTAssertEqual(scan.messages.map(\.uid), [1, 2])
        XCTAssertEqual(scan.messages.map(\.name.stem), [a, b])
        XCTAssertEqual(scan.messages.map(\.subdirectory), ["new", "cur"])
        XCTAssertTrue(scan.messages[1].has(.deleted))
        XCTAssertFalse(scan.messages[0].has(.deleted))
        XCTAssertEqual(scan.messages[0].virtualSize, scan.messages[0].name.virtualSize)
    }

    func testEachKindOfOrphanAndWrongSize() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        let gone = MaintenanceFixture.put(folder, MaintenanceFixture.message(1), base: "1700000000.M1P1.mx")
        let kept = MaintenanceFixture.put(folder, MaintenanceFixture.message(2), base: "1700000001.M1P1.mx")
        try folder.assignUIDs()
        unlink("\(folder.path)/new/\(gone)")  // a record whose file is gone
        let fresh = MaintenanceFixture.put(folder, MaintenanceFixture.message(3), base: "1700000002.M1P1.mx")  // no record
        // The same base twice (new/ and cur/, different fields).
        let twinA = MaintenanceFixture.put(folder, "twin\n", base: "1700000003.M1P1.mx")
        let twinB = MaintenanceFixture.put(folder, "twin two\n", base: "1700000003.M1P1.mx", sub: "cur", flags: "S")
        // Wrong and missing sizes: 12 bytes, 3 LFs (W=15); 11 bytes, 2 LFs (W=13).
        TestFS.write("\(folder.path)/cur/1700000004.M1P1.mx,S=99,W=15:2,", "line one\nx\n\n")
        TestFS.write("\(folder.path)/cur/1700000005.M1P1.mx,S=11,W=11:2,", "line one\nx\n")
        TestFS.write("\(folder.path)/new/1700000006.M1P1.mx", "line one\nx\n")
        let listBefore = TestFS.read(folder.uidList.path)
        let namesBefore = TestFS.list("\(folder.path)/new") + TestFS.list("\(folder.path)/cur")

        let scan = try FolderScan.scan(folder)
        XCTAssertEqual(scan.missingFiles.map(\.stem), [gone])
        XCTAssertEqual(scan.missingFiles.map(\.uid), [1])
        XCTAssertEqual(Set(scan.unrecorded.map(\.name.stem)),
                       [fresh, twinA, twinB, "1700000004.M1P1.mx,S=99,W=15", "1700000005.M1P1.mx,S=11,W=11", "1700000006.M1P1.mx"])
        XCTAssertEqual(scan.messages.first?.name.stem, kept)
        XCTAssertEqual(scan.duplicateBases.count, 1)
        XCTAssertEqual(Set(scan.duplicateBases[0].map(\.name.stem)), [twinA, twinB])
        let wrong = scan.wrongSizes.map { "\(Files.baseName($0.path)) \($0.field.rawValue) \($0.recorded.map(String.init) ?? "-") \($0.actual)" }.sorted()
        XCTAssertEqual(wrong, [
            "1700000004.M1P1.mx,S=99,W=15:2, S 99 12",
            "1700000005.M1P1.mx,S=11,W=11:2, W 11 13",
            "1700000006.M1P1.mx S - 11",
            "1700000006.M1P1.mx W - 13",
        ])
        XCTAssertFalse(scan.isClean)
        XCTAssertEqual(TestFS.read(folder.uidList.path), listBefore, "a scan changes nothing")
        XCTAssertEqual(TestFS.list("\(folder.path)/new") + TestFS.list("\(folder.path)/cur"), namesBefore)
    }

    func testWithoutReadingFilesOnlySizeIsChecked() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        TestFS.write("\(folder.path)/cur/1700000005.M1P1.mx,S=11,W=11:2,", "line one\nx\n")
        let scan = try FolderScan.scan(folder, readFiles: false)
        XCTAssertEqual(scan.wrongSizes, [])
        XCTAssertNil(scan.messages[0].virtualSize)
    }

    func testScanInsideASessionReadsTheListThroughIt() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        MaintenanceFixture.put(folder, MaintenanceFixture.message(1), base: "1700000000.M1P1.mx")
        let session = try folder.beginUIDListSession(options: MaintenanceFixture.lockPolicy)
        defer { session.finish() }
        _ = try session.append(try FolderScan.scan(folder, session: session).unrecorded.map(\.name.stem))
        XCTAssertTrue(try FolderScan.scan(folder, session: session).isClean)
    }

    func testVirtualSizeCountsEveryBareLFAsCRLF() throws {
        let path = "\(dir)/m"
        TestFS.write(path, "a\nb\r\n\n")
        XCTAssertEqual(try FolderScan.virtualSize(path), 6 + 2)
        // A CR ending one 64 KiB chunk still pairs with the LF starting the next.
        TestFS.write(path, Array(repeating: UInt8(ascii: "x"), count: 65535) + [13, 10, 10])
        XCTAssertEqual(try FolderScan.virtualSize(path), 65538 + 1)
        XCTAssertNil(try FolderScan.virtualSize("\(dir)/missing"))
    }
}
