import XCTest
import NestboxSupport
@testable import NestboxStore

/// Maildir++ quota: the limits line, the maildirsize file and its recalculation.
final class QuotaTests: TempDirTestCase {
    // MARK: QuotaLimits

    func testLimitsParseTable() {
        let table: [(String, QuotaLimits?)] = [
            ("10485760S,1000C", QuotaLimits(bytes: 10_485_760, messages: 1000)),
            ("1000C,10485760S", QuotaLimits(bytes: 10_485_760, messages: 1000)),
            ("0S", QuotaLimits(bytes: 0, messages: nil)),
            ("5000S", QuotaLimits(bytes: 5000, messages: nil)),
            ("20C", QuotaLimits(bytes: nil, messages: 20)),
            ("  100S , 5C  ", QuotaLimits(bytes: 100, messages: 5)),
            ("", nil),
            ("   ", nil),
            ("garbage", nil),
            ("100", nil),
            ("S", nil),
            ("100X", nil),
            ("-5S", nil),
            ("100S,abcC", nil),
            ("100S 5C", nil),
            ("12 3", nil),
        ]
        for (line, expected) in table {
            XCTAssertEqual(QuotaLimits.parse(Substring(line)), expected, line.debugDescription)
        }
    }

    /// A delivery reads maildirsize twice (RCPT, then before storing); the second look may come
    /// from what this process read, but never once the file changed: appended, or replaced by
    /// a rename with a file of the very same size.
    func testCurrentSeesEveryChangeOfTheFile() throws {
        let quota = QuotaRoot(root: dir)
        XCTAssertNil(try quota.current())
        TestFS.write(quota.path, "100000S\n100 1\n")
        XCTAssertEqual(try quota.current()?.usage, QuotaUsage(bytes: 100, messages: 1))
        XCTAssertEqual(try quota.current(again: true)?.usage, QuotaUsage(bytes: 100, messages: 1))
        try quota.append(bytes: 50, messages: 1)
        XCTAssertEqual(try quota.current(again: true)?.usage, QuotaUsage(bytes: 150, messages: 2))
        TestFS.write("\(dir)/maildirsize.new", "100000S\n90 1\n950 1\n")
        XCTAssertEqual(rename("\(dir)/maildirsize.new", quota.path), 0)
        XCTAssertEqual(try quota.current(again: true)?.usage, QuotaUsage(bytes: 1040, messages: 2))
        XCTAssertEqual(try quota.current(again: true)?.limits, QuotaLimits(bytes: 100000, messages: nil))
        XCTAssertEqual(unlink(quota.path), 0)
        XCTAssertNil(try quota.current(again: true), "gone: no quota")
    }

