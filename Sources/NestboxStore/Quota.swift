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
        guard let (bytes, parsed) = try MaildirSizeCache.shared.read(path, again: again) else { return nil }
        guard let parsed else {
            Log.error("\(path): line 1: bad limits \"\(Names.printable(String(decoding: bytes.prefix(60), as: UTF8.self)))\"; quota not enforced until it is fixed")
            return nil
        }
        guard try needsRecalculation(parsed, fileSize: bytes.count) else { return parsed }
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

/// The maildirsize files this process read last, by path, parsed, with the identity of what was
/// read (device, inode, size, mtime, ctime). A delivery checks its quota at RCPT and again just
/// before it stores: unchanged in between (no delta appended, not rewritten by rename), the
/// second look is one lstat instead of an open, a read and a parse. Any append changes the
/// size; a recalculation renames a new file over (another inode). A first look always reads
/// the file: on NFS an open revalidates what lstat may take from a cache of attributes.
final class MaildirSizeCache: @unchecked Sendable {
    static let shared = MaildirSizeCache()

    private struct Entry {
        var identity: [Int]
        var bytes: [UInt8]
        var parsed: MaildirSize?
    }

    private var mutex = pthread_mutex_t()
    private var entries: [String: Entry] = [:]

    init() { pthread_mutex_init(&mutex, nil) }

    private static func identity(_ st: stat) -> [Int] {
        [Int(st.st_dev), Int(st.st_ino), Int(st.st_size), st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
         st.st_ctim.tv_sec, st.st_ctim.tv_nsec]
    }

    /// The file's bytes and their parse (nil when line 1 does not parse); nil: no file.
    func read(_ path: String, again: Bool) throws -> ([UInt8], MaildirSize?)? {
        var st = stat()
        let looked = lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
        if looked && again {
            pthread_mutex_lock(&mutex)
            let hit = entries[path].flatMap { $0.identity == MaildirSizeCache.identity(st) ? $0 : nil }
            pthread_mutex_unlock(&mutex)
            if let hit { return (hit.bytes, hit.parsed) }
        }
        let bytes = try Files.read(path, limit: 1 << 20)
        let parsed = bytes.flatMap(MaildirSize.parse)
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        // Kept only when what was read is what was looked at (nothing appended in between).
        if let bytes, looked, bytes.count == Int(st.st_size) {
            if entries.count >= 4096 { entries.removeAll(keepingCapacity: true) }
            entries[path] = Entry(identity: MaildirSizeCache.identity(st), bytes: bytes, parsed: parsed)
        } else {
            entries[path] = nil
        }
        return bytes.map { ($0, parsed) }
    }
}
