#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// dovecot-uidlist: parsing, serializing, and appending on disk.
final class UIDListTests: TempDirTestCase {
    static let guid = "3c3f1a0f2e0d6b50f06c0000f9d6d8c7"

    static func parse(_ text: String) throws -> UIDList { try UIDList.parse(Array(text.utf8)) }

    // MARK: Parsing

    func testParseV3HeaderKeepsOtherTokensVerbatim() throws {
        let list = try Self.parse("3 V1349188340 N7 G\(Self.guid) Xfoo M123\n")
        XCTAssertEqual(list.header.version, 3)
        XCTAssertEqual(list.header.uidValidity, 1349188340)
        XCTAssertEqual(list.header.nextUID, 7)
        XCTAssertEqual(list.header.guid, Self.guid)
        XCTAssertEqual(list.header.extra, ["Xfoo", "M123"])
        XCTAssertEqual(list.records, [])
        XCTAssertEqual(list.header.line, "3 V1349188340 N7 G\(Self.guid) Xfoo M123")
    }

    func testParseV3Records() throws {
        let text = """
        3 V1000 N10 G\(Self.guid)
        1 :1700000000.M1P2.mx,S=10,W=12
        4 S1234 W1260 :1700000001.M2P2.mx
        5 G0123 :1700000002.M3P2.mx,S=5:2,S
        9 :1700000003.M4P2.mx:2,FS

        """
        let list = try Self.parse(text)
        XCTAssertEqual(list.records.map(\.uid), [1, 4, 5, 9])
        XCTAssertEqual(list.records[0], UIDList.Record(uid: 1, extensions: [], name: "1700000000.M1P2.mx,S=10,W=12"))
        XCTAssertEqual(list.records[1].extensions, ["S1234", "W1260"])
        XCTAssertEqual(list.records[1].name, "1700000001.M2P2.mx")
        XCTAssertEqual(list.records[2].extensions, ["G0123"])
        // Old full names: the name keeps its info, matching uses the stem.
        XCTAssertEqual(list.records[2].name, "1700000002.M3P2.mx,S=5:2,S")
        XCTAssertEqual(list.records[2].stem, "1700000002.M3P2.mx,S=5")
        XCTAssertEqual(list.records[3].stem, "1700000003.M4P2.mx")
        XCTAssertEqual(list.uidsByStem(), [
            "1700000000.M1P2.mx,S=10,W=12": 1, "1700000001.M2P2.mx": 4, "1700000002.M3P2.mx,S=5": 5, "1700000003.M4P2.mx": 9,
        ])
        XCTAssertEqual(list.nextUID, 10)
    }

    func testParseV1() throws {
        let list = try Self.parse("1 1100000000 4\n1 1100000000.12345.host:2,S\n3 1100000001.4.host\n")
        XCTAssertEqual(list.header.version, 1)
        XCTAssertEqual(list.header.uidValidity, 1100000000)
        XCTAssertEqual(list.header.nextUID, 4)
        XCTAssertEqual(list.header.guid, "")
        XCTAssertEqual(list.records.map(\.uid), [1, 3])
        XCTAssertEqual(list.records[0].name, "1100000000.12345.host:2,S")
        XCTAssertEqual(list.records[0].stem, "1100000000.12345.host")
        XCTAssertEqual(list.records[1].name, "1100000001.4.host")
    }

    func testSerializeRoundTrip() throws {
        let texts = [
            "3 V1000 N10 G\(Self.guid)\n1 :a,S=1\n4 S1234 W1260 :b\n5 :c,S=5:2,S\n",
            "3 V1 N1 G\(Self.guid)\n",
            "3 V4294967295 N4294967294 G\(Self.guid) Qx\n4294967293 :z\n",
        ]
        for text in texts {
            let list = try Self.parse(text)
            XCTAssertEqual(String(decoding: list.serialized(), as: UTF8.self), text)
            XCTAssertEqual(try UIDList.parse(list.serialized()), list)
        }
        // A v1 list is written back as v3, with the same mapping.
        let v1 = try Self.parse("1 77 3\n1 a:2,S\n2 b\n")
        let again = try UIDList.parse(v1.serialized())
        XCTAssertEqual(String(decoding: v1.serialized(), as: UTF8.self), "3 V77 N3\n1 :a:2,S\n2 :b\n")
        XCTAssertEqual(again.records, v1.records)
        XCTAssertEqual(again.header.uidValidity, 77)
        XCTAssertEqual(again.header.nextUID, 3)
    }

