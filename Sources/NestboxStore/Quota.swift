// Maildir++ quota: `maildirsize` in the user's mail root.
//
// Line 1 holds the limits (`10485760S,1000C`; `0S` means none); every further line is a
// `<bytes> <count>` delta, possibly negative, and the usage is their sum. Deliveries append
// `<size> 1` with O_APPEND in one write and no lock (the format is made for that); removals
// append `-<size> -1`. The file is recalculated from the folders (sum of `S=` or file sizes over
// every new/ and cur/), written to a temporary file and renamed over, when: it is 5120 bytes or
// more, a line does not parse, a total is negative, or the totals say "over quota" while the file
// has more than one data line or is older than 15 minutes. If a directory changed during the
// scan, the scan is done again. A file holding only its limits line (no usage line: limits
// written by hand or by an older tool) is recalculated too: counted as zero, a limit set on a
// full mailbox would never be enforced. Dovecot (quota=maildir) reads its limits from line 1, so
// the limits written here are enforced by Dovecot too. Everything is counted, Trash and \Deleted
// files included, as Dovecot counts; `quota_count: courier` leaves out the Trash folder and
// T-flagged files, as Courier does (Dovecot, which counts them, then disagrees).
//
// A recalculation by a tool (`recalculateLocked`: nestbox-quota -f, limits set) holds every
// folder's dovecot-uidlist.lock from the scan to the rename, the lock under which deliveries
// append their delta and move their file: no delivery can fall between the scan and the new
// file. One made at delivery (the rules above) holds only its own folder's lock, as Maildir++
// allows; its window is what the next recalculation repairs.
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
        bytes.withUnsafeBufferPointer { all in
            guard let (limits, body) = parseLimits(all) else { return nil }
            var size = MaildirSize(limits: limits, usage: QuotaUsage(), dataLines: 0, damaged: false)
            let end = size.addLines(all, from: body)
            size.addLastLine(all, from: end)
            return size
        }
    }

    /// Line 1's limits and where the next line starts (the end when line 1 has no newline).
    static func parseLimits(_ all: UnsafeBufferPointer<UInt8>) -> (QuotaLimits, Int)? {
        guard !all.isEmpty else { return nil }
        let newline = all.firstIndex(of: 10)
        var end = newline ?? all.count
        if end > 0 && all[end - 1] == 13 { end -= 1 }
        guard let limits = QuotaLimits.parse(Substring(String(decoding: UnsafeBufferPointer(rebasing: all[0..<end]), as: UTF8.self))) else {
            return nil
        }
        return (limits, newline.map { $0 + 1 } ?? all.count)
    }

    /// Adds the delta lines that end with a newline in `all[from...]`; returns where the last
    /// of them ends (where a line still being written, or the end, begins).
    mutating func addLines(_ all: UnsafeBufferPointer<UInt8>, from: Int) -> Int {
        var start = from
        var i = from
        while i < all.count {
            if all[i] == 10 {
                addLine(all, start, i)
                start = i + 1
            }
            i += 1
        }
        return start
    }

    /// Adds what follows the last newline, if anything: a last line without its newline.
    mutating func addLastLine(_ all: UnsafeBufferPointer<UInt8>, from: Int) {
        if from < all.count { addLine(all, from, all.count) }
    }

    private mutating func addLine(_ all: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) {
        guard let (b, c) = MaildirSize.parseDelta(all, start, end) else {
            damaged = true
            return
        }
        usage.bytes += b
        usage.messages += c
        dataLines += 1
    }

    /// `<bytes> <count>` with any white space, each possibly negative.
    static func parseDelta(_ line: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> (Int64, Int64)? {
        var numbers: (Int64, Int64) = (0, 0)
        var found = 0
        var i = start
        func isSpace(_ b: UInt8) -> Bool { b == 32 || b == 9 || b == 13 }
        while i < end {
            while i < end && isSpace(line[i]) { i += 1 }
            if i == end { break }
            var negative = false
            if line[i] == UInt8(ascii: "-") { negative = true; i += 1 }
            var value: Int64 = 0
            var digits = 0
            while i < end, line[i] >= 48, line[i] <= 57 {
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(Int64(line[i] - 48))
                if o1 || o2 { return nil }
                value = a
                digits += 1
                i += 1
            }
            if digits == 0 || (i < end && !isSpace(line[i])) { return nil }
            switch found {
            case 0: numbers.0 = negative ? -value : value
            case 1: numbers.1 = negative ? -value : value
            default: return nil
            }
            found += 1
        }
        return found == 2 ? numbers : nil
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

/// What the usage counts (`quota_count`).
public enum QuotaCounting: String, Sendable {
    /// Every message of every folder, as Dovecot counts.
    case dovecot
    /// Not the Trash folder, not T-flagged (\Deleted) files, as Courier counts.
    case courier
}

/// The quota of one user's mail root.
public struct QuotaRoot: Sendable {
    public let root: String
    public let counting: QuotaCounting
    public init(root: String, counting: QuotaCounting = .dovecot) {
        self.root = root
        self.counting = counting
    }
    public var path: String { "\(root)/\(MaildirSize.fileName)" }

    /// What the file says and what the usage is: `usage` is the file's sum, or when the
    /// recalculation rules apply, the usage counted from the folders (nothing is written).
    public struct Status: Equatable, Sendable {
        public var limits: QuotaLimits
        public var recorded: QuotaUsage
        public var usage: QuotaUsage
        /// The rules say the file is to be recalculated (the next delivery will do it).
        public var stale: Bool
    }

    /// The quota as a delivery would see it, read only; nil: no maildirsize (no quota). A limits
    /// line that cannot be read throws (the delivery path logs it and enforces nothing).
    public func status() throws -> Status? {
        guard let bytes = try Files.read(path, limit: 1 << 20) else { return nil }
        guard let parsed = MaildirSize.parse(bytes) else {
            throw NestboxFailure(.dataError, "\(path): line 1: bad limits \"\(Names.printable(String(decoding: bytes.prefix(60), as: UTF8.self)))\"")
        }
        let stale = try needsRecalculation(parsed, fileSize: bytes.count)
        return Status(limits: parsed.limits, recorded: parsed.usage, usage: stale ? try countStable() : parsed.usage, stale: stale)
    }

    /// The Maildir++ rules (see the top of this file).
    func needsRecalculation(_ parsed: MaildirSize, fileSize: Int) throws -> Bool {
        if fileSize >= 5120 || parsed.damaged || parsed.dataLines == 0 || parsed.usage.bytes < 0 || parsed.usage.messages < 0 {
            return true
        }
        guard parsed.isOver(adding: nil) else { return false }
        if parsed.dataLines > 1 { return true }
        return (try Files.status(path)).map { wallSeconds() - Double($0.st_mtim.tv_sec) > 15 * 60 } ?? true
    }

    /// Recalculates under every folder's uidlist lock (see the top of this file), with
    /// `limits` (nil: the file's, none if there is no file or its line 1 cannot be read).
    /// Returns the file's state before (nil: none or unreadable) and after.
    /// With `onlyIfChanged`, a file whose usage is the count and that the rules leave alone is
    /// not written (`after` is then the file as it is).
    @discardableResult
    public func recalculateLocked(limits: QuotaLimits?, options: DotLock.Options,
                                  onlyIfChanged: Bool = false) throws -> (before: MaildirSize?, after: MaildirSize) {
        var locks: [DotLock] = []
        defer { locks.forEach { $0.release() } }
        for dir in try ([root] + folderDirectories()).sorted() {
            let file = UIDListFile(folder: dir, mailRoot: root)
            locks.append(try file.lock(options: options))
        }
        let bytes = try Files.read(path, limit: 1 << 20)
        let before = bytes.flatMap(MaildirSize.parse)
        let counted = try countStable()
        if onlyIfChanged, let before, let bytes, limits == nil || limits == before.limits,
           try !needsRecalculation(before, fileSize: bytes.count), counted == before.usage {
            return (before, before)
        }
        let after = try write(limits: limits ?? before?.limits ?? QuotaLimits(), usage: counted)
        return (before, after)
    }

    /// The usage counted from the folders, read only (no lock, nothing written).
    public func countUsage() throws -> QuotaUsage { try countStable() }

    /// The current state, recalculated first if the Maildir++ rules say so; nil: no quota.
    /// `again`: a delivery's second look (just before it stores, after the one at RCPT), which
    /// may be answered by what this process read last if the file is unchanged.
    public func current(again: Bool = false) throws -> MaildirSize? {
        guard let look = try MaildirSizeCache.shared.read(path, again: again) else { return nil }
        guard let parsed = look.parsed else {
            Log.error("\(path): line 1: bad limits \"\(Names.printable(String(decoding: look.head, as: UTF8.self)))\"; quota not enforced until it is fixed")
            return nil
        }
        guard try needsRecalculation(parsed, fileSize: look.size) else { return parsed }
        if parsed.damaged { Log.warning("\(path): unparsable line; recalculating") }
        return try recalculate(limits: parsed.limits)
    }

    /// Recomputes the usage from the folders and rewrites the file with `limits`.
    @discardableResult
    public func recalculate(limits: QuotaLimits) throws -> MaildirSize {
        try write(limits: limits, usage: try countStable())
    }

    private func write(limits: QuotaLimits, usage: QuotaUsage) throws -> MaildirSize {
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

    /// The usage counted from the folders, counted again (up to 5 times) while a new/ or cur/
    /// changed during the count.
    func countStable() throws -> QuotaUsage {
        var usage = QuotaUsage()
        for _ in 0..<5 {
            let before = try directoryTimes()
            usage = try scan()
            if try directoryTimes() == before { break }
        }
        return usage
    }

    /// The folder directories below the root (not the root itself), not following links.
    func folderDirectories() throws -> [String] {
        try MailRoot.folderDirectories(root, requireCur: false)
    }

    /// Whether a message named `name` in the folder directory `directory` (`.Trash`, or the
    /// root's own name) counts in the usage under `counting`: the rule `scan` applies.
    public static func counts(_ name: MaildirName, inFolderDirectory directory: String, _ counting: QuotaCounting) -> Bool {
        counting == .dovecot || (directory != ".Trash" && !name.has("T"))
    }

    /// The root and the folders that count: with Courier's counting, not Trash.
    private func countedDirectories() throws -> [String] {
        [root] + (try folderDirectories()).filter { counting == .dovecot || Files.baseName($0) != ".Trash" }
    }

    private func directoryTimes() throws -> [Int] {
        var times: [Int] = []
        for d in try countedDirectories() {
            for sub in ["new", "cur"] {
                if let st = try Files.status("\(d)/\(sub)") { times.append(Int(st.st_mtim.tv_sec) * 1_000_000_000 + Int(st.st_mtim.tv_nsec)) }
            }
        }
        return times
    }

    func scan() throws -> QuotaUsage {
        var usage = QuotaUsage()
        for d in try countedDirectories() {
            for sub in ["new", "cur"] {
                let dir = "\(d)/\(sub)"
                // Names read as bytes where they lie (a user may have 100k): `,S=` from the name,
                // else the file's size, stat'ed relative to the directory.
                var name: [UInt8] = []
                try Files.forEachEntry(dir) { cName, count, _, fd in
                    guard cName[0] != 46 else { return }  // dot names are no messages
                    name.removeAll(keepingCapacity: true)
                    name.append(contentsOf: UnsafeRawBufferPointer(start: cName, count: count))
                    let all = Span(0, count)
                    let stem = Span(0, name.firstIndex(of: UInt8(ascii: ":"), in: all) ?? count)
                    if counting == .courier, stem.end < Int32(count), name[Int(stem.end)...].contains(UInt8(ascii: "T")) {
                        // The flags after ":2,", up to any second ",".
                        let info = name[(Int(stem.end) + 1)...]
                        let flags = info.starts(with: [50, 44]) ? info.dropFirst(2) : info
                        if flags.prefix(while: { $0 != 44 }).contains(UInt8(ascii: "T")) { return }
                    }
                    if let size = name.maildirField(UInt8(ascii: "S"), in: stem) {
                        usage.bytes += size
                    } else {
                        var st = stat()
                        guard fstatat(fd, cName, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return }  // removed while we looked
                        usage.bytes += Int64(st.st_size)
                    }
                    usage.messages += 1
                }
            }
        }
        return usage
    }
}

extension Config {
    /// The quota of the mail root `root`, counted as `quota_count` says.
    public func quotaRoot(_ root: String) -> QuotaRoot {
        QuotaRoot(root: root, counting: QuotaCounting(rawValue: quotaCount) ?? .dovecot)
    }
}

/// Limits for mailboxes created later (nestbox-quota --set with -d or --default): one limits
/// line in `.nestbox/quota/default` and in `.nestbox/quota/domain.<domain>`. A new INBOX takes
/// its domain's, else the default, else `autocreate_quota` / `autocreate_quota_messages`.
public struct QuotaDefaults: Sendable {
    public let directory: String

    public init(store: MailStore) { directory = "\(store.internalDirectory)/quota" }

    func path(domain: String?) -> String {
        domain.map { "\(directory)/domain.\($0.lowercased())" } ?? "\(directory)/default"
    }

    /// The stored limits of `domain` (nil: the default's).
    public func stored(domain: String?) throws -> QuotaLimits? {
        let p = path(domain: domain)
        guard let bytes = try Files.read(p, limit: 4096) else { return nil }
        let line = String(decoding: bytes, as: UTF8.self).split(separator: "\n").first ?? ""
        guard let limits = QuotaLimits.parse(line) else {
            throw NestboxFailure(.config, "\(p): line 1: bad limits \"\(Names.printable(String(line.prefix(60))))\"")
        }
        return limits
    }

    /// What a new INBOX of `domain` gets: its domain's stored limits, else the default's.
    public func limits(domain: String?) throws -> QuotaLimits? {
        if let d = domain, let l = try stored(domain: d) { return l }
        return try stored(domain: nil)
    }

    /// Stores `limits` for `domain` (nil: the default); nil limits remove the entry.
    public func set(_ limits: QuotaLimits?, domain: String?) throws {
        let p = path(domain: domain)
        guard let limits else {
            if unlink(p) != 0 && errno != ENOENT { throw NestboxFailure.system("unlink", p) }
            return
        }
        try Files.makeDirectory(directory)
        try Files.replace(p, with: Array("\(limits.line)\n".utf8))
    }
}

/// The maildirsize files this process read last, by path: what each look found, and the sum of
/// the whole lines read so far. A delivery looks at its quota at RCPT and again just before it
/// stores, and every look of the same mailbox reads only what was appended since the last one:
/// between recalculations the file only grows (deliveries and removals append one line with
/// O_APPEND), and a recalculation renames a new file over it (another inode). So when the file
/// is still the same inode, at least as long, and still holds the same bytes just before where
/// the last read ended and the same first bytes (another file under a reused inode number
/// differs there), only the rest is read and parsed; anything else reads it all. A look is
/// the file as fstat saw it: what is appended meanwhile is read by the next one. (On a
/// mailbox near the 5120-byte recalculation threshold this is one line instead of 700.)
/// A second look (`again`) whose lstat finds the file exactly as last read (device, inode,
/// size, mtime, ctime) is answered without reading. A first look always opens the file: on NFS
/// an open revalidates what lstat may take from a cache of attributes.
final class MaildirSizeCache: @unchecked Sendable {
    static let shared = MaildirSizeCache()

    /// One look at a maildirsize: its size, its parse (nil when line 1 does not parse), and its
    /// first bytes (for the message that says so).
    struct Look {
        var size: Int
        var parsed: MaildirSize?
        var head: [UInt8]
    }

    private struct Entry {
        /// Of the file as last read (nil when less than fstat's size could be read).
        var identity: [Int]?
        var look: Look
        var device: Int
        var inode: Int
        /// Where the last whole line read ends (0: read it all next time), the bytes just
        /// before it, and the parse of everything up to it.
        var end: Int
        var tail: [UInt8]
        var lines: MaildirSize?
    }

    /// How many bytes before the end of the last read must be unchanged for an append-only read.
    static let tailLength = 64
    static let limit = 1 << 20

    private var mutex = pthread_mutex_t()
    private var entries: [String: Entry] = [:]

    init() { pthread_mutex_init(&mutex, nil) }

    private static func identity(_ st: stat) -> [Int] {
        [Int(st.st_dev), Int(st.st_ino), Int(st.st_size), st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
         st.st_ctim.tv_sec, st.st_ctim.tv_nsec]
    }

    private func entry(_ path: String) -> Entry? {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return entries[path]
    }

    private func keep(_ path: String, _ entry: Entry?) {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        if entry != nil && entries[path] == nil && entries.count >= 4096 { entries.removeAll(keepingCapacity: true) }
        entries[path] = entry
    }

    /// The file as it is now; nil: no file.
    func read(_ path: String, again: Bool) throws -> Look? {
        var st = stat()
        if again, lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG,
           let known = entry(path), known.identity == MaildirSizeCache.identity(st) {
            return known.look
        }
        guard let fd = try Files.openForReading(path) else {
            keep(path, nil)
            return nil
        }
        defer { close(fd) }
        guard fstat(fd, &st) == 0 else { throw NestboxFailure.system("stat", path) }
        let size = Int(st.st_size)
        // The look is the file as fstat saw it: anything appended after is read next time.
        guard size <= MaildirSizeCache.limit else {
            throw NestboxFailure(.temporary, "read \(path): file larger than \(MaildirSizeCache.limit) bytes")
        }
        if let known = entry(path), known.end > 0, let lines = known.lines, known.device == Int(st.st_dev),
           known.inode == Int(st.st_ino), size >= known.end {
            let from = known.end - known.tail.count
            // The first bytes too (line 1 and the first usage line): a file made by a later
            // recalculation under a reused inode number, long enough and with the same bytes
            // before `end` (same-sized messages make equal lines), still differs there.
            let head = from > 0 ? try Files.pread(fd, count: known.look.head.count, offset: 0, path: path) : []
            let bytes = try Files.pread(fd, count: size - from, offset: from, path: path)
            if bytes.starts(with: known.tail), from == 0 || head == known.look.head {
                return bytes.withUnsafeBufferPointer { all in
                    var whole = lines
                    let end = whole.addLines(all, from: known.tail.count)
                    var parsed = whole
                    parsed.addLastLine(all, from: end)
                    let look = Look(size: from + all.count, parsed: parsed, head: known.look.head)
                    keep(path, Entry(identity: look.size == size ? MaildirSizeCache.identity(st) : nil, look: look,
                                     device: known.device, inode: known.inode, end: from + end,
                                     tail: Array(all[max(0, end - MaildirSizeCache.tailLength)..<end]),
                                     lines: whole))
                    return look
                }
            }
        }
        let bytes = try Files.pread(fd, count: size, offset: 0, path: path)
        return bytes.withUnsafeBufferPointer { all in
            var look = Look(size: all.count, parsed: nil, head: Array(all.prefix(60)))
            var entry = Entry(identity: look.size == size ? MaildirSizeCache.identity(st) : nil, look: look,
                              device: Int(st.st_dev), inode: Int(st.st_ino), end: 0, tail: [], lines: nil)
            if let (limits, body) = MaildirSize.parseLimits(all) {
                var whole = MaildirSize(limits: limits, usage: QuotaUsage(), dataLines: 0, damaged: false)
                let end = whole.addLines(all, from: body)
                var parsed = whole
                parsed.addLastLine(all, from: end)
                look.parsed = parsed
                entry.look = look
                // Read from the end next time only when line 1 has its newline.
                if body > 0 && all[body - 1] == 10 {
                    (entry.end, entry.tail, entry.lines) = (end, Array(all[max(0, end - MaildirSizeCache.tailLength)..<end]), whole)
                }
            }
            keep(path, entry)
            return look
        }
    }
}
