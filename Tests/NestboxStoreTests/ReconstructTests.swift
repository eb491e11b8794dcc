#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// Reconstruct: each kind of damage built on a real folder numbered by the store, the problems
/// reported, the repaired state (every surviving message keeps its UID), and a second run that
/// finds nothing.
final class ReconstructTests: TempDirTestCase {
    var options: ReconstructOptions {
        var o = ReconstructOptions()
        o.lockPolicy = MaintenanceFixture.lockPolicy
        return o
    }

    var dryOptions: ReconstructOptions {
        var o = options
        o.dryRun = true
        return o
    }

    /// An INBOX with `count` messages numbered 1...count; returns the folder and the stems by UID.
    func numberedInbox(_ count: Int) throws -> (Folder, [UInt32: String]) {
        let folder = try MaintenanceFixture.inbox(dir)
        for i in 0..<count {
            MaintenanceFixture.put(folder, MaintenanceFixture.message(i), base: "17000000\(10 + i).M1P1.mx")
        }
        try folder.assignUIDs(options: MaintenanceFixture.lockPolicy)
        var map: [UInt32: String] = [:]
        for r in try XCTUnwrap(folder.uidList.read()).records { map[r.uid] = r.stem }
        XCTAssertEqual(map.count, count)
        return (folder, map)
    }

    func listText(_ folder: Folder) -> String { TestFS.readText(folder.uidList.path) ?? "" }

    func header(_ folder: Folder) -> String { String(listText(folder).split(separator: "\n").first ?? "") }

    /// The stem of every record of the (strictly parsed) list.
    func mapping(_ folder: Folder) throws -> [UInt32: String] {
        var map: [UInt32: String] = [:]
        for r in try XCTUnwrap(folder.uidList.read()).records { map[r.uid] = r.stem }
        return map
    }

    func whats(_ report: FolderReport) -> [String] { report.problems.map(\.what) }

    /// Runs reconstruct, checks that the result is consistent, and that a second run finds nothing.
    @discardableResult
    func repair(_ folder: Folder, _ o: ReconstructOptions? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> FolderReport {
        let report = try folder.reconstruct(o ?? options)
        XCTAssertTrue(report.problems.allSatisfy(\.repaired), "\(report.problems)", file: file, line: line)
        let scan = try FolderScan.scan(folder, readFiles: true)
        XCTAssertTrue(scan.isClean, "\(scan)", file: file, line: line)
        XCTAssertEqual(scan.messages.count, report.messages, file: file, line: line)
        let again = try folder.reconstruct(o ?? options)
        XCTAssertEqual(again.problems, [], file: file, line: line)
        XCTAssertFalse(again.newUIDValidity, file: file, line: line)
        return report
    }

    func testCleanFolderIsLeftAlone() throws {
        let (folder, map) = try numberedInbox(3)
        let before = listText(folder)
        let inode = TestFS.inode(folder.uidList.path)
        let report = try folder.reconstruct(options)
        XCTAssertEqual(report.problems, [])
        XCTAssertEqual(report.messages, 3)
        XCTAssertEqual(listText(folder), before)
        XCTAssertEqual(TestFS.inode(folder.uidList.path), inode)
        XCTAssertEqual(try mapping(folder), map)
    }

    func testEmptyFolderWithoutListIsFine() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        let report = try folder.reconstruct(options)
        XCTAssertEqual(report.problems, [])
        XCTAssertFalse(TestFS.exists(folder.uidList.path))
    }

    func testUnknownFolderThrows() {
        let folder = Folder(path: "\(dir)/nobody", mailRoot: "\(dir)/nobody", name: "INBOX")
        XCTAssertThrowsError(try folder.reconstruct(options))
    }

    func testTornLastLineKeepsEveryUIDWhenItsBaseIsWhole() throws {
        let (folder, map) = try numberedInbox(4)
        let uidValidity = try XCTUnwrap(folder.uidList.read()).header.uidValidity
        // Cut the last record after its base (",S=..,W=.." partly lost): the record still names
        // one file by its base, which keeps uid 4.
        var bytes = TestFS.read(folder.uidList.path)!
        bytes.removeLast(8)
        TestFS.write(folder.uidList.path, bytes)
        let report = try repair(folder)
        XCTAssertEqual(report.problems.count, 1, "\(report.problems)")
        XCTAssertEqual(report.problems.first?.what.hasPrefix("uidlist line 5: torn last line"), true, "\(whats(report))")
        XCTAssertEqual(report.problems.first?.action, "kept uid 4 for \(map[4]!)")
        XCTAssertEqual(try mapping(folder), map)
        XCTAssertEqual(try XCTUnwrap(folder.uidList.read()).header.uidValidity, uidValidity)
        XCTAssertFalse(report.newUIDValidity)
    }

