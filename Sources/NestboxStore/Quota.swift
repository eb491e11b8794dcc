// Maildir++ quota: `maildirsize` in the user's mail root.
//
// Line 1 holds the limits (`10485760S,1000C`; `0S` means none); every further line is a
// `<bytes> <count>` delta, possibly negative, and the usage is their sum. Deliveries append
// `<size> 1` with O_APPEND in one write and no lock (the format is made for that); removals
// append `-<size> -1`. The file is recalculated from the folders (sum of `S=` or file sizes over
// every new/ and cur/), written to a temporary file and renamed over, when: it is 5120 bytes or
// more, a line does not parse, a total is negative, or the totals say "over quota" while the file
// has more than one data line or is older than 15 minutes. If a directory changed during the
// scan, the scan is done again. Dovecot (quota=maildir) reads its limits from line 1, so the
// limits written here are enforced by Dovecot too. Everything is counted, Trash and \Deleted
// files included, as Dovecot counts.
//
// No maildirsize file means no quota for that user.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public struct QuotaLimits: Equatable, Sendable {
    /// nil or 0: no limit.
    public var bytes: Int64?
    public var messages: Int64?

    public init(bytes: Int64? = nil, messages: Int64? = nil) {
        self.bytes = bytes
        self.messages = messages
    }

    public var line: String {
        var parts: [String] = ["\(bytes ?? 0)S"]
        if let messages, messages > 0 { parts.append("\(messages)C") }
        return parts.joined(separator: ",")
    }

    public static func parse(_ line: Substring) -> QuotaLimits? {
        var limits = QuotaLimits()
        let trimmed = line.trimmingSpaces()
        if trimmed.isEmpty { return nil }
        for token in trimmed.split(separator: ",") {
            let t = token.trimmingSpaces()
            guard let kind = t.last, let value = Int64(t.dropLast()), value >= 0 else { return nil }
            switch kind {
            case "S": limits.bytes = value
            case "C": limits.messages = value
            default: return nil
            }
        }
        return limits
    }
}

public struct QuotaUsage: Equatable, Sendable {
    public var bytes: Int64 = 0
    public var messages: Int64 = 0
    public init(bytes: Int64 = 0, messages: Int64 = 0) {
        self.bytes = bytes
        self.messages = messages
    }
}

public struct MaildirSize: Equatable, Sendable {
    public var limits: QuotaLimits
    public var usage: QuotaUsage
    public var dataLines: Int
    /// A line (after line 1) did not parse.
    public var damaged: Bool

    public static let fileName = "maildirsize"

    /// nil when line 1 is not a limits line. Parsed from the bytes (it runs on every delivery).
    public static func parse(_ bytes: [UInt8]) -> MaildirSize? {
        var lines = bytes.split(separator: 10, omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        guard let first = lines.first else { return nil }
        var firstLine = first
        if firstLine.last == 13 { firstLine = firstLine.dropLast() }
        guard let limits = QuotaLimits.parse(Substring(String(decoding: firstLine, as: UTF8.self))) else { return nil }
        var usage = QuotaUsage()
        var count = 0
        var damaged = false
        for line in lines.dropFirst() {
            guard let (b, c) = parseDelta(line) else {
                damaged = true
                continue
            }
            usage.bytes += b
            usage.messages += c
            count += 1
        }
        return MaildirSize(limits: limits, usage: usage, dataLines: count, damaged: damaged)
    }

    /// `<bytes> <count>` with any white space, each possibly negative.
    static func parseDelta(_ line: ArraySlice<UInt8>) -> (Int64, Int64)? {
        var numbers: [Int64] = []
        var i = line.startIndex
        func isSpace(_ b: UInt8) -> Bool { b == 32 || b == 9 || b == 13 }
        while i < line.endIndex {
            while i < line.endIndex && isSpace(line[i]) { i += 1 }
            if i == line.endIndex { break }
            var negative = false
            if line[i] == UInt8(ascii: "-") { negative = true; i += 1 }
            var value: Int64 = 0
            var digits = 0
            while i < line.endIndex, line[i] >= 48, line[i] <= 57 {
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(Int64(line[i] - 48))
                if o1 || o2 { return nil }
                value = a
                digits += 1
                i += 1
            }
            if digits == 0 || (i < line.endIndex && !isSpace(line[i])) { return nil }
            numbers.append(negative ? -value : value)
        }
        return numbers.count == 2 ? (numbers[0], numbers[1]) : nil
    }

    /// Over quota already (non-strict), or would be with `incoming` added (strict).
    public func isOver(adding incoming: QuotaUsage?) -> Bool {
        let add = incoming ?? QuotaUsage()
        if let limit = limits.bytes, limit > 0 {
            if incoming == nil ? usage.bytes >= limit : usage.bytes + add.bytes > limit { return true }
        }
        if let limit = limits.messages, limit > 0 {
            if incoming == nil ? usage.messages >= limit : usage.messages + add.messages > limit { return true }
        }
        return false
    }
}

/// The quota of one user's mail root.
public struct QuotaRoot: Sendable {
    public let root: String
    public init(root: String) { self.root = root }
    public var path: String { "\(root)/\(MaildirSize.fileName)" }

