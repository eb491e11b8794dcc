#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// SpoolWriter: the one streaming pass over an incoming message, fed from a pipe, from a file
/// (consume(fileDescriptor:)) or chunk by chunk (append + finish).
final class SpoolTests: TempDirTestCase {
    static let sender = "sender@example.org"
    static let received = "Received: by mx.test (Nestbox); Mon, 1 Jan 2024 00:00:00 +0000"

    var spool: String { "\(dir)/spool" }

    enum Mode: CustomStringConvertible {
        case pipe, file, chunks(Int)
        var description: String {
            switch self {
            case .pipe: return "pipe"
            case .file: return "file"
            case .chunks(let n): return "chunks of \(n)"
            }
        }
    }

    /// Every way of feeding a message; byte by byte puts a chunk boundary after every CR.
    static let modes: [Mode] = [.pipe, .file, .chunks(1), .chunks(2), .chunks(3), .chunks(65536)]

    func makeWriter(returnPath: String? = SpoolTests.sender, maxSize: Int64 = 0,
                    headerLimit: Int = SpoolWriter.defaultHeaderLimit) throws -> SpoolWriter {
        try SpoolWriter(spoolDirectory: spool, host: "mx.test", returnPath: returnPath, received: Self.received,
                        maxSize: maxSize, headerLimit: headerLimit)
    }

