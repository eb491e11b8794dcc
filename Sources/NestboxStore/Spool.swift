// The spool: an incoming message is written once, in a stream, to one file: in the folder's
// tmp/ when there is one recipient (the file is then renamed into new/), else below the mail
// root (`.nestbox/spool/`) with every recipient's copy a hard link to it (a copy when the folder
// lives on another file system). On the way in:
// - `Return-Path: <sender>` and a `Received:` line are put first; any Return-Path the message
//   already has is dropped (with its continuation lines); a leading mbox `From ` line is dropped;
// - CRLF becomes LF (a lone CR is kept), a missing final newline is added;
// - NUL bytes, an empty message and a header section over `headerLimit` are refused (5.6.0);
//   a message over `maxSize` is refused (5.3.4);
// - the size (S=) and RFC822.SIZE (W=, every LF counted as CRLF) are counted from the bytes
//   written, and Message-ID is noted for the log.
// Memory stays constant whatever the message size: input is read and written in 64 KiB chunks;
// only the header section is held, bounded by `headerLimit`.
// The file is fsynced before `finish()` returns; on any failure it is removed.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public final class SpooledMessage: @unchecked Sendable {
    public private(set) var path: String
    public let size: Int64
    public let virtualSize: Int64
    public let messageID: String?
    /// The Date header's value (for the duplicate key), nil when there is none.
    public let date: String?
    /// False once the spool file itself became a recipient's message (renamed into new/).
    public private(set) var isSpooled = true
    /// The folder in whose tmp/ the message was spooled (one recipient): it is moved from there
    /// into that folder's new/ instead of being linked. nil: the shared spool.
    var homeFolder: String? = nil

    init(path: String, size: Int64, virtualSize: Int64, messageID: String?, date: String?) {
        self.path = path
        self.size = size
        self.virtualSize = virtualSize
        self.messageID = messageID
        self.date = date
    }

    /// The spool file was renamed into a mailbox: nothing left to remove.
    func consumed() { isSpooled = false }

    /// Removes the spool file (every recipient has its own link by then).
    public func remove() {
        if isSpooled { Files.removeQuietly(path) }
        isSpooled = false
    }
}

public final class SpoolWriter {
    public static let defaultHeaderLimit = 1 << 20
    static let chunkSize = 65536

    public let path: String
    private var fd: Int32
    private let maxSize: Int64
    private let headerLimit: Int
    /// A new Return-Path is written, so the message's own are dropped.
    private let replaceReturnPath: Bool

    // Output state
    private var out: [UInt8] = []
    private var written: Int64 = 0
    private var lineFeeds: Int64 = 0
    private var lastByte: UInt8 = 0

    // Input state
    private var inputBytes: Int64 = 0
    private var pendingCR = false
    private var inHeader = true
    private var atStart = true
    private var line: [UInt8] = []      // the current header line (LF-normalised)
    private var headerBytes = 0
    private var droppingField = false   // inside a Return-Path field being dropped
    private var inMessageIDField = false
    private var messageIDValue: [UInt8] = []
    private var inDateField = false
    private var dateValue: [UInt8] = []
    private var finished = false

    /// Creates the spool file and writes the trace headers.
    public init(spoolDirectory: String, host: String, returnPath: String?, received: String,
                maxSize: Int64 = 0, headerLimit: Int = SpoolWriter.defaultHeaderLimit) throws {
        path = "\(spoolDirectory)/\(MaildirName.newBase(host: host))"
        do {
            fd = try Files.createExclusive(path)
        } catch {
            guard !Files.isDirectory(spoolDirectory) else { throw error }
            try Files.makeDirectory(spoolDirectory)
            fd = try Files.createExclusive(path)
        }
        self.maxSize = maxSize
        self.headerLimit = headerLimit
        replaceReturnPath = returnPath != nil
        out.reserveCapacity(SpoolWriter.chunkSize * 2)
        var trace = ""
        if let returnPath { trace += "Return-Path: <\(returnPath)>\n" }
        trace += received.hasSuffix("\n") ? received : received + "\n"
        emit(Array(trace.utf8)[...])
    }

    deinit {
        if !finished { abandon() }
    }

    /// Removes the partial file (idempotent).
    public func abandon() {
        guard !finished else { return }
        finished = true
        if fd >= 0 { close(fd) }
        fd = -1
        Files.removeQuietly(path)
    }

    /// Feeds raw message bytes (CRLF or LF, no dot-stuffing).
    public func append(_ bytes: ArraySlice<UInt8>) throws {
        guard !bytes.isEmpty else { return }
        // The first limit crossed in the stream decides the refusal, however the input is cut:
        // the bytes before the size limit or a NUL are processed first (where the header limit
        // may be crossed), then the refusal for what comes at the cut.
        var cut = bytes.endIndex
        var refusal: NestboxFailure? = nil
        if maxSize > 0 && inputBytes + Int64(bytes.count) > maxSize {
            cut = bytes.startIndex + Int(max(0, maxSize - inputBytes))
            refusal = NestboxFailure(.tooBig.with(text: "Message too big (limit \(maxSize) bytes)"), "message over maxmessagesize \(maxSize)")
        }
        if let nul = bytes[..<cut].firstIndex(of: 0) {
            cut = nul
            refusal = NestboxFailure(.dataError.with(text: "Message contains NUL bytes"), "message contains a NUL byte")
        }
        inputBytes += Int64(cut - bytes.startIndex)
        try convert(bytes[..<cut])
        if let refusal { throw refusal }
    }