    func testTornLastLineCutInsideItsBaseNumbersTheFileAgain() throws {
        let (folder, map) = try numberedInbox(4)
        // "4 :17000000" + 13: the base itself is cut, so it names no file for sure.
        let text = listText(folder)
        let lastLine = text.split(separator: "\n").last!
        TestFS.write(folder.uidList.path, String(text.dropLast(lastLine.count + 1)) + String(lastLine.prefix(13)))
        let report = try repair(folder)
        XCTAssertEqual(whats(report).first?.hasPrefix("uidlist line 5: torn last line"), true, "\(whats(report))")
        XCTAssertEqual(report.problems.first?.action, "dropped")
        XCTAssertTrue(whats(report).contains("\(map[4]!) has no uid"), "\(whats(report))")
        XCTAssertEqual(report.problems.last?.action, "added as uid 5")
        var expected = map
        expected[4] = nil
        expected[5] = map[4]
        XCTAssertEqual(try mapping(folder), expected)
    }

    func testRecordOfAFileRenamedWithOtherSizesKeepsItsUID() throws {
        // A run that renamed a file to its true sizes and died before writing the list: the
        // record names the old stem, the file has the new one, with the same base.
        let (folder, map) = try numberedInbox(3)
        let base = MaildirName(map[2]!).base
        let old = "\(base),S=99,W=40"
        TestFS.write(folder.uidList.path, listText(folder).replacingOccurrences(of: map[2]!, with: old))
        let report = try repair(folder)
        XCTAssertEqual(whats(report), ["uid 2 names \(old), now \(map[2]!)"])
        XCTAssertEqual(report.problems.first?.action, "kept uid 2")
        XCTAssertEqual(try mapping(folder), map)
    }

    func testStaleLocksOfGoneProcessesAreRemoved() throws {
        let (folder, _) = try numberedInbox(1)
        // A pid that is gone: a child that has exited and been reaped.
        let pid = fork()
        if pid == 0 { _exit(0) }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        TestFS.write("\(folder.path)/dovecot-uidlist.lock", "\(pid):\(Host.name)")
        TestFS.write("\(folder.path)/dovecot-keywords.lock", "\(pid):\(Host.name)")
        // A live holder's lock (ours) on another file is left alone.
        TestFS.write("\(folder.path)/other.lock", "\(getpid()):\(Host.name)")
        let report = try folder.reconstruct(options)
        XCTAssertEqual(whats(report), ["stale lock (\(pid):\(Host.name)) of a process that is gone",
                                       "stale lock (\(pid):\(Host.name)) of a process that is gone"])
        XCTAssertEqual(report.problems.map(\.path), ["\(folder.path)/dovecot-keywords.lock", "\(folder.path)/dovecot-uidlist.lock"])
        XCTAssertFalse(TestFS.exists("\(folder.path)/dovecot-uidlist.lock"))
        XCTAssertFalse(TestFS.exists("\(folder.path)/dovecot-keywords.lock"))
        XCTAssertTrue(TestFS.exists("\(folder.path)/other.lock"))
        XCTAssertEqual(try folder.reconstruct(options).problems, [])
        // A dry run reports and leaves it.
        TestFS.write("\(folder.path)/dovecot-keywords.lock", "\(pid):\(Host.name)")
        let dry = try folder.reconstruct(dryOptions)
        XCTAssertEqual(dry.problems.map(\.action), ["would remove"])
        XCTAssertTrue(TestFS.exists("\(folder.path)/dovecot-keywords.lock"))
    }