    /// Feeds `input` in `mode`; the writer is released before this returns.
    func spoolMessage(_ input: [UInt8], mode: Mode, returnPath: String? = SpoolTests.sender, maxSize: Int64 = 0,
                      headerLimit: Int = SpoolWriter.defaultHeaderLimit) throws -> SpooledMessage {
        let writer = try makeWriter(returnPath: returnPath, maxSize: maxSize, headerLimit: headerLimit)
        switch mode {
        case .pipe:
            precondition(input.count < 60_000, "a pipe holds 64 KiB; use .file for more")
            var fds: [Int32] = [0, 0]
            precondition(pipe(&fds) == 0)
            defer { close(fds[0]) }
            var offset = 0
            while offset < input.count {
                let n = input[offset...].withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) }
                precondition(n > 0)
                offset += n
            }
            close(fds[1])
            return try writer.consume(fileDescriptor: fds[0])
        case .file:
            let path = "\(dir)/input.eml"
            TestFS.write(path, input)
            let fd = open(path, O_RDONLY)
            precondition(fd >= 0)
            defer { close(fd); unlink(path) }
            return try writer.consume(fileDescriptor: fd)
        case .chunks(let size):
            var i = 0
            while i < input.count {
                try writer.append(input[i..<min(i + size, input.count)])
                try writer.flushIfNeeded()
                i += size
            }
            return try writer.finish()
        }
    }

    func trace(_ returnPath: String? = SpoolTests.sender) -> String {
        (returnPath.map { "Return-Path: <\($0)>\n" } ?? "") + Self.received + "\n"
    }

    func spoolFiles() -> [String] { TestFS.list(spool) }

    /// Checks a successful spool: content, S=, W=, one file in the spool directory.
    func check(_ m: SpooledMessage, expected: [UInt8], _ context: String, file: StaticString = #filePath, line: UInt = #line) {
        let stored = TestFS.read(m.path) ?? []
        XCTAssertEqual(String(decoding: stored, as: UTF8.self), String(decoding: expected, as: UTF8.self), context,
                       file: file, line: line)
        XCTAssertEqual(stored, expected, context, file: file, line: line)
        XCTAssertEqual(m.size, TestFS.size(m.path), "size == file size: \(context)", file: file, line: line)
        XCTAssertEqual(m.size, Int64(expected.count), context, file: file, line: line)
        XCTAssertEqual(m.virtualSize, m.size + Int64(stored.filter { $0 == 10 }.count), "W = S + LFs: \(context)",
                       file: file, line: line)
        XCTAssertEqual(Files.directoryName(m.path), spool, context, file: file, line: line)
        XCTAssertEqual(spoolFiles(), [Files.baseName(m.path)], context, file: file, line: line)
    }

    // MARK: Transformations

    /// (what, input, expected message after the trace headers)
    static let transformations: [(String, String, String)] = [
        ("LF unchanged", "Subject: a\n\nbody\n", "Subject: a\n\nbody\n"),
        ("CRLF -> LF", "Subject: a\r\nTo: b\r\n\r\nline 1\r\nline 2\r\n", "Subject: a\nTo: b\n\nline 1\nline 2\n"),
        ("lone CR kept", "Subject: a\r\n\r\nx\ry\r\n", "Subject: a\n\nx\ry\n"),
        ("CR CR LF", "Subject: a\n\nx\r\r\n", "Subject: a\n\nx\r\n"),
        ("lone CR in a header", "Subject: a\rb\n\nx\n", "Subject: a\rb\n\nx\n"),
        ("missing final newline", "Subject: a\n\nbody", "Subject: a\n\nbody\n"),
        ("missing final newline after CRLF lines", "Subject: a\r\n\r\nbody", "Subject: a\n\nbody\n"),
        ("header only, no newline", "Subject: a", "Subject: a\n"),
        ("header only", "Subject: a\r\n", "Subject: a\n"),
        ("leading mbox From line dropped", "From sender@example.org  Mon Jan  1 00:00:00 2024\nSubject: a\n\nbody\n",
         "Subject: a\n\nbody\n"),
        ("leading mbox From line with CRLF dropped", "From x Mon Jan  1 00:00:00 2024\r\nSubject: a\r\n\r\nb\r\n",
         "Subject: a\n\nb\n"),
        ("From: header is not an mbox line", "From: alice@example.org\nSubject: a\n\nb\n", "From: alice@example.org\nSubject: a\n\nb\n"),
        ("From line in the body kept", "Subject: a\n\nFrom me\n", "Subject: a\n\nFrom me\n"),
        ("Return-Path replaced with its continuation lines",
         "Return-Path: <old@x>\nSubject: a\nreturn-path:\n <other@x>\n\tmore\nX-Y: z\n \tfolded\n\nReturn-Path: <body@x>\n",
         "Subject: a\nX-Y: z\n \tfolded\n\nReturn-Path: <body@x>\n"),
        ("header section without blank line", "Subject: a\nthis is the body\nmore\n", "Subject: a\n\nthis is the body\nmore\n"),
        ("header section ended by a line with a space before the colon", "Subject: a\nNot A: header\n",
         "Subject: a\n\nNot A: header\n"),
        ("header section ended by a line without colon, CRLF", "Subject: a\r\nbody\r\n", "Subject: a\n\nbody\n"),
        ("blank line only", "\r\n", "\n"),
        ("8-bit body", "Subject: =?utf-8?q?x?=\n\nGr\u{FC}\u{DF}e \u{65E5}\u{672C}\n", "Subject: =?utf-8?q?x?=\n\nGr\u{FC}\u{DF}e \u{65E5}\u{672C}\n"),
    ]

    func testTransformationsInEveryMode() throws {
        for (what, input, expected) in Self.transformations {
            for mode in Self.modes {
                let m = try spoolMessage(Array(input.utf8), mode: mode)
                check(m, expected: Array((trace() + expected).utf8), "\(what) (\(mode))")
                m.remove()
            }
        }
    }

    func testRawEightBitBytesKept() throws {
        var input = Array("Subject: a\r\n\r\n".utf8)
        input += [0x80, 0xFF, 0xFE, 0xC3, 0x28, 0x0D, 0x0A, 0xE9, 0x0D, 0x41, 0x0A]  // invalid UTF-8, a lone CR
        let expected = Array((trace() + "Subject: a\n\n").utf8) + [0x80, 0xFF, 0xFE, 0xC3, 0x28, 0x0A, 0xE9, 0x0D, 0x41, 0x0A]
        for mode in Self.modes {
            let m = try spoolMessage(input, mode: mode)
            check(m, expected: expected, "\(mode)")
            m.remove()
        }
    }

    func testReturnPathKeptWithoutNewOne() throws {
        let input = "Return-Path: <old@x>\r\n <cont>\r\nSubject: a\r\n\r\nb\r\n"
        for mode in Self.modes {
            let m = try spoolMessage(Array(input.utf8), mode: mode, returnPath: nil)
            check(m, expected: Array((trace(nil) + "Return-Path: <old@x>\n <cont>\nSubject: a\n\nb\n").utf8), "\(mode)")
            m.remove()
        }
    }

    func testNullSenderReturnPath() throws {
        let m = try spoolMessage(Array("Subject: a\n\nb\n".utf8), mode: .pipe, returnPath: "")
        check(m, expected: Array(("Return-Path: <>\n" + Self.received + "\nSubject: a\n\nb\n").utf8), "null sender")
    }

    func testCRLFAcrossTheReadChunkBoundary() throws {
        // A CRLF split between two 64 KiB reads, and a lone CR at the end of one.
        var input = Array("Subject: big\r\n\r\n".utf8)
        input += [UInt8](repeating: UInt8(ascii: "a"), count: 65535 - input.count) + [13]
        input += [10] + Array("second\r".utf8) + [UInt8](repeating: UInt8(ascii: "b"), count: 65536 - 9) + [13]
        input += Array("c\r\n".utf8)
        XCTAssertEqual(input[65535], 13)
        XCTAssertEqual(input[65536], 10)
        XCTAssertEqual(input[131071], 13)
        var body = input
        body.removeSubrange(65535...65535)                       // that CRLF becomes LF
        body.removeLast(2); body.append(10)                         // the final CRLF too
        body = Array(body.dropFirst("Subject: big\r\n\r\n".utf8.count))
        let expected = Array((trace() + "Subject: big\n\n").utf8) + body
        for mode in [Mode.file, .chunks(65536), .chunks(4096), .chunks(1)] {
            let m = try spoolMessage(input, mode: mode)
            check(m, expected: expected, "\(mode)")
            m.remove()
        }
    }

    func testLargeMessage() throws {
        var input = Array("Subject: large\r\nMessage-ID: <large@test>\r\n\r\n".utf8)
        let line = Array("0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ \u{E4}\u{F6}\u{FC}\r\n".utf8)
        for _ in 0..<40_000 { input += line }  // about 3 MB
        let m = try spoolMessage(input, mode: .file)
        let lfCount = 3 + 40_000 + 2  // headers, body lines, trace lines
        XCTAssertEqual(m.size, Int64(trace().utf8.count + input.count - 3 - 40_000))
        XCTAssertEqual(m.size, TestFS.size(m.path))
        XCTAssertEqual(m.virtualSize, m.size + Int64(lfCount))
        XCTAssertEqual(m.messageID, "<large@test>")
        let stored = TestFS.read(m.path) ?? []
        XCTAssertFalse(stored.contains(13))
        XCTAssertEqual(stored.filter { $0 == 10 }.count, lfCount)
    }

    /// An empty chunk between the CR and the LF of a CRLF must not turn the CR into a lone CR.
    func testEmptyChunkBetweenCRAndLF() throws {
        let writer = try makeWriter()
        try writer.append(Array("Subject: a\r\n\r\nx\r".utf8)[...])
        try writer.append([][...])
        try writer.append(Array("\ny\r\n".utf8)[...])
        let m = try writer.finish()
        check(m, expected: Array((trace() + "Subject: a\n\nx\ny\n").utf8), "empty append between CR and LF")
    }

    // MARK: Message-ID

    func testMessageIDTable() throws {
        let table: [(String, String?)] = [
            ("Subject: a\nMessage-ID: <abc@example.com>\n\nb\n", "<abc@example.com>"),
            ("message-id:<abc@example.com>\r\n\r\nb\r\n", "<abc@example.com>"),
            ("MESSAGE-ID:   <abc@example.com>   \n\nb\n", "<abc@example.com>"),
            ("Message-Id:\r\n  <folded@example.com>\r\nSubject: a\r\n\r\nb\r\n", "<folded@example.com>"),
            ("Message-Id:\n\t<folded@example.com>\n\n", "<folded@example.com>"),
            ("Message-ID: <first@x>\nMessage-ID: <second@x>\n\nb\n", "<first@x>"),
            ("Return-Path: <a@b>\nMessage-ID: <after-rp@x>\n\nb\n", "<after-rp@x>"),
            ("Subject: a\n\nMessage-ID: <in-body@x>\n", nil),
            ("Subject: a\n\nb\n", nil),
            ("X-Message-ID: <not@x>\n\nb\n", nil),
            ("Message-ID: <at-eof@x>", "<at-eof@x>"),
        ]
        for (input, id) in table {
            for mode in [Mode.pipe, .chunks(1)] {
                let m = try spoolMessage(Array(input.utf8), mode: mode)
                XCTAssertEqual(m.messageID, id, "\(input.debugDescription) (\(mode))")
                m.remove()
            }
        }
    }

    func testDateTable() throws {
        let table: [(String, String?)] = [
            ("Date: Mon, 1 Jan 2024 00:00:00 +0000\n\nb\n", "Mon, 1 Jan 2024 00:00:00 +0000"),
            ("date:\r\n Mon, 1 Jan 2024\r\n 00:00:00 +0000\r\n\r\nb\r\n", "Mon, 1 Jan 2024 00:00:00 +0000"),
            ("Date: first\nDate: second\n\nb\n", "first"),
            ("Subject: a\n\nDate: in body\n", nil),
        ]
        for (input, date) in table {
            for mode in [Mode.pipe, .chunks(1)] {
                let m = try spoolMessage(Array(input.utf8), mode: mode)
                XCTAssertEqual(m.date, date, "\(input.debugDescription) (\(mode))")
                m.remove()
            }
        }
    }

    // MARK: Failures

    struct FailureCase {
        let what: String
        let input: [UInt8]
        let status: String
        let exitCode: Int32
        var maxSize: Int64 = 0
        var headerLimit: Int = SpoolWriter.defaultHeaderLimit
    }

    static let failures: [FailureCase] = [
        FailureCase(what: "NUL in the body", input: Array("Subject: a\n\nb\u{0}c\n".utf8), status: "5.6.0", exitCode: 65),
        FailureCase(what: "NUL in the header", input: Array("Subj\u{0}ect: a\n\nb\n".utf8), status: "5.6.0", exitCode: 65),
        FailureCase(what: "NUL as the last byte", input: Array("Subject: a\n\nb\n".utf8) + [0], status: "5.6.0", exitCode: 65),
        FailureCase(what: "empty input", input: [], status: "5.6.0", exitCode: 65),
        FailureCase(what: "header section over the limit", input: Array(("Subject: a\n" + String(repeating: "X-Long: 0123456789\n", count: 20)
                    + "\nbody\n").utf8), status: "5.6.0", exitCode: 65, headerLimit: 200),
        FailureCase(what: "one header line over the limit, no newline", input: Array(("Subject: " + String(repeating: "x", count: 500)).utf8),
                    status: "5.6.0", exitCode: 65, headerLimit: 200),
        FailureCase(what: "one header line over the limit", input: Array(("Subject: " + String(repeating: "x", count: 500) + "\n\nb\n").utf8),
                    status: "5.6.0", exitCode: 65, headerLimit: 200),
        FailureCase(what: "message over maxSize", input: Array(("Subject: a\n\n" + String(repeating: "y", count: 200) + "\n").utf8),
                    status: "5.3.4", exitCode: 73, maxSize: 100),
        FailureCase(what: "message one byte over maxSize", input: Array("Subject: a\n\n0123456789\n".utf8),
                    status: "5.3.4", exitCode: 73, maxSize: 22),
    ]

    func testFailuresThroughConsume() {
        for c in Self.failures {
            for mode in [Mode.pipe, .file] {
                let failure = XCTAssertThrowsFailure(try spoolMessage(c.input, mode: mode, maxSize: c.maxSize, headerLimit: c.headerLimit),
                                                     "\(c.what) (\(mode))")
                XCTAssertEqual(failure?.outcome.status, c.status, "\(c.what) (\(mode))")
                XCTAssertEqual(failure?.outcome.exitCode, c.exitCode, "\(c.what) (\(mode))")
                XCTAssertEqual(failure?.outcome.isTemporary, false, "\(c.what) (\(mode))")
                XCTAssertEqual(spoolFiles(), [], "spool directory empty after \(c.what) (\(mode))")
            }
        }
    }

    func testFailuresThroughAppendAndFinish() {
        for c in Self.failures {
            for size in [1, 7] {
                // The writer is released when spoolMessage returns, whatever threw.
                let failure = XCTAssertThrowsFailure(try spoolMessage(c.input, mode: .chunks(size), maxSize: c.maxSize,
                                                                      headerLimit: c.headerLimit), "\(c.what) (chunks of \(size))")
                XCTAssertEqual(failure?.outcome.status, c.status, "\(c.what) (chunks of \(size))")
                XCTAssertEqual(failure?.outcome.exitCode, c.exitCode, "\(c.what) (chunks of \(size))")
                XCTAssertEqual(spoolFiles(), [], "spool directory empty after \(c.what) (chunks of \(size))")
            }
        }
    }

    func testFinishFailureRemovesTheFileAtOnce() throws {
        let writer = try makeWriter()
        XCTAssertEqual(spoolFiles().count, 1, "the file exists while the message is written")
        let failure = XCTAssertThrowsFailure(try writer.finish())
        XCTAssertEqual(failure?.outcome.status, "5.6.0")
        XCTAssertEqual(spoolFiles(), [], "removed by finish() itself")
        withExtendedLifetime(writer) {}
    }

    func testAbandonRemovesTheFile() throws {
        let writer = try makeWriter()
        try writer.append(Array("Subject: a\n\nb\n".utf8)[...])
        XCTAssertEqual(spoolFiles().count, 1)
        writer.abandon()
        writer.abandon()
        XCTAssertEqual(spoolFiles(), [])
    }

    func testExactlyAtTheLimitsIsAccepted() throws {
        let input = Array("Subject: a\n\n0123456789\n".utf8)  // 23 bytes
        let m = try spoolMessage(input, mode: .pipe, maxSize: 23)
        check(m, expected: Array((trace() + "Subject: a\n\n0123456789\n").utf8), "maxSize == input size")
        m.remove()
        // The header section is exactly at the limit (11 + 1 bytes).
        let h = try spoolMessage(input, mode: .chunks(1), headerLimit: 12)
        check(h, expected: Array((trace() + "Subject: a\n\n0123456789\n").utf8), "header == limit")
        h.remove()
        XCTAssertEqual(spoolFiles(), [])
    }

    func testHeaderLimitDoesNotApplyToTheBody() throws {
        let input = Array(("Subject: a\n\n" + String(repeating: "body line\n", count: 100)).utf8)
        let m = try spoolMessage(input, mode: .file, headerLimit: 50)
        XCTAssertEqual(m.size, Int64(trace().utf8.count + input.count))
    }

    func testDefaultHeaderLimitIsOneMiB() throws {
        XCTAssertEqual(SpoolWriter.defaultHeaderLimit, 1 << 20)
        var input = Array("Subject: a\n".utf8)
        let field = Array("X-Filler: \(String(repeating: "f", count: 1000))\n".utf8)
        while input.count <= 1 << 20 { input += field }
        input += Array("\nbody\n".utf8)
        let failure = XCTAssertThrowsFailure(try spoolMessage(input, mode: .file))
        XCTAssertEqual(failure?.outcome.status, "5.6.0")
        XCTAssertEqual(spoolFiles(), [])
    }

    func testSpoolFileNameAndMode() throws {
        let m = try spoolMessage(Array("Subject: a\n\nb\n".utf8), mode: .pipe)
        let name = Files.baseName(m.path)
        XCTAssertEqual(MaildirName(name).base, name)
        XCTAssertTrue(name.hasSuffix(".mx.test"), name)
        var st = stat()
        XCTAssertEqual(lstat(m.path, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        m.remove()
        XCTAssertEqual(spoolFiles(), [])
    }
}
