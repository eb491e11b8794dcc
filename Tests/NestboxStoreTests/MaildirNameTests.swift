#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// Maildir file names: `<base>[,<key>=<value>...][:2,<flags>]`.
final class MaildirNameTests: XCTestCase {
    struct Row {
        let file: String
        let stem: String
        let info: String?
        let base: String
        let size: Int64?
        let vsize: Int64?
        let flags: String
    }

    static let rows: [Row] = [
        Row(file: "1795703507.M255496P5511Q1.mx,S=36,W=40:2,FS", stem: "1795703507.M255496P5511Q1.mx,S=36,W=40", info: "FS",
            base: "1795703507.M255496P5511Q1.mx", size: 36, vsize: 40, flags: "FS"),
        Row(file: "1795703507.M255496P5511Q1.mx,S=36,W=40", stem: "1795703507.M255496P5511Q1.mx,S=36,W=40", info: nil,
            base: "1795703507.M255496P5511Q1.mx", size: 36, vsize: 40, flags: ""),
        Row(file: "1234.M1P2.host", stem: "1234.M1P2.host", info: nil, base: "1234.M1P2.host", size: nil, vsize: nil, flags: ""),
        Row(file: "1234.M1P2.host:2,", stem: "1234.M1P2.host", info: "", base: "1234.M1P2.host", size: nil, vsize: nil, flags: ""),
        Row(file: "1234.M1P2.host:2,S", stem: "1234.M1P2.host", info: "S", base: "1234.M1P2.host", size: nil, vsize: nil, flags: "S"),
        Row(file: "1234.M1P2.host,W=50,S=12:2,RS", stem: "1234.M1P2.host,W=50,S=12", info: "RS", base: "1234.M1P2.host",
            size: 12, vsize: 50, flags: "RS"),
        Row(file: "1234.M1P2.host,S=12x", stem: "1234.M1P2.host,S=12x", info: nil, base: "1234.M1P2.host", size: nil, vsize: nil, flags: ""),
        Row(file: "1234.M1P2.host,S=", stem: "1234.M1P2.host,S=", info: nil, base: "1234.M1P2.host", size: nil, vsize: nil, flags: ""),
        Row(file: "1234.M1P2.host,S=-5", stem: "1234.M1P2.host,S=-5", info: nil, base: "1234.M1P2.host", size: nil, vsize: nil, flags: ""),
        Row(file: "1234.M1P2.host,S=1 2", stem: "1234.M1P2.host,S=1 2", info: nil, base: "1234.M1P2.host", size: nil, vsize: nil, flags: ""),
        Row(file: "1234.M1P2.host,S=99999999999999999999", stem: "1234.M1P2.host,S=99999999999999999999", info: nil,
            base: "1234.M1P2.host", size: nil, vsize: nil, flags: ""),
        Row(file: "1234.M1P2.host,XS=12,SW=3", stem: "1234.M1P2.host,XS=12,SW=3", info: nil, base: "1234.M1P2.host",
            size: nil, vsize: nil, flags: ""),
        Row(file: "1234.M1P2.host,S=12,W=x:2,T", stem: "1234.M1P2.host,S=12,W=x", info: "T", base: "1234.M1P2.host",
            size: 12, vsize: nil, flags: "T"),
        Row(file: "1234.M1P2.host,S=0,W=0", stem: "1234.M1P2.host,S=0,W=0", info: nil, base: "1234.M1P2.host",
            size: 0, vsize: 0, flags: ""),
        // S= after the colon belongs to the info, not the stem.
        Row(file: "1234.M1P2.host:2,S=5", stem: "1234.M1P2.host", info: "S=5", base: "1234.M1P2.host", size: nil, vsize: nil,
            flags: "S=5"),
        Row(file: "1234.M1P2.host,S=10:2,FSab,extra,more", stem: "1234.M1P2.host,S=10", info: "FSab,extra,more",
            base: "1234.M1P2.host", size: 10, vsize: nil, flags: "FSab"),
        Row(file: "1234.M1P2.a\\057b\\072c,S=7:2,DFPRST", stem: "1234.M1P2.a\\057b\\072c,S=7", info: "DFPRST",
            base: "1234.M1P2.a\\057b\\072c", size: 7, vsize: nil, flags: "DFPRST"),
    ]

