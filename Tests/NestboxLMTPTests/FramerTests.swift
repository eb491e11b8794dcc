import XCTest
@testable import NestboxLMTP

/// The LMTP framer alone: a table of inputs and the events they make, the same however the
/// input is cut (every split in two, and byte by byte).
final class FramerTests: XCTestCase {
    /// What a run of events says, in a comparable form: message bytes of one stretch are joined.
    enum Seen: Equatable {
        case command(String)
        case tooLong
        case bytes(String)
        case endOfData
        case endOfChunk
    }

    /// Feeds `pieces` in order; `begin` tells the framer a message starts after the command
    /// line it names (DATA, or BDAT with its size), as the session does.
    func run(_ pieces: [[UInt8]], maxLine: Int = 16) -> [Seen] {
        var framer = LMTPFramer(maxLineLength: maxLine)
        var seen: [Seen] = []
        for piece in pieces {
            framer.append(piece[...])
            while let event = framer.next() {
                switch event {
                case .command(let line):
                    let text = String(decoding: line, as: UTF8.self)
                    seen.append(.command(text))
                    if text == "DATA" { framer.startData() }
                    if text.hasPrefix("BDAT "), let n = Int(text.dropFirst(5)) { framer.startChunk(size: n) }
                case .lineTooLong: seen.append(.tooLong)
                case .messageBytes(let b):
                    let text = String(decoding: b, as: UTF8.self)
                    if case .bytes(let before)? = seen.last { seen[seen.count - 1] = .bytes(before + text) }
                    else if !text.isEmpty { seen.append(.bytes(text)) }
                case .endOfData: seen.append(.endOfData)
                case .endOfChunk: seen.append(.endOfChunk)
                }
            }
        }
        return seen
    }

    static let table: [(input: String, expected: [Seen])] = [
        ("NOOP\r\nRSET\n", [.command("NOOP"), .command("RSET")]),
        ("NOOP", []),
        ("0123456789abcdefX\r\nNOOP\r\n", [.tooLong, .command("NOOP")]),
        ("0123456789abcdef\r\n", [.command("0123456789abcdef")]),
        ("0123456789abcdef0123456789\r\nNOOP\r\n", [.tooLong, .command("NOOP")]),
        ("DATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
         [.command("DATA"), .bytes("Subject: x\r\n\r\n.dot\r\n"), .endOfData, .command("QUIT")]),
        ("DATA\n.x\n.\nNOOP\n", [.command("DATA"), .bytes("x\n"), .endOfData, .command("NOOP")]),
        ("DATA\r\na.\r\n .\r\n.\r\n", [.command("DATA"), .bytes("a.\r\n .\r\n"), .endOfData]),
        ("BDAT 5\r\nab\r\n.BDAT 0\r\n", [.command("BDAT 5"), .bytes("ab\r\n."), .endOfChunk, .command("BDAT 0"), .endOfChunk]),
        ("BDAT 3\r\n\r\n.NOOP\r\n", [.command("BDAT 3"), .bytes("\r\n."), .endOfChunk, .command("NOOP")]),
    ]

    func testTableWholeSplitAndByteByByte() {
        for (input, expected) in Self.table {
            let bytes = Array(input.utf8)
            XCTAssertEqual(run([bytes]), expected, "whole: \(input.debugDescription)")
            for cut in 1..<bytes.count {
                XCTAssertEqual(run([Array(bytes[..<cut]), Array(bytes[cut...])]), expected, "cut at \(cut): \(input.debugDescription)")
            }
            XCTAssertEqual(run(bytes.map { [$0] }), expected, "byte by byte: \(input.debugDescription)")
        }
    }

    func testLongDataLinesPassWithoutWaitingForTheirEnd() {
        var framer = LMTPFramer()
        framer.append(Array("DATA\r\n".utf8)[...])
        XCTAssertEqual(framer.next(), .command(Array("DATA".utf8)[...]))
        framer.startData()
        framer.append(Array(repeating: UInt8(ascii: "x"), count: 100_000)[...])
        guard case .messageBytes(let part)? = framer.next() else { return XCTFail("the partial line is not passed on") }
        XCTAssertEqual(part.count, 100_000)
        XCTAssertNil(framer.next())
    }
}