    func testGarbageLinesAreDropped() throws {
        let (folder, map) = try numberedInbox(3)
        let lines = listText(folder).split(separator: "\n").map(String.init)
        TestFS.write(folder.uidList.path, ([lines[0], lines[1], "\u{1}\u{2}garbage", lines[2], "x :", lines[3]]).joined(separator: "\n") + "\n")
        let report = try repair(folder)
        XCTAssertEqual(whats(report).count, 2, "\(whats(report))")
        XCTAssertEqual(whats(report).first?.hasPrefix("uidlist line 3: garbage"), true, "\(whats(report))")
        XCTAssertEqual(whats(report).last, "uidlist line 5: garbage \"x :\"")
        XCTAssertEqual(report.problems.map(\.action), ["dropped", "dropped"])
        XCTAssertEqual(try mapping(folder), map)
    }

    func testUnsortedAndDuplicateUIDs() throws {
        let (folder, map) = try numberedInbox(4)
        let lines = listText(folder).split(separator: "\n").map(String.init)
        let head = lines[0].split(separator: " ").map { $0.first == "N" ? "N9" : String($0) }.joined(separator: " ")
        // uid 3 before 2; uid 2 names its file twice (and as uid 7, which is dropped, the lower
        // kept); uid 4 names two stems (the first kept, the second file numbered again).
        TestFS.write(folder.uidList.path, [head, lines[1], lines[3], lines[2], "7 :\(map[2]!)", lines[4], "4 :\(map[1]!)"].joined(separator: "\n") + "\n")
        let report = try repair(folder)
        XCTAssertEqual(whats(report), [
            "uidlist line 4: uid 2 not above 3",
            "uidlist line 5: uids 2 and 7 both name \(map[2]!)",
            "uidlist line 6: uid 4 not above 7",
            "uidlist line 7: uid 4 not above 7",
            "uidlist line 7: uids 1 and 4 both name \(map[1]!)",
        ])
        XCTAssertEqual(try mapping(folder), map)
        // N never goes down, and is above every UID ever written (7).
        XCTAssertTrue(header(folder).contains(" N9"), header(folder))
    }

    /// The path an administrator meets: deliveries fail on a damaged list, reconstruct repairs
    /// it, the next delivery succeeds and every message keeps its UID.
    func testDeliveryFailsThenSucceedsAfterRepair() throws {
        let (folder, map) = try numberedInbox(3)
        let lines = listText(folder).split(separator: "\n").map(String.init)
        // A garbage line, and a torn last line: the append has to parse the whole list.
        TestFS.write(folder.uidList.path, [lines[0], lines[1], "garbage", lines[2], lines[3], "4 :17"].joined(separator: "\n"))
        let session = try folder.beginUIDListSession(options: MaintenanceFixture.lockPolicy)
        XCTAssertThrowsError(try session.append(["1700000099.M1P1.mx,S=36,W=40"])) { error in
            XCTAssertTrue("\(error)".contains("nestbox-reconstruct"), "\(error)")
        }
        session.finish()
        let report = try repair(folder)
        XCTAssertEqual(report.problems.count, 2, "\(report.problems)")
        XCTAssertEqual(try mapping(folder), map)
        let delivered = MaintenanceFixture.put(folder, MaintenanceFixture.message(7), base: "1700000099.M1P1.mx")
        XCTAssertEqual(try folder.assignUIDs(options: MaintenanceFixture.lockPolicy), 1)
        // UID 4 was seen in the torn line: never given again.
        var expected = map
        expected[5] = delivered
        XCTAssertEqual(try mapping(folder), expected)
    }

    func testOneUIDForTwoFiles() throws {
        let (folder, map) = try numberedInbox(3)
        let lines = listText(folder).split(separator: "\n").map(String.init)
        TestFS.write(folder.uidList.path, [lines[0], lines[1], "2 :\(map[2]!)", "2 :\(map[3]!)"].joined(separator: "\n") + "\n")
        let report = try repair(folder)
        XCTAssertEqual(whats(report), [
            "uidlist line 4: uid 2 not above 2",
            "uidlist line 4: uid 2 names both \(map[2]!) and \(map[3]!)",
            "\(map[3]!) has no uid",
        ])
        // UID 3 was never written: the file gets it.
        XCTAssertEqual(report.problems.last?.action, "added as uid 3")
        XCTAssertEqual(try mapping(folder), map)
    }