    /// Every look reads only what was appended since the last one, and always agrees with a
    /// parse of the whole file: appends (a line still without its newline, a damaged line,
    /// a thousand lines), a rewrite in place (same inode, longer, other limits), a rename over
    /// it, line 1 losing its newline, and removal.
    func testEachLookAgreesWithTheWholeFile() throws {
        let path = "\(dir)/maildirsize"
        let cache = MaildirSizeCache()
        func check(_ step: String, again: Bool = false, file: StaticString = #filePath, line: UInt = #line) throws {
            let bytes = TestFS.read(path)
            let look = try cache.read(path, again: again)
            XCTAssertEqual(look?.size, bytes?.count, step, file: file, line: line)
            XCTAssertEqual(look?.parsed, bytes.flatMap(MaildirSize.parse), step, file: file, line: line)
        }
        func append(_ text: String) {
            let fd = open(path, O_WRONLY | O_APPEND)
            XCTAssertGreaterThanOrEqual(fd, 0)
            XCTAssertEqual(Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }, text.utf8.count)
            close(fd)
        }
        try check("no file")
        TestFS.write(path, "1000S\n100 1\n")
        try check("new")
        append("50 1\n")
        try check("one line appended", again: true)
        append("-20 -1")
        try check("a line without its newline")
        append("\n7 1\n")
        try check("its newline, and one more")
        let inode = try XCTUnwrap(Files.status(path)).st_ino
        TestFS.write(path, "2000S,5C\n1 1\n2 1\n3 1\n4 1\n5 1\n6 1\n7 1\n")
        XCTAssertEqual(try XCTUnwrap(Files.status(path)).st_ino, inode, "rewritten in place")
        try check("rewritten in place, longer, other limits")
        XCTAssertEqual(try cache.read(path, again: false)?.parsed?.limits, QuotaLimits(bytes: 2000, messages: 5))
        append("x y\n")
        try check("a damaged line")
        // Another file under the same inode, longer than what was read, with the same bytes
        // just before where that read ended (lines of same-sized messages), but another start.
        let same = String(repeating: "4096 1\n", count: 20)
        TestFS.write(path, "1000S\n" + same)
        try check("twenty equal lines")
        TestFS.write(path, "3000S\n9999 9\n" + same + "5 1\n")
        XCTAssertEqual(try XCTUnwrap(Files.status(path)).st_ino, inode, "rewritten in place")
        try check("another start, the same bytes before the end of the last read")
        XCTAssertEqual(try cache.read(path, again: false)?.parsed?.limits, QuotaLimits(bytes: 3000, messages: nil))
        for i in 0..<1000 {
            append("\(i) 1\n")
            try check("line \(i)", again: i % 2 == 0)
        }
        XCTAssertGreaterThan(TestFS.read(path)?.count ?? 0, 5120)
        TestFS.write("\(dir)/maildirsize.new", "0S\n4 2\n")
        XCTAssertEqual(rename("\(dir)/maildirsize.new", path), 0)
        try check("renamed over")
        TestFS.write(path, "300S")
        try check("line 1 without its newline")
        append("5 1\n")
        try check("appended to a line 1 without its newline")
        XCTAssertNil(try cache.read(path, again: false)?.parsed, "line 1 is now 300S5 1")
        TestFS.write(path, "300S\n")
        try check("limits only")
        append("5 1\n")
        try check("then a line")
        TestFS.write(path, "0S\n" + String(repeating: "1 1\n", count: 300_000))
        XCTAssertThrowsError(try cache.read(path, again: false), "over 1 MiB: refused, as a whole read refuses it")
        XCTAssertEqual(unlink(path), 0)
        try check("gone", again: true)
    }

    func testLimitsLine() {
        XCTAssertEqual(QuotaLimits(bytes: 10_485_760, messages: 1000).line, "10485760S,1000C")
        XCTAssertEqual(QuotaLimits().line, "0S")
        XCTAssertEqual(QuotaLimits(bytes: 100, messages: 0).line, "100S")
        XCTAssertEqual(QuotaLimits(bytes: nil, messages: 7).line, "0S,7C")
        for limits in [QuotaLimits(bytes: 1, messages: 2), QuotaLimits(bytes: 0, messages: nil)] {
            XCTAssertEqual(QuotaLimits.parse(Substring(limits.line)), limits)
        }
    }

    // MARK: MaildirSize.parse

    static func size(_ text: String) -> MaildirSize? { MaildirSize.parse(Array(text.utf8)) }

    func testMaildirSizeSumsDeltas() throws {
        let m = try XCTUnwrap(Self.size("10485760S,1000C\n1000 10\n500 1\n-300 -1\n  20\t 1 \n"))
        XCTAssertEqual(m.limits, QuotaLimits(bytes: 10_485_760, messages: 1000))
        XCTAssertEqual(m.usage, QuotaUsage(bytes: 1220, messages: 11))
        XCTAssertEqual(m.dataLines, 4)
        XCTAssertFalse(m.damaged)
    }

    func testMaildirSizeEdgeCases() throws {
        let limitsOnly = try XCTUnwrap(Self.size("0S\n"))
        XCTAssertEqual(limitsOnly.usage, QuotaUsage())
        XCTAssertEqual(limitsOnly.dataLines, 0)
        XCTAssertFalse(limitsOnly.damaged)

        let noNewline = try XCTUnwrap(Self.size("100S\n5 1"))
        XCTAssertEqual(noNewline.usage, QuotaUsage(bytes: 5, messages: 1))
        XCTAssertFalse(noNewline.damaged)

        XCTAssertNil(Self.size(""), "no limits line")
        XCTAssertNil(Self.size("garbage\n5 1\n"))
        XCTAssertNil(Self.size("5 1\n"))
    }

    func testMaildirSizeDamagedLines() {
        let damaged = ["100S\n5 1\ngarbage\n", "100S\n5\n", "100S\n5 1 2\n", "100S\n5 x\n", "100S\n\n5 1\n", "100S\n5 1\n\n"]
        for text in damaged {
            let m = Self.size(text)
            XCTAssertNotNil(m, text)
            XCTAssertEqual(m?.damaged, true, text.debugDescription)
        }
        XCTAssertEqual(Self.size("100S\n5 1\ngarbage\n7 1\n")?.usage, QuotaUsage(bytes: 12, messages: 2))
    }

    func testIsOverNonStrictAndStrict() {
        struct Row { let limits: String; let bytes: Int64; let messages: Int64; let incoming: QuotaUsage?; let over: Bool }
        let rows: [Row] = [
            // non-strict: usage >= limit
            Row(limits: "100S", bytes: 99, messages: 0, incoming: nil, over: false),
            Row(limits: "100S", bytes: 100, messages: 0, incoming: nil, over: true),
            Row(limits: "100S", bytes: 150, messages: 0, incoming: nil, over: true),
            Row(limits: "100S,10C", bytes: 0, messages: 9, incoming: nil, over: false),
            Row(limits: "100S,10C", bytes: 0, messages: 10, incoming: nil, over: true),
            Row(limits: "0S", bytes: 1 << 40, messages: 1 << 30, incoming: nil, over: false),
            Row(limits: "0S,0C", bytes: 1 << 40, messages: 1 << 30, incoming: QuotaUsage(bytes: 1, messages: 1), over: false),
            // strict: usage + incoming > limit
            Row(limits: "100S", bytes: 90, messages: 0, incoming: QuotaUsage(bytes: 10, messages: 1), over: false),
            Row(limits: "100S", bytes: 90, messages: 0, incoming: QuotaUsage(bytes: 11, messages: 1), over: true),
            Row(limits: "100S", bytes: 100, messages: 0, incoming: QuotaUsage(bytes: 0, messages: 0), over: false),
            Row(limits: "100S,10C", bytes: 0, messages: 9, incoming: QuotaUsage(bytes: 1, messages: 1), over: false),
            Row(limits: "100S,10C", bytes: 0, messages: 10, incoming: QuotaUsage(bytes: 1, messages: 1), over: true),
        ]
        for r in rows {
            guard let limits = QuotaLimits.parse(Substring(r.limits)) else { return XCTFail(r.limits) }
            let m = MaildirSize(limits: limits, usage: QuotaUsage(bytes: r.bytes, messages: r.messages), dataLines: 1, damaged: false)
            XCTAssertEqual(m.isOver(adding: r.incoming), r.over,
                           "\(r.limits) usage \(r.bytes)/\(r.messages) incoming \(String(describing: r.incoming))")
        }
    }

    // MARK: QuotaRoot on disk

    private var maildirsize: String { "\(dir)/maildirsize" }

    /// A Maildir++ root with messages in INBOX and two folders; returns the expected usage.
    @discardableResult
    private func makeMaildir() -> QuotaUsage {
        for d in ["", "/.Work", "/.Work.Sub", "/.Trash"] {
            for sub in ["tmp", "new", "cur"] { TestFS.mkdirs("\(dir)\(d)/\(sub)") }
        }
        TestFS.mkdirs("\(dir)/.NotAFolder")  // no new/ or cur/: not counted
        var bytes: Int64 = 0, count: Int64 = 0
        func message(_ path: String, _ content: String, counted: Bool = true) {
            TestFS.write("\(dir)/\(path)", content)
            if counted { bytes += Int64(MaildirName(TestFS.lastComponent(path)).size ?? Int64(content.utf8.count)); count += 1 }
        }
        message("new/1700000000.M1P1Q1.h,S=1000,W=1020", "x")           // S= is trusted over the file size
        message("cur/1700000001.M1P1Q2.h,S=2500,W=2560:2,S", "x")
        message("cur/1700000002.M1P1Q3.h:2,ST", String(repeating: "y", count: 333))  // no S=: file size
        message(".Work/new/1700000003.M1P1Q4.h,S=700,W=720", "x")
        message(".Work/cur/1700000004.M1P1Q5.h,S=12x:2,", String(repeating: "z", count: 44))  // broken S=: file size
        message(".Work.Sub/cur/1700000005.M1P1Q6.h,S=4096,W=4200:2,FS", "x")
        message(".Trash/cur/1700000006.M1P1Q7.h,S=50,W=52:2,ST", "x")         // Trash and \Deleted count
        message("tmp/1700000007.M1P1Q8.h", String(repeating: "t", count: 999), counted: false)
        message(".Work/tmp/1700000008.M1P1Q9.h,S=999", "x", counted: false)
        message("cur/.hidden,S=5000", "x", counted: false)
        message(".NotAFolder/1700000009.M1P1Q10.h,S=777", "x", counted: false)
        message("dovecot-uidlist", "3 V1 N1\n", counted: false)
        return QuotaUsage(bytes: bytes, messages: count)
    }

    func testCurrentIsNilWithoutFile() throws {
        makeMaildir()
        XCTAssertNil(try QuotaRoot(root: dir).current())
        XCTAssertFalse(TestFS.exists(maildirsize), "no file means no quota: none is created")
    }

    func testCurrentIsNilWithBadLimitsLine() throws {
        makeMaildir()
        TestFS.write(maildirsize, "garbage\n5 1\n")
        XCTAssertNil(try QuotaRoot(root: dir).current())
    }

    func testCurrentKeepsAHealthyFile() throws {
        makeMaildir()
        TestFS.write(maildirsize, "1000000S,100C\n5 1\n7 1\n")
        let m = try XCTUnwrap(try QuotaRoot(root: dir).current())
        XCTAssertEqual(m.usage, QuotaUsage(bytes: 12, messages: 2), "no recalculation needed")
        XCTAssertEqual(TestFS.readText(maildirsize), "1000000S,100C\n5 1\n7 1\n")
    }

    func testALimitsLineAloneIsRecalculated() throws {
        let expected = makeMaildir()
        TestFS.write(maildirsize, "3000S,2C\n")
        let status = try XCTUnwrap(try QuotaRoot(root: dir).status())
        XCTAssertTrue(status.stale)
        XCTAssertEqual(status.usage, expected, "read only: counted, not written")
        XCTAssertEqual(TestFS.readText(maildirsize), "3000S,2C\n")
        let m = try XCTUnwrap(try QuotaRoot(root: dir).current())
        XCTAssertEqual(m.usage, expected)
        XCTAssertTrue(m.isOver(adding: nil), "a full mailbox under a limit set by hand is over quota")
    }

    func testCourierCountingLeavesOutTrashAndDeleted() throws {
        let expected = makeMaildir()
        let courier = try QuotaRoot(root: dir, counting: .courier).countUsage()
        // cur/...:2,ST (333 bytes, no S=) and the Trash message (S=50) are left out.
        XCTAssertEqual(courier, QuotaUsage(bytes: expected.bytes - 333 - 50, messages: expected.messages - 2))
        XCTAssertEqual(try QuotaRoot(root: dir).countUsage(), expected)
    }

    func testExpungeUnderCourierCountingTakesOffOnlyWhatWasCounted() throws {
        makeMaildir()
        let quota = QuotaRoot(root: dir, counting: .courier)
        try quota.recalculate(limits: QuotaLimits())
        let inbox = Folder(path: dir, mailRoot: dir, name: "INBOX")
        // Two files go: one T-flagged (never counted by Courier), one counted (S=1000).
        let result = try inbox.expunge(options: DotLock.Options(timeout: 5), counting: .courier) { m in
            m.name.has("T") || m.name.stem.hasPrefix("1700000000.")
        }
        XCTAssertEqual(result.removed.count, 2)
        XCTAssertEqual(result.count, 1, "only the counted one comes off the quota")
        XCTAssertEqual(result.bytes, 1000)
        let parsed = try XCTUnwrap(MaildirSize.parse(try XCTUnwrap(TestFS.read(maildirsize))))
        XCTAssertEqual(parsed.usage, try quota.countUsage(), "never below (nor above) the truth")
    }

    func testRecalculatesWhenALineIsGarbage() throws {
        let expected = makeMaildir()
        TestFS.write(maildirsize, "1000000S,100C\n5 1\nthis is not a delta\n")
        let m = try XCTUnwrap(try QuotaRoot(root: dir).current())
        XCTAssertEqual(m.usage, expected)
        XCTAssertEqual(m.limits, QuotaLimits(bytes: 1_000_000, messages: 100))
        XCTAssertEqual(TestFS.readText(maildirsize), "1000000S,100C\n\(expected.bytes) \(expected.messages)\n")
    }

    func testRecalculatesWhenFileIs5120BytesOrMore() throws {
        let expected = makeMaildir()
        // 11 + 1276 * 4 + 5 = exactly 5120 bytes; the totals are fine (1286 bytes of 100 MB).
        let text = "100000000S\n" + String(repeating: "1 0\n", count: 1276) + "10 0\n"
        XCTAssertEqual(text.utf8.count, 5120)
        TestFS.write(maildirsize, text)
        let m = try XCTUnwrap(try QuotaRoot(root: dir).current())
        XCTAssertEqual(m.usage, expected)
        XCTAssertEqual(TestFS.readText(maildirsize), "100000000S\n\(expected.bytes) \(expected.messages)\n")
    }

    func testNoRecalculationJustBelow5120Bytes() throws {
        makeMaildir()
        let text = "100000000S\n" + String(repeating: "1 0\n", count: 1277)
        XCTAssertEqual(text.utf8.count, 5119)
        TestFS.write(maildirsize, text)
        let m = try XCTUnwrap(try QuotaRoot(root: dir).current())
        XCTAssertEqual(m.usage, QuotaUsage(bytes: 1277, messages: 0))
        XCTAssertEqual(TestFS.readText(maildirsize), text)
    }

    func testRecalculatesWhenTotalsAreNegative() throws {
        let expected = makeMaildir()
        for text in ["1000000S\n-50 1\n", "1000000S\n10 1\n5 -2\n"] {
            TestFS.write(maildirsize, text)
            let m = try XCTUnwrap(try QuotaRoot(root: dir).current())
            XCTAssertEqual(m.usage, expected, text)
            XCTAssertEqual(TestFS.readText(maildirsize), "1000000S\n\(expected.bytes) \(expected.messages)\n", text)
        }
    }

    func testRecalculatesOverQuotaWithSeveralDataLines() throws {
        let expected = makeMaildir()
        TestFS.write(maildirsize, "100S\n60 1\n60 1\n")  // over, two lines: must be checked
        let m = try XCTUnwrap(try QuotaRoot(root: dir).current())
        XCTAssertEqual(m.usage, expected)
        XCTAssertEqual(m.dataLines, 1)
    }

    func testOverQuotaWithOneFreshLineIsTrusted() throws {
        makeMaildir()
        TestFS.write(maildirsize, "100S\n120 1\n")
        let m = try XCTUnwrap(try QuotaRoot(root: dir).current())
        XCTAssertEqual(m.usage, QuotaUsage(bytes: 120, messages: 1))
        XCTAssertTrue(m.isOver(adding: nil))
    }

    func testOverQuotaWithOneOldLineIsRecalculated() throws {
        let expected = makeMaildir()
        TestFS.write(maildirsize, "100000000S\n200000000 1\n")
        TestFS.age(maildirsize, by: 16 * 60)
        let m = try XCTUnwrap(try QuotaRoot(root: dir).current())
        XCTAssertEqual(m.usage, expected)
        XCTAssertFalse(m.isOver(adding: nil))
    }

    func testRecalculatedUsageEqualsSumOfSizes() throws {
        let expected = makeMaildir()
        // 1000 + 2500 + 333 + 700 + 44 + 4096 + 50
        XCTAssertEqual(expected, QuotaUsage(bytes: 8723, messages: 7))
        let m = try QuotaRoot(root: dir).recalculate(limits: QuotaLimits(bytes: 5_000_000, messages: 0))
        XCTAssertEqual(m.usage, expected)
        XCTAssertEqual(TestFS.readText(maildirsize), "5000000S\n8723 7\n")
    }

    func testAppendDeltas() throws {
        makeMaildir()
        let quota = QuotaRoot(root: dir)
        try quota.append(bytes: 100, messages: 1)
        XCTAssertFalse(TestFS.exists(maildirsize), "no file: nothing appended, no quota")
        TestFS.write(maildirsize, "1000000S\n10 1\n")
        try quota.append(bytes: 100, messages: 1)
        try quota.append(bytes: -10, messages: -1)
        XCTAssertEqual(TestFS.readText(maildirsize), "1000000S\n10 1\n100 1\n-10 -1\n")
        XCTAssertEqual(try quota.current()?.usage, QuotaUsage(bytes: 100, messages: 1))
    }

    func testSetLimitsKeepsUsage() throws {
        let expected = makeMaildir()
        let quota = QuotaRoot(root: dir)
        try quota.setLimits(QuotaLimits(bytes: 42, messages: 3))
        XCTAssertEqual(TestFS.readText(maildirsize), "42S,3C\n\(expected.bytes) \(expected.messages)\n")
    }
}

extension TestFS {
    static func lastComponent(_ path: String) -> String { Files.baseName(path) }
}