    func testCorruptListsThrow() {
        let g = Self.guid
        let corrupt: [(String, String)] = [
            ("", "empty file"),
            ("\n", "empty header"),
            ("3 V0 N1 G\(g)\n", "V0"),
            ("3 V1 N0 G\(g)\n", "N0"),
            ("3 N5 G\(g)\n", "no V"),
            ("3 V5 G\(g)\n", "no N"),
            ("3 Vx N1\n", "V not a number"),
            ("9 V1 N1\n", "unknown version"),
            ("x V1 N1\n", "no version"),
            ("1 0 5\n", "v1 with uidvalidity 0"),
            ("1 5\n", "short v1 header"),
            ("3 V1 N9 G\(g)\n2 :a\n2 :b\n", "repeated uid"),
            ("3 V1 N9 G\(g)\n3 :a\n2 :b\n", "decreasing uid"),
            ("3 V1 N9 G\(g)\n0 :a\n", "uid 0"),
            ("3 V1 N9 G\(g)\n4294967295 :a\n", "uid 2^32-1"),
            ("3 V1 N9 G\(g)\n1 :\n", "empty name"),
            ("3 V1 N9 G\(g)\n1 :a/b\n", "name with /"),
            ("3 V1 N9 G\(g)\n1 :../../etc/passwd\n", "name with /"),
            ("3 V1 N9 G\(g)\n1 a\n", "v3 record without :"),
            ("3 V1 N9 G\(g)\nx :a\n", "bad uid"),
            ("3 V1 N9 G\(g)\n-1 :a\n", "negative uid"),
            ("1 1 9\n1 a/b\n", "v1 name with /"),
            ("1 1 9\n1\n", "v1 record without name"),
        ]
        for (text, why) in corrupt {
            XCTAssertThrowsError(try Self.parse(text), why) { error in
                XCTAssertTrue(error is UIDList.Corrupt, "\(why): \(error)")
            }
        }
    }

    func testCorruptLineNumbers() {
        do {
            _ = try Self.parse("3 V1 N9 G\(Self.guid)\n1 :a\n\n3 :b\n2 :c\n")
            XCTFail("expected Corrupt")
        } catch let c as UIDList.Corrupt {
            XCTAssertEqual(c.line, 5)
        } catch {
            XCTFail("\(error)")
        }
    }

    func testNextUIDIsMaxOfHeaderAndLastRecord() throws {
        let table: [(String, UInt32)] = [
            ("3 V1 N1\n", 1),
            ("3 V1 N10\n", 10),
            ("3 V1 N10\n1 :a\n5 :b\n", 10),
            ("3 V1 N3\n1 :a\n5 :b\n", 6),
            ("3 V1 N6\n1 :a\n5 :b\n", 6),
            ("3 V1 N1\n7 :a\n", 8),
        ]
        for (text, next) in table {
            XCTAssertEqual(try Self.parse(text).nextUID, next, text)
        }
    }

    func testAppendingInMemory() throws {
        var list = try Self.parse("3 V1 N10\n3 :a\n")
        XCTAssertEqual(list.appending(["x", "y"]), [10, 11])
        XCTAssertEqual(list.header.nextUID, 10, "N is not touched")
        XCTAssertEqual(list.nextUID, 12)
        XCTAssertEqual(list.records.map(\.name), ["a", "x", "y"])
    }

    // MARK: On disk

    private var root: String { dir }

    private func lockedAppend(_ file: UIDListFile, _ stems: [String]) throws -> [UInt32] {
        let lock = try file.lock(options: DotLock.Options(timeout: 5))
        defer { lock.release() }
        return try file.appendLocked(stems)
    }