    func testBadHeaderNumbers() throws {
        for damage in ["V0", "N0"] {
            TestFS.removeTree(dir)
            dir = TestFS.makeTempDir()
            let (folder, map) = try numberedInbox(3)
            let original = try XCTUnwrap(folder.uidList.read()).header
            let line = header(folder)
            let text = listText(folder)
            let key = damage.first!
            let tokens = line.split(separator: " ").map { $0.first == key ? Substring(damage) : $0 }
            TestFS.write(folder.uidList.path, tokens.joined(separator: " ") + text.dropFirst(line.count))
            XCTAssertThrowsError(try folder.uidList.read(), damage)
            // Dovecot's own index still knows the UIDVALIDITY when the header lost it.
            if damage == "V0" { writeDovecotIndex(folder, uidValidity: original.uidValidity, nextUID: 4) }
            let report = try repair(folder)
            XCTAssertEqual(report.problems.first?.what.hasPrefix("uidlist line 1: header"), true, "\(damage): \(whats(report))")
            XCTAssertEqual(report.problems.count, 2, "\(damage): \(whats(report))")
            XCTAssertFalse(report.newUIDValidity, damage)
            XCTAssertEqual(try mapping(folder), map, damage)
            let repaired = try XCTUnwrap(folder.uidList.read()).header
            XCTAssertEqual(repaired.uidValidity, original.uidValidity, damage)
            XCTAssertEqual(repaired.guid, original.guid, damage)
            XCTAssertEqual(repaired.nextUID, 4, damage)
        }
    }

    /// N at or below the last record is how the store appends (the header is never rewritten):
    /// consistent, left alone.
    func testLowNIsTheStoresOwnFormat() throws {
        let (folder, _) = try numberedInbox(3)
        XCTAssertTrue(header(folder).contains(" N1 "), header(folder))
        XCTAssertEqual(try folder.reconstruct(options).problems, [])
    }

    func testUnreadableHeaderWithRecordsKeepsUIDs() throws {
        let (folder, map) = try numberedInbox(3)
        let text = listText(folder)
        let original = header(folder)
        TestFS.write(folder.uidList.path, "%%%%" + text.dropFirst(original.count))
        let report = try repair(folder)
        XCTAssertTrue(report.newUIDValidity)
        XCTAssertTrue(whats(report).contains("no UIDVALIDITY can be recovered: clients will download the folder again"), "\(whats(report))")
        XCTAssertEqual(try mapping(folder), map)
        XCTAssertNotEqual(header(folder), original)
    }

    func testListMissing() throws {
        let (folder, map) = try numberedInbox(3)
        unlink(folder.uidList.path)
        let report = try repair(folder)
        XCTAssertTrue(report.newUIDValidity)
        XCTAssertEqual(whats(report).first, "dovecot-uidlist missing")
        // Renumbered from 1 in Dovecot's order: the same order as the first time.
        XCTAssertEqual(try mapping(folder), map)
        XCTAssertEqual(report.messages, 3)
    }

    func testListMissingWithDovecotIndexKeepsUIDValidityAndN() throws {
        let (folder, map) = try numberedInbox(2)
        let v = try XCTUnwrap(folder.uidList.read()).header.uidValidity
        writeDovecotIndex(folder, uidValidity: v, nextUID: 3)
        unlink(folder.uidList.path)
        let report = try repair(folder)
        XCTAssertFalse(report.newUIDValidity)
        let list = try XCTUnwrap(folder.uidList.read())
        XCTAssertEqual(list.header.uidValidity, v)
        // Numbered again, above every UID Dovecot's index has seen.
        XCTAssertEqual(list.records.map(\.uid), [3, 4])
        XCTAssertEqual(list.records.map(\.stem), [map[1]!, map[2]!])
    }

    func testOrphansBothWays() throws {
        let (folder, map) = try numberedInbox(3)
        unlink("\(folder.path)/new/\(map[2]!)")
        let fresh = MaintenanceFixture.put(folder, MaintenanceFixture.message(9), base: "1600000000.M1P1.mx")
        let fresher = MaintenanceFixture.put(folder, MaintenanceFixture.message(8), base: "1500000000.M1P1.mx", sub: "cur", flags: "S")
        let report = try repair(folder)
        XCTAssertEqual(whats(report), ["uid 2 has no file (\(map[2]!))", "\(fresher) has no uid", "\(fresh) has no uid"])
        XCTAssertEqual(report.problems.map(\.action), ["dropped", "added as uid 4", "added as uid 5"])
        XCTAssertEqual(try mapping(folder), [1: map[1]!, 3: map[3]!, 4: fresher, 5: fresh])
        XCTAssertEqual(report.messages, 4)
    }