    func testParseTable() {
        for row in Self.rows {
            let n = MaildirName(row.file)
            XCTAssertEqual(n.stem, row.stem, "stem of \(row.file)")
            XCTAssertEqual(n.info, row.info, "info of \(row.file)")
            XCTAssertEqual(n.base, row.base, "base of \(row.file)")
            XCTAssertEqual(n.size, row.size, "S= of \(row.file)")
            XCTAssertEqual(n.virtualSize, row.vsize, "W= of \(row.file)")
            XCTAssertEqual(n.flagLetters, row.flags, "flags of \(row.file)")
            XCTAssertEqual(n.fileName, row.file, "file name round trip of \(row.file)")
        }
    }

    func testFieldByKey() {
        let n = MaildirName("1.M2P3.h,S=10,W=12,Z=99,Y=ab")
        XCTAssertEqual(n.field("S"), 10)
        XCTAssertEqual(n.field("W"), 12)
        XCTAssertEqual(n.field("Z"), 99)
        XCTAssertNil(n.field("Y"))
        XCTAssertNil(n.field("Q"))
        XCTAssertNil(MaildirName("").field("S"))
    }

    func testHasFlag() {
        let n = MaildirName("1.M2P3.h:2,FSa")
        XCTAssertTrue(n.has("F"))
        XCTAssertTrue(n.has("S"))
        XCTAssertTrue(n.has("a"))
        XCTAssertFalse(n.has("T"))
        // Letters after a second comma are not flags.
        XCTAssertFalse(MaildirName("1.M2P3.h:2,S,T").has("T"))
        XCTAssertFalse(MaildirName("1.M2P3.h").has("S"))
    }

    func testWithFlagsTable() {
        let table: [(String, String, String)] = [
            // file, new letters, expected file name
            ("1.M2P3.h,S=5", "S", "1.M2P3.h,S=5:2,S"),
            ("1.M2P3.h,S=5", "", "1.M2P3.h,S=5:2,"),
            ("1.M2P3.h:2,S", "TSaF", "1.M2P3.h:2,FSTa"),
            ("1.M2P3.h:2,", "zaDRP", "1.M2P3.h:2,DPRaz"),
            ("1.M2P3.h:2,S", "SSFF", "1.M2P3.h:2,FS"),
            ("1.M2P3.h:2,S", "xZ9S", "1.M2P3.h:2,9SZx"),      // unknown letters kept, ASCII order
            ("1.M2P3.h:2,S,foo=bar", "Sax", "1.M2P3.h:2,Sax,foo=bar"),  // text after a second comma kept
            ("1.M2P3.h:2,RS,x,y", "", "1.M2P3.h:2,,x,y"),
            ("1.M2P3.h,S=5,W=6:2,FS", "T", "1.M2P3.h,S=5,W=6:2,T"),
        ]
        for (file, letters, expected) in table {
            let changed = MaildirName(file).with(flags: letters)
            XCTAssertEqual(changed.fileName, expected, "\(file) with \(letters)")
            XCTAssertEqual(changed.stem, MaildirName(file).stem, "the stem never changes")
        }
    }

    func testSortedFlags() {
        XCTAssertEqual(MaildirName.sortedFlags("TSRPFD"), "DFPRST")
        XCTAssertEqual(MaildirName.sortedFlags("baS"), "Sab")
        XCTAssertEqual(MaildirName.sortedFlags(""), "")
        XCTAssertEqual(MaildirName.sortedFlags("aa"), "a")
    }