    func testAppendCreatesListWithFreshUIDValidity() throws {
        let file = UIDListFile(folder: root, mailRoot: root)
        let before = UInt32(wallSeconds())
        XCTAssertEqual(try lockedAppend(file, ["s1", "s2", "s3"]), [1, 2, 3])
        let after = UInt32(wallSeconds())

        let stored = TestFS.readText("\(root)/dovecot-uidvalidity")
        XCTAssertNotNil(stored)
        XCTAssertEqual(stored?.count, 8, "%08x, no newline: \(stored ?? "")")
        let value = stored.flatMap { UInt32($0, radix: 16) }
        XCTAssertNotNil(value)
        XCTAssertTrue((before...after).contains(value ?? 0), "the first value is the current time")
        XCTAssertTrue(TestFS.exists("\(root)/dovecot-uidvalidity.\(stored ?? "")"), "marker file")
        var st = stat()
        XCTAssertEqual(lstat("\(root)/dovecot-uidvalidity.\(stored ?? "")", &st), 0)
        XCTAssertEqual(st.st_size, 0)

        let list = try XCTUnwrap(try file.read())
        XCTAssertEqual(list.header.uidValidity, value)
        XCTAssertEqual(list.header.guid.count, 32)
        XCTAssertTrue(list.header.guid.allSatisfy { $0.isHexDigit })
        XCTAssertEqual(list.records, [UIDList.Record(uid: 1, name: "s1"), UIDList.Record(uid: 2, name: "s2"),
                                      UIDList.Record(uid: 3, name: "s3")])
        XCTAssertEqual(list.nextUID, 4)
        XCTAssertFalse(TestFS.exists(file.lockPath), "lock released")
        XCTAssertEqual(TestFS.list(root).filter { $0.contains(".tmp") || $0.hasSuffix(".lock") }, [])
    }

    func testAppendKeepsHeaderAndGivesConsecutiveUIDs() throws {
        let header = "3 V1234 N10 G\(Self.guid) Xkeep"
        let original = "\(header)\n1 :a\n3 S12 :b:2,S\n"
        TestFS.write("\(root)/dovecot-uidlist", original)
        let inode = TestFS.inode("\(root)/dovecot-uidlist")
        let file = UIDListFile(folder: root, mailRoot: root)

        XCTAssertEqual(try lockedAppend(file, ["c", "d"]), [10, 11])
        XCTAssertEqual(try lockedAppend(file, ["e"]), [12])
        XCTAssertEqual(try lockedAppend(file, []), [])

        let text = try XCTUnwrap(TestFS.readText("\(root)/dovecot-uidlist"))
        XCTAssertEqual(text, original + "10 :c\n11 :d\n12 :e\n", "appended at the end; header untouched")
        XCTAssertEqual(TestFS.inode("\(root)/dovecot-uidlist"), inode, "appended in place, not rewritten")
        XCTAssertFalse(TestFS.exists("\(root)/dovecot-uidvalidity"), "an existing list needs no new UIDVALIDITY")
        let list = try XCTUnwrap(try file.read())
        XCTAssertEqual(list.header.nextUID, 10)
        XCTAssertEqual(list.nextUID, 13)
    }

    func testAppendNeverNumbersAFileTheListAlreadyNames() throws {
        // A file the list already names (base name, with or without flags) keeps its UID and
        // its one record; only the others get new UIDs.
        TestFS.write("\(root)/dovecot-uidlist", "3 V7 N5 G\(Self.guid)\n1 :a\n4 :b:2,S\n")
        let file = UIDListFile(folder: root, mailRoot: root)
        XCTAssertEqual(try lockedAppend(file, ["b", "c", "a"]), [4, 5, 1])
        XCTAssertEqual(TestFS.readText("\(root)/dovecot-uidlist"), "3 V7 N5 G\(Self.guid)\n1 :a\n4 :b:2,S\n5 :c\n")
        var list = UIDList(header: UIDList.Header(uidValidity: 7, nextUID: 1, guid: ""), records: [UIDList.Record(uid: 3, name: "x")])
        XCTAssertEqual(list.appending(["x", "y", "y"]), [3, 4, 4])
        XCTAssertEqual(list.records.map(\.name), ["x", "y"])
    }