    func testDryRunChangesNothing() throws {
        let (folder, map) = try numberedInbox(3)
        unlink("\(folder.path)/new/\(map[2]!)")
        MaintenanceFixture.put(folder, MaintenanceFixture.message(9), base: "1600000000.M1P1.mx")
        var bytes = TestFS.read(folder.uidList.path)!
        bytes.append(contentsOf: Array("garbage".utf8))
        TestFS.write(folder.uidList.path, bytes)
        rmdir("\(folder.path)/tmp")
        let before = TestFS.read(folder.uidList.path)
        let report = try folder.reconstruct(dryOptions)
        XCTAssertEqual(report.problems.count, 4, "\(report.problems)")
        XCTAssertTrue(report.problems.allSatisfy { !$0.repaired && $0.action.hasPrefix("would ") }, "\(report.problems)")
        XCTAssertEqual(TestFS.read(folder.uidList.path), before)
        XCTAssertFalse(TestFS.exists("\(folder.path)/tmp"))
        XCTAssertEqual(report.messages, 3)
        // The real run does what the dry run said.
        let real = try repair(folder)
        XCTAssertEqual(real.problems.map(\.what), report.problems.map(\.what))
    }

    func testTwoFilesWithOneBase() throws {
        let (folder, map) = try numberedInbox(2)
        let base = MaildirName(map[1]!).base
        let twin = MaintenanceFixture.put(folder, "twin two\n", base: base, sub: "cur", flags: "S")
        let report = try repair(folder)
        XCTAssertEqual(report.problems.count, 2, "\(report.problems)")
        XCTAssertEqual(report.problems.first?.what, "base \(base) used by two files")
        XCTAssertEqual(report.problems.first?.path, "\(folder.path)/cur/\(twin):2,S")
        XCTAssertEqual(report.problems.last?.action, "added as uid 3")
        let after = try mapping(folder)
        XCTAssertEqual(after[1], map[1])
        XCTAssertEqual(after[2], map[2])
        let renamed = try XCTUnwrap(after[3])
        XCTAssertNotEqual(MaildirName(renamed).base, base)
        XCTAssertTrue(renamed.hasSuffix(",S=9,W=10"), renamed)
        // Flags and contents kept.
        XCTAssertEqual(TestFS.readText("\(folder.path)/cur/\(renamed):2,S"), "twin two\n")
        XCTAssertFalse(TestFS.exists("\(folder.path)/cur/\(twin):2,S"))
    }