    /// CRLF -> LF, then header processing.
    private func convert(_ bytes: ArraySlice<UInt8>) throws {
        guard !bytes.isEmpty else { return }
        var start = bytes.startIndex
        var i = start
        // CRLF -> LF without copying the chunk: emit runs between CRs.
        if pendingCR {
            pendingCR = false
            if bytes.first != 10 { try feed([13][...]) }
        }
        while i < bytes.endIndex {
            if bytes[i] == 13 {
                if i + 1 < bytes.endIndex {
                    if bytes[i + 1] == 10 {
                        try feed(bytes[start..<i])
                        start = i + 1
                    }
                } else {
                    try feed(bytes[start..<i])
                    pendingCR = true
                    start = bytes.endIndex
                }
            }
            i += 1
        }
        if start < bytes.endIndex { try feed(bytes[start..<bytes.endIndex]) }
    }

    /// LF-normalised bytes: header processing, then straight through.
    private func feed(_ bytes: ArraySlice<UInt8>) throws {
        if !inHeader {
            emit(bytes)
            return
        }
        var rest = bytes
        while inHeader, let nl = rest.firstIndex(of: 10) {
            line.append(contentsOf: rest[rest.startIndex...nl])
            rest = rest[(nl + 1)...]
            try headerLine()
        }
        if inHeader {
            line.append(contentsOf: rest)
            if headerBytes + line.count > headerLimit { throw headerTooBig() }
        } else if !rest.isEmpty {
            emit(rest)
        }
    }

    private func headerTooBig() -> NestboxFailure {
        NestboxFailure(.dataError.with(text: "Message header section too large"), "header section over \(headerLimit) bytes")
    }

    /// One complete header line (ending in LF) in `line`.
    private func headerLine() throws {
        defer { line.removeAll(keepingCapacity: true) }
        headerBytes += line.count
        if headerBytes > headerLimit { throw headerTooBig() }
        if atStart {
            atStart = false
            if line.starts(with: Array("From ".utf8)) { return }  // mbox separator from pipe's F flag
        }
        if line == [10] {
            inHeader = false
            emit(line[...])
            return
        }
        let first = line[0]
        if first == 32 || first == 9 {  // continuation
            if inMessageIDField { messageIDValue.append(contentsOf: line.prefix(998)) }
            if inDateField { dateValue.append(contentsOf: line.prefix(998)) }
            if !droppingField { emit(line[...]) }
            return
        }
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0,
              line[..<colon].allSatisfy({ $0 > 32 && $0 < 127 }) else {
            // Not a header field: the header section ended without an empty line. Put one in,
            // so that the line stays body text for every reader.
            inHeader = false
            emit([10][...])
            emit(line[...])
            return
        }
        let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
        droppingField = replaceReturnPath && name == "return-path"
        inMessageIDField = name == "message-id" && messageIDValue.isEmpty
        if inMessageIDField { messageIDValue = Array(line[(colon + 1)...].prefix(998)) }
        inDateField = name == "date" && dateValue.isEmpty
        if inDateField { dateValue = Array(line[(colon + 1)...].prefix(998)) }
        if !droppingField { emit(line[...]) }
    }

    private func emit(_ bytes: ArraySlice<UInt8>) {
        guard !bytes.isEmpty else { return }
        out.append(contentsOf: bytes)
        lastByte = bytes.last!
        if out.count >= SpoolWriter.chunkSize { flushSoon = true }
    }

    private var flushSoon = false

    private func flush() throws {
        guard !out.isEmpty else { return }
        for b in out where b == 10 { lineFeeds += 1 }
        try Files.writeAll(fd, out, path: path)
        written += Int64(out.count)
        out.removeAll(keepingCapacity: true)
        flushSoon = false
    }

    /// Completes the message: final newline, fsync. Throws for an empty message.
    public func finish() throws -> SpooledMessage {
        do {
            if pendingCR {
                pendingCR = false
                try feed([13][...])
            }
            if inHeader && !line.isEmpty {
                // The input ended inside the header section without a newline.
                line.append(10)
                try headerLine()
            }
            if inputBytes == 0 {
                throw NestboxFailure(.dataError.with(text: "Message is empty"), "empty message")
            }
            if lastByte != 10 { emit([10][...]) }
            try flush()
            try Files.fsync(fd, path: path)
            try Files.close(fd, path: path)
            fd = -1
            finished = true
        } catch {
            abandon()
            throw error
        }
        func unfolded(_ bytes: [UInt8]) -> String? {
            let s = String(String(decoding: bytes, as: UTF8.self).filter { $0 != "\n" && $0 != "\r" }).trimmingSpaces()
            return s.isEmpty ? nil : s
        }
        return SpooledMessage(path: path, size: written, virtualSize: written + lineFeeds,
                              messageID: unfolded(messageIDValue), date: unfolded(dateValue))
    }

    /// Writes out whatever has accumulated once it passes the chunk size (call after append).
    public func flushIfNeeded() throws {
        if flushSoon { try flush() }
    }
}

extension SpoolWriter {
    /// Reads `input` to its end, flushing as it goes.
    public func consume(fileDescriptor input: Int32) throws -> SpooledMessage {
        var buffer = [UInt8](repeating: 0, count: SpoolWriter.chunkSize)
        do {
            while true {
                let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw NestboxFailure.system("read", "standard input")
                }
                if n == 0 { break }
                try append(buffer[0..<n])
                try flushIfNeeded()
            }
            return try finish()
        } catch {
            abandon()
            throw error
        }
    }
}