    func testAppendAfterLastRecordAboveN() throws {
        TestFS.write("\(root)/dovecot-uidlist", "3 V1 N2 G\(Self.guid)\n1 :a\n7 :b\n")
        XCTAssertEqual(try lockedAppend(UIDListFile(folder: root, mailRoot: root), ["c"]), [8])
    }

    func testAppendToHeaderOnlyList() throws {
        TestFS.write("\(root)/dovecot-uidlist", "3 V9 N42 G\(Self.guid)\n")
        XCTAssertEqual(try lockedAppend(UIDListFile(folder: root, mailRoot: root), ["a", "b"]), [42, 43])
        XCTAssertEqual(TestFS.readText("\(root)/dovecot-uidlist"), "3 V9 N42 G\(Self.guid)\n42 :a\n43 :b\n")
    }

    func testTornLastLineIsDroppedAndListRewritten() throws {
        let path = "\(root)/dovecot-uidlist"
        TestFS.write(path, "3 V5 N3 G\(Self.guid)\n1 :a\n2 :b\n3 :torn-rec")
        let inode = TestFS.inode(path)
        let file = UIDListFile(folder: root, mailRoot: root)

        XCTAssertEqual(try lockedAppend(file, ["c"]), [3])

        let text = try XCTUnwrap(TestFS.readText(path))
        XCTAssertFalse(text.contains("torn"), text)
        XCTAssertTrue(text.hasSuffix("\n"), text)
        let list = try UIDList.parse(Array(text.utf8))
        XCTAssertEqual(list.header.uidValidity, 5)
        XCTAssertEqual(list.header.guid, Self.guid)
        XCTAssertEqual(list.records.map(\.uid), [1, 2, 3])
        XCTAssertEqual(list.records.map(\.name), ["a", "b", "c"])
        XCTAssertNotEqual(TestFS.inode(path), inode, "rewritten through a new file and rename()")
        XCTAssertEqual(TestFS.list(root).filter { $0 != "dovecot-uidlist" }, [], "no temporary file left")
    }

    func testAppendToV1ListRewritesAsV3() throws {
        let path = "\(root)/dovecot-uidlist"
        TestFS.write(path, "1 777 5\n1 a:2,S\n2 b\n")
        XCTAssertEqual(try lockedAppend(UIDListFile(folder: root, mailRoot: root), ["c"]), [5])
        let list = try UIDList.parse(try XCTUnwrap(TestFS.read(path)))
        XCTAssertEqual(list.header.version, 3)
        XCTAssertEqual(list.header.uidValidity, 777)
        XCTAssertEqual(list.records.map(\.uid), [1, 2, 5])
        XCTAssertEqual(list.records.map(\.stem), ["a", "b", "c"])
    }

    func testAppendToCorruptListFailsTemporarilyAndLeavesItAlone() throws {
        let path = "\(root)/dovecot-uidlist"
        // A bad header; a torn last line that forces a full parse, which finds UIDs going down.
        for text in ["3 V0 N1 G\(Self.guid)\n1 :a\n", "garbage\n1 :a\n", "3 V1 N5\n2 :a\n1 :b\n3 :c"] {
            TestFS.write(path, text)
            let failure = XCTAssertThrowsFailure(try lockedAppend(UIDListFile(folder: root, mailRoot: root), ["c"]), text)
            XCTAssertEqual(failure?.outcome.isTemporary, true, text)
            XCTAssertEqual(TestFS.readText(path), text, "a corrupt list is never modified")
        }
    }