    func testWrongAndMissingSizesKeepTheirUIDs() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        // 12 bytes, 3 LFs (W=15); 11 bytes, 2 LFs (W=13).
        TestFS.write("\(folder.path)/cur/1700000020.M1P1.mx,S=99,W=15:2,S", "line one\nx\n\n")
        TestFS.write("\(folder.path)/new/1700000021.M1P1.mx", "line one\nx\n")
        TestFS.write("\(folder.path)/new/1700000022.M1P1.mx,S=11,W=11", "line one\nx\n")
        try folder.assignUIDs(options: MaintenanceFixture.lockPolicy)
        let report = try folder.reconstruct(options)
        XCTAssertEqual(whats(report), [
            "file name has no ,S=; the file has 11 bytes",
            "file name has no ,W=; RFC822.SIZE is 13",
            "file name has ,S=99; the file has 12 bytes",
        ])
        XCTAssertTrue(report.problems.allSatisfy(\.repaired))
        XCTAssertEqual(try mapping(folder), [1: "1700000020.M1P1.mx,S=12,W=15", 2: "1700000021.M1P1.mx,S=11,W=13",
                                             3: "1700000022.M1P1.mx,S=11,W=11"])
        XCTAssertEqual(TestFS.readText("\(folder.path)/cur/1700000020.M1P1.mx,S=12,W=15:2,S"), "line one\nx\n\n")
        // ,W= is only checked by reading, which -G asks for.
        XCTAssertEqual(try folder.reconstruct(options).problems, [])
        var reread = options
        reread.rereadMessages = true
        let second = try repair(folder, reread)
        XCTAssertEqual(whats(second), ["file name has ,W=11; RFC822.SIZE is 13"])
        XCTAssertEqual(try mapping(folder)[3], "1700000022.M1P1.mx,S=11,W=13")
    }

    func testSkipStatTrustsNames() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        TestFS.write("\(folder.path)/new/1700000020.M1P1.mx,S=99,W=15", "line one\nx\n\n")
        try folder.assignUIDs(options: MaintenanceFixture.lockPolicy)
        var o = options
        o.skipStat = true
        XCTAssertEqual(try folder.reconstruct(o).problems, [])
    }

    func testEmptyFileMovedToLostAndFound() throws {
        let (folder, map) = try numberedInbox(2)
        let file = "\(folder.path)/new/\(map[2]!)"
        TestFS.write(file, [])
        let report = try repair(folder)
        XCTAssertEqual(whats(report), ["empty message file", "uid 2 has no file (\(map[2]!))"])
        XCTAssertEqual(report.problems.first?.path, file)
        XCTAssertEqual(report.problems.first?.action, "moved to \(folder.path)/lost+found/\(map[2]!)")
        XCTAssertTrue(TestFS.exists("\(folder.path)/lost+found/\(map[2]!)"))
        var st = stat()
        XCTAssertEqual(lstat("\(folder.path)/lost+found", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o700)
        XCTAssertEqual(try mapping(folder), [1: map[1]!])
        XCTAssertEqual(report.messages, 1)
    }

    func testDirectoriesMarkersAndStaleTemporaryFiles() throws {
        let root = try MaintenanceFixture.inbox(dir)
        let work = Folder(path: "\(root.path)/.Work", mailRoot: root.path, name: "Work")
        try work.create()
        unlink("\(work.path)/maildirfolder")
        rmdir("\(work.path)/new")
        TestFS.write("\(root.path)/maildirfolder", "")
        TestFS.write("\(root.path)/tmp/old", "x")
        TestFS.age("\(root.path)/tmp/old", by: 37 * 3600)
        TestFS.write("\(root.path)/tmp/young", "x")
        TestFS.age("\(root.path)/tmp/young", by: 35 * 3600)

        let dry = try root.reconstruct(dryOptions)
        XCTAssertEqual(dry.problems.map(\.action), ["would remove", "would remove"])
        XCTAssertTrue(TestFS.exists("\(root.path)/tmp/old"))

        let r = try repair(root)
        XCTAssertEqual(r.problems.map(\.what), ["maildirfolder in the root folder (breaks quota lookups)", "temporary file older than 36 hours"])
        XCTAssertFalse(TestFS.exists("\(root.path)/maildirfolder"))
        XCTAssertFalse(TestFS.exists("\(root.path)/tmp/old"))
        XCTAssertTrue(TestFS.exists("\(root.path)/tmp/young"))

        let w = try repair(work)
        XCTAssertEqual(w.problems.map(\.what), ["new/ missing", "maildirfolder missing"])
        XCTAssertTrue(Files.isDirectory("\(work.path)/new"))
        XCTAssertTrue(TestFS.exists("\(work.path)/maildirfolder"))
    }

    func testOddFiles() throws {
        let (folder, map) = try numberedInbox(1)
        TestFS.write("\(folder.path)/cur/.hidden", "x")
        symlink("/etc/passwd", "\(folder.path)/new/1700000099.M1P1.mx")
        TestFS.mkdirs("\(folder.path)/cur/adir")
        let left = try folder.reconstruct(options)
        XCTAssertEqual(Set(left.problems.map(\.what)), ["not a message file", "directory in cur/"])
        XCTAssertEqual(left.problems.count, 3)
        XCTAssertTrue(left.problems.allSatisfy { !$0.repaired })
        XCTAssertTrue(TestFS.exists("\(folder.path)/cur/.hidden"))
        var o = options
        o.removeOddFiles = true
        let removed = try folder.reconstruct(o)
        XCTAssertEqual(removed.problems.filter(\.repaired).count, 2, "\(removed.problems)")
        XCTAssertFalse(TestFS.exists("\(folder.path)/cur/.hidden"))
        XCTAssertEqual(TestFS.list("\(folder.path)/new"), [map[1]!])
        XCTAssertTrue(Files.isDirectory("\(folder.path)/cur/adir"))
        XCTAssertEqual(try mapping(folder), map)
    }

    func testKeywordLettersWithoutNames() throws {
        let folder = try MaintenanceFixture.inbox(dir)
        MaintenanceFixture.put(folder, MaintenanceFixture.message(1), base: "1700000020.M1P1.mx", sub: "cur", flags: "Sab")
        MaintenanceFixture.put(folder, MaintenanceFixture.message(2), base: "1700000021.M1P1.mx", sub: "cur", flags: "b")
        try folder.assignUIDs(options: MaintenanceFixture.lockPolicy)
        TestFS.write("\(folder.path)/dovecot-keywords", "0 Work\n")
        let report = try folder.reconstruct(options)
        XCTAssertEqual(report.problems, [ReconstructProblem(
            what: "keyword letter b used by 2 files has no name in dovecot-keywords", path: "\(folder.path)/dovecot-keywords",
            action: "left (no name to give it)", repaired: false)])
    }

    func testQuota() throws {
        let (folder, _) = try numberedInbox(2)
        let quota = QuotaRoot(root: folder.mailRoot)
        XCTAssertNil(try quota.reconstruct(dryRun: false))  // no maildirsize: no quota
        TestFS.write(quota.path, "1000S,10C\n36 1\n")
        let dry = try XCTUnwrap(quota.reconstruct(dryRun: true))
        XCTAssertEqual(dry.what, "says 36 bytes in 1 messages; the folders hold 72 in 2")
        XCTAssertEqual(dry.action, "would recalculate")
        XCTAssertFalse(dry.repaired)
        XCTAssertEqual(TestFS.readText(quota.path), "1000S,10C\n36 1\n")
        let fixed = try XCTUnwrap(quota.reconstruct(dryRun: false))
        XCTAssertTrue(fixed.repaired)
        XCTAssertEqual(TestFS.readText(quota.path), "1000S,10C\n72 2\n")
        XCTAssertNil(try quota.reconstruct(dryRun: false))
        TestFS.write(quota.path, "1000S,10C\n72 2\nnonsense\n")
        XCTAssertEqual(try quota.reconstruct(dryRun: false)?.what, "unparsable line")
        XCTAssertEqual(TestFS.readText(quota.path), "1000S,10C\n72 2\n")
        TestFS.write(quota.path, "lots\n72 2\n")
        let bad = try XCTUnwrap(quota.reconstruct(dryRun: false))
        XCTAssertFalse(bad.repaired)
        XCTAssertEqual(TestFS.readText(quota.path), "lots\n72 2\n")
    }

    func testDryRunLeavesFilesWhereTheyAre() throws {
        let (folder, map) = try numberedInbox(2)
        MaintenanceFixture.put(folder, "twin two\n", base: MaildirName(map[1]!).base, sub: "cur", flags: "S")
        TestFS.write("\(folder.path)/new/\(map[2]!)", [])
        TestFS.write("\(folder.path)/new/1700000030.M1P1.mx", "no sizes\n")
        let names = TestFS.list("\(folder.path)/new") + TestFS.list("\(folder.path)/cur")
        let list = TestFS.read(folder.uidList.path)
        let dry = try folder.reconstruct(dryOptions)
        XCTAssertEqual(TestFS.list("\(folder.path)/new") + TestFS.list("\(folder.path)/cur"), names)
        XCTAssertEqual(TestFS.read(folder.uidList.path), list)
        XCTAssertFalse(TestFS.exists("\(folder.path)/lost+found"))
        XCTAssertTrue(dry.problems.allSatisfy { !$0.repaired && $0.action.hasPrefix("would ") }, "\(dry.problems)")
        let real = try repair(folder)
        // The same problems, but for the fresh base of the twin (made anew by each run).
        XCTAssertEqual(real.problems.count, dry.problems.count)
        XCTAssertEqual(real.problems.map(\.what).dropLast(), dry.problems.map(\.what).dropLast())
        XCTAssertEqual(real.messages, dry.messages)
        XCTAssertEqual(try mapping(folder)[1], map[1])
    }

    /// A minimal `dovecot.index` header: major version 7, uid_validity (offset 24) and next_uid (28).
    func writeDovecotIndex(_ folder: Folder, uidValidity: UInt32, nextUID: UInt32) {
        var bytes = [UInt8](repeating: 0, count: 64)
        bytes[0] = 7
        for i in 0..<4 {
            bytes[24 + i] = UInt8(truncatingIfNeeded: uidValidity >> (8 * UInt32(i)))
            bytes[28 + i] = UInt8(truncatingIfNeeded: nextUID >> (8 * UInt32(i)))
        }
        TestFS.write("\(folder.path)/dovecot.index", bytes)
    }
}