    func testIsMessageName() {
        for name in ["1.M2P3.h", "1.M2P3.h:2,S", "x"] { XCTAssertTrue(MaildirName.isMessageName(name), name) }
        for name in ["", ".", "..", ".nfs123", ".hidden:2,S", "a/b"] { XCTAssertFalse(MaildirName.isMessageName(name), name) }
    }

    func testEscapedHost() {
        let table: [(String, String)] = [
            ("mx.example.com", "mx.example.com"),
            ("a/b", "a\\057b"),
            ("a:b", "a\\072b"),
            ("a,b", "a\\054b"),
            ("/:,", "\\057\\072\\054"),
            ("", ""),
        ]
        for (host, escaped) in table { XCTAssertEqual(MaildirName.escapedHost(host), escaped, host) }
    }

    func testNewBaseFormat() {
        var before = timeval()
        gettimeofday(&before, nil)
        let base = MaildirName.newBase(host: "mx/1:2")
        var after = timeval()
        gettimeofday(&after, nil)

        XCTAssertTrue(base.hasSuffix(".mx\\0571\\0722"), base)
        let parts = base.split(separator: ".", maxSplits: 2).map(String.init)
        XCTAssertEqual(parts.count, 3, base)
        guard parts.count == 3 else { return }
        let secs = Int(parts[0])
        XCTAssertNotNil(secs, base)
        XCTAssertTrue((Int(before.tv_sec)...Int(after.tv_sec)).contains(secs ?? -1), base)
        // M<usec>P<pid>Q<n>
        let middle = parts[1]
        XCTAssertTrue(middle.hasPrefix("M"), base)
        guard let p = middle.firstIndex(of: "P"), let q = middle.firstIndex(of: "Q") else {
            return XCTFail("no P or Q in \(base)")
        }
        let usec = Int(middle[middle.index(after: middle.startIndex)..<p])
        XCTAssertNotNil(usec, base)
        XCTAssertTrue((0..<1_000_000).contains(usec ?? -1), base)
        XCTAssertEqual(Int32(middle[middle.index(after: p)..<q]), getpid(), base)
        XCTAssertNotNil(UInt64(middle[middle.index(after: q)...]), base)
        XCTAssertEqual(parts[2], "mx\\0571\\0722")
        XCTAssertFalse(base.contains(":") || base.contains("/") || base.contains(","), base)
        XCTAssertEqual(MaildirName(base).base, base)
    }

    func testNewBaseIsUnique() {
        var seen = Set<String>()
        for _ in 0..<5000 { seen.insert(MaildirName.newBase(host: "h")) }
        XCTAssertEqual(seen.count, 5000)
    }

    func testStemBuilder() {
        let stem = MaildirName.stem(base: "1.M2P3Q4.h", size: 1234, virtualSize: 1260)
        XCTAssertEqual(stem, "1.M2P3Q4.h,S=1234,W=1260")
        let n = MaildirName(stem)
        XCTAssertEqual(n.size, 1234)
        XCTAssertEqual(n.virtualSize, 1260)
        XCTAssertEqual(n.base, "1.M2P3Q4.h")
    }

    func testFlagIMAPNames() {
        let table: [(MaildirFlag, String)] = [(.draft, "\\Draft"), (.flagged, "\\Flagged"), (.answered, "\\Answered"),
                                               (.seen, "\\Seen"), (.deleted, "\\Deleted")]
        for (flag, name) in table {
            XCTAssertEqual(flag.imapName, name)
            XCTAssertEqual(MaildirFlag(imapName: name), flag)
            XCTAssertEqual(MaildirFlag(imapName: name.uppercased()), flag)
        }
        XCTAssertEqual(MaildirFlag.deleted.rawValue, "T")
        XCTAssertNil(MaildirFlag(imapName: "$Forwarded"), "P is kept untouched, never set by name")
        XCTAssertNil(MaildirFlag(imapName: "\\Recent"))
    }
}
