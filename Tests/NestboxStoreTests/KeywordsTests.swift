import XCTest
import NestboxSupport
@testable import NestboxStore

/// dovecot-keywords: index <-> name, letters a..z.
final class KeywordsTests: TempDirTestCase {
    func testParse() {
        let k = Keywords.parse("0 $Junk\n1 NonJunk\n3 Work Project\n")
        XCTAssertEqual(k.names[0], "$Junk")
        XCTAssertEqual(k.names[1], "NonJunk")
        XCTAssertNil(k.names[2])
        XCTAssertEqual(k.names[3], "Work Project", "a name may contain spaces")
        XCTAssertEqual(k.names.count, 26)
        XCTAssertEqual(k.name(of: "a"), "$Junk")
        XCTAssertEqual(k.name(of: "d"), "Work Project")
        XCTAssertNil(k.name(of: "c"))
        XCTAssertNil(k.name(of: "S"), "system flag letters are not keywords")
        XCTAssertNil(k.name(of: "z"))
    }

    func testParseSkipsBadLines() {
        let k = Keywords.parse("26 TooHigh\n-1 Negative\nx Letter\n5\n\n7 \n25 Last\n2 Two \n")
        XCTAssertEqual(k.names.compactMap { $0 }, ["Two", "Last"])
        XCTAssertEqual(k.name(of: "z"), "Last")
        XCTAssertEqual(k.name(of: "c"), "Two")
    }

    func testSerializeRoundTrip() {
        let text = "0 $Junk\n1 NonJunk\n3 Work\n25 Zed\n"
        let k = Keywords.parse(text)
        XCTAssertEqual(k.serialized(), text)
        XCTAssertEqual(Keywords.parse(k.serialized()), k)
        XCTAssertEqual(Keywords().serialized(), "")
    }

    func testCaseInsensitiveLookup() {
        let k = Keywords.parse("0 $Junk\n4 Important\n")
        for name in ["$Junk", "$junk", "$JUNK"] { XCTAssertEqual(k.letter(of: name), "a", name) }
        for name in ["important", "IMPORTANT", "Important"] { XCTAssertEqual(k.letter(of: name), "e", name) }
        XCTAssertNil(k.letter(of: "Junk"))
        XCTAssertNil(k.letter(of: ""))
    }

    func testLetterIndex() {
        XCTAssertEqual(Keywords.letter(0), "a")
        XCTAssertEqual(Keywords.letter(25), "z")
    }

    func testLetterAddingUpTo26ThenNil() {
        var k = Keywords()
        for i in 0..<26 {
            XCTAssertEqual(k.letterAdding("kw\(i)"), Keywords.letter(i), "keyword \(i)")
        }
        XCTAssertNil(k.letterAdding("one-too-many"))
        XCTAssertNil(k.letter(of: "one-too-many"))
        // Known names still resolve when the table is full, in any case.
        XCTAssertEqual(k.letterAdding("KW7"), "h")
        XCTAssertEqual(k.names.compactMap { $0 }.count, 26)
    }

    func testLetterAddingFillsTheFirstFreeIndexAndReusesKnownNames() {
        var k = Keywords.parse("0 a0\n1 a1\n3 a3\n")
        XCTAssertEqual(k.letterAdding("A1"), "b")
        XCTAssertEqual(k.letterAdding("new"), "c")
        XCTAssertEqual(k.letterAdding("newer"), "e")
        XCTAssertEqual(k.letterAdding("NEW"), "c")
        XCTAssertEqual(k.serialized(), "0 a0\n1 a1\n2 new\n3 a3\n4 newer\n")
    }

    func testReadAndWrite() throws {
        XCTAssertEqual(try Keywords.read(folder: dir), Keywords(), "no file: no keywords")
        var k = Keywords()
        _ = k.letterAdding("$Forwarded")
        _ = k.letterAdding("Work")
        try k.writeLocked(folder: dir)
        XCTAssertEqual(TestFS.readText("\(dir)/dovecot-keywords"), "0 $Forwarded\n1 Work\n")
        XCTAssertEqual(try Keywords.read(folder: dir), k)

        // A rewrite within the same second still makes the mtime increase.
        var st1 = stat(), st2 = stat()
        XCTAssertEqual(lstat("\(dir)/dovecot-keywords", &st1), 0)
        _ = k.letterAdding("More")
        try k.writeLocked(folder: dir)
        XCTAssertEqual(lstat("\(dir)/dovecot-keywords", &st2), 0)
        XCTAssertGreaterThan(st2.st_mtim.tv_sec, st1.st_mtim.tv_sec)
        XCTAssertEqual(try Keywords.read(folder: dir).letter(of: "more"), "c")
    }
}