    func testLargeListAppendsAtTheEnd() throws {
        let path = "\(root)/dovecot-uidlist"
        var text = "3 V1700000000 N20001 G\(Self.guid)\n"
        for uid in 1...20_000 { text += "\(uid) :17000\(String(uid + 10000)).M\(uid)P99Q1.mx,S=\(1000 + uid),W=\(1040 + uid):2,S\n" }
        let original = Array(text.utf8)
        TestFS.write(path, original)
        let inode = TestFS.inode(path)
        let file = UIDListFile(folder: root, mailRoot: root)

        XCTAssertEqual(try lockedAppend(file, ["new1", "new2"]), [20001, 20002])

        let now = try XCTUnwrap(TestFS.read(path))
        XCTAssertEqual(Array(now.prefix(original.count)), original, "existing bytes untouched")
        XCTAssertEqual(String(decoding: now.suffix(from: original.count), as: UTF8.self), "20001 :new1\n20002 :new2\n")
        XCTAssertEqual(TestFS.inode(path), inode)
        let list = try XCTUnwrap(try file.read())
        XCTAssertEqual(list.records.count, 20_002)
        XCTAssertEqual(list.nextUID, 20003)
    }

    /// Appending reads only the header and the last line: damage in the middle of a large list
    /// (which a full parse would reject) does not stop a delivery.
    func testLargeListAppendReadsOnlyTheEnds() throws {
        let path = "\(root)/dovecot-uidlist"
        var text = "3 V1700000000 N5 G\(Self.guid)\n"
        for uid in 1...10_000 { text += "\(uid) :1700000000.M\(uid)P1Q1.mx,S=100,W=104\n" }
        text += "this line is not a record\n"
        for uid in 10_001...20_000 { text += "\(uid) :1700000000.M\(uid)P1Q1.mx,S=100,W=104\n" }
        let original = Array(text.utf8)
        // The last line must not start exactly at the 4 KiB tail window.
        XCTAssertNotEqual(original[original.count - 4096 - 1], 10)
        TestFS.write(path, original)

        let file = UIDListFile(folder: root, mailRoot: root)
        XCTAssertThrowsFailure(try file.read(), "a full read does see the damage")
        XCTAssertEqual(try lockedAppend(file, ["x"]), [20_001])
        XCTAssertEqual(TestFS.readText(path), text + "20001 :x\n")
    }

    func testSecondFolderGetsNextUIDValidity() throws {
        let inbox = UIDListFile(folder: root, mailRoot: root)
        TestFS.mkdirs("\(root)/.Work")
        TestFS.mkdirs("\(root)/.Work.Sub")
        let work = UIDListFile(folder: "\(root)/.Work", mailRoot: root)
        let sub = UIDListFile(folder: "\(root)/.Work.Sub", mailRoot: root)

        _ = try lockedAppend(inbox, ["a"])
        _ = try lockedAppend(work, ["b"])
        _ = try lockedAppend(sub, ["c"])
        let v1 = try XCTUnwrap(try inbox.read()).header.uidValidity
        let v2 = try XCTUnwrap(try work.read()).header.uidValidity
        let v3 = try XCTUnwrap(try sub.read()).header.uidValidity
        XCTAssertEqual(v2, v1 + 1)
        XCTAssertEqual(v3, v1 + 2)
        XCTAssertEqual(try work.read()?.records, [UIDList.Record(uid: 1, name: "b")])

        let hex = UIDValidity.hexUID(v3)
        XCTAssertEqual(TestFS.readText("\(root)/dovecot-uidvalidity"), hex)
        XCTAssertEqual(TestFS.list(root).filter { $0.hasPrefix("dovecot-uidvalidity.") }, ["dovecot-uidvalidity.\(hex)"],
                       "one marker, for the last value")
    }

    func testUIDValidityContinuesFromStoredValue() throws {
        TestFS.write("\(root)/dovecot-uidvalidity", "5f000000")
        TestFS.write("\(root)/dovecot-uidvalidity.5f000000", "")
        XCTAssertEqual(try UIDValidity.next(mailRoot: root), 0x5f00_0001)
        XCTAssertEqual(TestFS.readText("\(root)/dovecot-uidvalidity"), "5f000001")
        XCTAssertTrue(TestFS.exists("\(root)/dovecot-uidvalidity.5f000001"))
        XCTAssertFalse(TestFS.exists("\(root)/dovecot-uidvalidity.5f000000"))
        XCTAssertEqual(UIDValidity.hexUID(0xab), "000000ab")
    }
}
