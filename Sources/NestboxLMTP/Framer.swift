// LMTP input framing: turns the bytes a client sends into command lines and message bytes,
// whatever way the input is cut. No state of the conversation is kept here, only that of the
// byte stream: the session says when a message begins (DATA, BDAT) and the framer says when it
// ends.
//
// - Command lines end with LF (CRLF or a tolerated bare LF); the CR is removed. A line longer
//   than `Command.maxLineLength` is discarded up to its LF and reported once (`lineTooLong`).
// - DATA (RFC 5321 4.5.2): line by line; a line `.` ends the message; a leading dot is removed
//   (dot-unstuffing). A partial line is passed on at once unless it could still become the
//   terminating `.` line, so memory does not grow with a message's size.
// - BDAT (RFC 3030): exactly the announced number of octets, no unstuffing; `BDAT 0` ends at
//   once.
// Input is kept without copying: a slice of the caller's bytes, until the next call needs it.

public struct LMTPFramer: Sendable {
    public enum Event: Equatable, Sendable {
        /// A command line without its line end.
        case command(ArraySlice<UInt8>)
        /// A command line over the limit was discarded.
        case lineTooLong
        /// Message content: a DATA line (unstuffed) or part of one, or BDAT octets.
        case messageBytes(ArraySlice<UInt8>)
        /// The `.` line ended a DATA message.
        case endOfData
        /// The announced BDAT octets have all arrived.
        case endOfChunk
    }

    private enum Mode: Sendable {
        case command
        case data
        case chunk(remaining: Int)
    }

    public let maxLineLength: Int
    private var mode: Mode = .command
    private var buffer: ArraySlice<UInt8> = []
    private var discardingLongLine = false
    private var atLineStart = true

    public init(maxLineLength: Int = Command.maxLineLength) {
        self.maxLineLength = maxLineLength
    }

    /// The next bytes from the client.
    public mutating func append(_ bytes: ArraySlice<UInt8>) {
        if buffer.isEmpty {
            buffer = bytes
        } else {
            var joined = Array(buffer)
            joined.append(contentsOf: bytes)
            buffer = joined[...]
        }
    }

    /// The rest of the input is a DATA message (after the 354 reply).
    public mutating func startData() {
        mode = .data
        atLineStart = true
    }

    /// The next `size` octets are a BDAT chunk.
    public mutating func startChunk(size: Int) {
        mode = .chunk(remaining: size)
    }

    /// Back to command lines (the session ends a transaction itself).
    public var inMessage: Bool {
        if case .command = mode { return false }
        return true
    }

    /// The next event, or nil when more input is needed.
    public mutating func next() -> Event? {
        switch mode {
        case .command:
            return nextCommand()
        case .data:
            return nextDataLine()
        case .chunk(let remaining):
            if remaining == 0 {
                mode = .command
                return .endOfChunk
            }
            guard !buffer.isEmpty else { return nil }
            let n = min(remaining, buffer.count)
            let part = buffer.prefix(n)
            buffer = buffer.dropFirst(n)
            mode = .chunk(remaining: remaining - n)
            return .messageBytes(part)
        }
    }

    private mutating func nextCommand() -> Event? {
        guard !buffer.isEmpty else { return nil }
        guard let lf = buffer.firstIndex(of: 10) else {
            // +1: a CR may be waiting for its LF.
            if discardingLongLine || buffer.count > maxLineLength + 1 {
                discardingLongLine = true
                buffer = []
            }
            return nil
        }
        var line = buffer[buffer.startIndex..<lf]
        buffer = buffer[(lf + 1)...]
        if line.last == 13 { line = line.dropLast() }
        if discardingLongLine || line.count > maxLineLength {
            discardingLongLine = false
            return .lineTooLong
        }
        return .command(line)
    }

    private mutating func nextDataLine() -> Event? {
        guard !buffer.isEmpty else { return nil }
        if let lf = buffer.firstIndex(of: 10) {
            var line = buffer[buffer.startIndex...lf]
            buffer = buffer[(lf + 1)...]
            if atLineStart && line.first == UInt8(ascii: ".") {
                if line.count == 2 || (line.count == 3 && line[line.startIndex + 1] == 13) {
                    mode = .command
                    return .endOfData
                }
                line = line.dropFirst()
            }
            atLineStart = true
            return .messageBytes(line)
        }
        // A partial line: kept while it could still become the terminating line.
        if atLineStart && (buffer.elementsEqual([46]) || buffer.elementsEqual([46, 13])) { return nil }
        var part = buffer
        if atLineStart && part.first == UInt8(ascii: ".") { part = part.dropFirst() }
        atLineStart = false
        buffer = []
        return .messageBytes(part)
    }
}