    /// The current state, recalculated first if the Maildir++ rules say so; nil: no quota.
    public func current() throws -> MaildirSize? {
        guard let bytes = try Files.read(path, limit: 1 << 20) else { return nil }
        guard let parsed = MaildirSize.parse(bytes) else {
            Log.error("\(path): line 1: bad limits \"\(Names.printable(String(decoding: bytes.prefix(60), as: UTF8.self)))\"; quota not enforced until it is fixed")
            return nil
        }
        var recalc = bytes.count >= 5120 || parsed.damaged || parsed.usage.bytes < 0 || parsed.usage.messages < 0
        if !recalc && parsed.isOver(adding: nil) {
            let old = (try Files.status(path)).map { wallSeconds() - Double($0.st_mtim.tv_sec) > 15 * 60 } ?? true
            recalc = parsed.dataLines > 1 || old
        }
        guard recalc else { return parsed }
        if parsed.damaged { Log.warning("\(path): unparsable line; recalculating") }
        return try recalculate(limits: parsed.limits)
    }

    /// Recomputes the usage from the folders and rewrites the file with `limits`.
    @discardableResult
    public func recalculate(limits: QuotaLimits) throws -> MaildirSize {
        var usage = QuotaUsage()
        for _ in 0..<5 {
            let before = try directoryTimes()
            usage = try scan()
            if try directoryTimes() == before { break }
        }
        let text = "\(limits.line)\n\(usage.bytes) \(usage.messages)\n"
        try Files.replace(path, with: Array(text.utf8))
        return MaildirSize(limits: limits, usage: usage, dataLines: 1, damaged: false)
    }

    /// Sets new limits, keeping the usage (recalculated).
    public func setLimits(_ limits: QuotaLimits) throws {
        try recalculate(limits: limits)
    }

    /// Appends a delta in one O_APPEND write. Missing file: nothing to do (no quota).
    public func append(bytes: Int64, messages: Int64) throws {
        let fd = open(path, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return }
            throw NestboxFailure.system("open", path)
        }
        defer { close(fd) }
        try Files.writeAll(fd, Array("\(bytes) \(messages)\n".utf8), path: path)
    }

    private func folderDirectories() throws -> [String] {
        [root] + (try MailRoot.folderDirectories(root, requireCur: false))
    }

    private func directoryTimes() throws -> [Int] {
        var times: [Int] = []
        for d in try folderDirectories() {
            for sub in ["new", "cur"] {
                if let st = try Files.status("\(d)/\(sub)") { times.append(Int(st.st_mtim.tv_sec) * 1_000_000_000 + Int(st.st_mtim.tv_nsec)) }
            }
        }
        return times
    }

    func scan() throws -> QuotaUsage {
        var usage = QuotaUsage()
        for d in try folderDirectories() {
            for sub in ["new", "cur"] {
                let dir = "\(d)/\(sub)"
                for name in try Files.list(dir) ?? [] where MaildirName.isMessageName(name) {
                    if let s = MaildirName(name).size {
                        usage.bytes += s
                    } else if let st = try Files.status("\(dir)/\(name)") {
                        usage.bytes += Int64(st.st_size)
                    } else {
                        continue  // removed while we looked
                    }
                    usage.messages += 1
                }
            }
        }
        return usage
    }
}
