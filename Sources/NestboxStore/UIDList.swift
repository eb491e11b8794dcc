// dovecot-uidlist: the map from Maildir file to IMAP UID, one per folder.
//
// Why it is handled the way it is:
// - Dovecot declares the file corrupt, deletes it and renumbers every message (clients then
//   download the whole mailbox again) if V or N is 0, N went down for the same V, UIDs are not
//   strictly increasing, or a name is empty or has a `/`. So: N is never lowered, a V is never
//   reused with another mapping, and records are only ever appended in ascending UID order.
// - Readers take no lock; writers hold `dovecot-uidlist.lock` (DotLock, Dovecot's rules).
// - An append writes whole lines at the end (a failed write is cut off again); the header is
//   not rewritten (the effective next UID is max(N, last UID + 1), which is also how Dovecot
//   reads it). The group commit fdatasyncs after releasing the lock (GroupCommit.swift).
// - A rewrite (a torn last line, a new list, a UIDListSession's rewrite or removal) writes
//   `dovecot-uidlist.tmp` beside the list (a fixed name, as Dovecot's: only the lock holder
//   writes it), fdatasyncs it and renames it over the list (`replaceLocked`), so that Dovecot,
//   which caches by inode, size and mtime, sees a new file, and a crash leaves the old list or
//   the new one.
// - Appending only needs the header line and the last records, so it reads the first and the
//   last few KiB of the file: delivery stays O(1) as a folder grows to 100k messages. A stem
//   the list already names is never given a second record (the last records are searched; a
//   hit falls back to a full rewrite, which keeps the existing record).
// - Records name files by their stem (the part before `:`); old files with full names are
//   matched on that part too.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public struct UIDList: Equatable, Sendable {
    public struct Header: Equatable, Sendable {
        public var version: Int = 3
        public var uidValidity: UInt32
        public var nextUID: UInt32
        public var guid: String
        /// Other `<letter><value>` tokens, kept verbatim.
        public var extra: [String] = []

        public init(uidValidity: UInt32, nextUID: UInt32, guid: String, extra: [String] = []) {
            self.uidValidity = uidValidity
            self.nextUID = nextUID
            self.guid = guid
            self.extra = extra
        }

        public var line: String {
            var tokens = ["3", "V\(uidValidity)", "N\(nextUID)"]
            if !guid.isEmpty { tokens.append("G\(guid)") }
            tokens += extra
            return tokens.joined(separator: " ")
        }
    }

    public struct Record: Equatable, Sendable {
        public var uid: UInt32
        /// Extension tokens (`S1234`, `W1260`, ...), kept verbatim.
        public var extensions: [String]
        /// The file name as recorded; `stem` is what to match on.
        public var name: String
        /// The name before any `:` (read from the bytes: it runs for every record of a scan).
        public var stem: String {
            guard let colon = name.utf8.firstIndex(of: UInt8(ascii: ":")) else { return name }
            return String(name[..<colon])
        }

        public init(uid: UInt32, extensions: [String] = [], name: String) {
            self.uid = uid
            self.extensions = extensions
            self.name = name
        }

        public var line: String {
            (["\(uid)"] + extensions).joined(separator: " ") + " :" + name
        }
    }

    public var header: Header
    public var records: [Record]

    public init(header: Header, records: [Record] = []) {
        self.header = header
        self.records = records
    }

    /// max(N, last UID + 1).
    public var nextUID: UInt32 {
        max(header.nextUID, (records.last?.uid ?? 0) + 1)
    }

    public struct Corrupt: Error, CustomStringConvertible, Sendable {
        public let line: Int
        public let reason: String
        public var description: String { "line \(line): \(reason)" }
    }

    // MARK: Parsing

    public static func parseHeader(_ line: Substring) throws -> Header {
        let tokens = line.split(separator: " ", omittingEmptySubsequences: true)
        guard let version = tokens.first.flatMap({ Int($0) }) else { throw Corrupt(line: 1, reason: "no version") }
        switch version {
        case 1:
            // "1 <uidvalidity> <nextuid>"
            guard tokens.count >= 3, let v = UInt32(tokens[1]), let n = UInt32(tokens[2]) else {
                throw Corrupt(line: 1, reason: "bad version 1 header")
            }
            var h = Header(uidValidity: v, nextUID: n, guid: "")
            h.version = 1
            try h.validate()
            return h
        case 2, 3:
            var v: UInt32? = nil, n: UInt32? = nil, g = ""
            var extra: [String] = []
            for t in tokens.dropFirst() {
                switch t.first {
                case "V": v = UInt32(t.dropFirst())
                case "N": n = UInt32(t.dropFirst())
                case "G": g = String(t.dropFirst())
                default: extra.append(String(t))
                }
            }
            guard let v, let n else { throw Corrupt(line: 1, reason: "header without V or N") }
            var h = Header(uidValidity: v, nextUID: n, guid: g, extra: extra)
            h.version = version
            try h.validate()
            return h
        default:
            throw Corrupt(line: 1, reason: "unknown version \(version)")
        }
    }

    public static func parseRecord(_ line: Substring, version: Int, lineNumber: Int) throws -> Record {
        if version == 1 {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, let uid = UInt32(parts[0]) else { throw Corrupt(line: lineNumber, reason: "bad record") }
            return try Record(uid: uid, name: String(parts[1])).validated(lineNumber)
        }
        guard let colon = line.utf8.firstIndex(of: UInt8(ascii: ":")) else { throw Corrupt(line: lineNumber, reason: "record without :") }
        let before = line[..<colon].split(separator: " ")
        guard let first = before.first, let uid = UInt32(first) else { throw Corrupt(line: lineNumber, reason: "bad uid") }
        let name = String(line[line.index(after: colon)...])
        return try Record(uid: uid, extensions: before.dropFirst().map(String.init), name: name).validated(lineNumber)
    }

    /// Parses a whole file. Throws `Corrupt` for anything Dovecot would also reject.
    public static func parse(_ bytes: [UInt8]) throws -> UIDList {
        // Lines split as bytes (at LF, a CR before it dropped): splitting the text by Character
        // would walk the grapheme clusters of the whole file, the most of a purge's CPU time.
        var lines: [Substring] = []
        var start = 0
        while true {
            let end = bytes[start...].firstIndex(of: 10) ?? bytes.endIndex
            let stop = end > start && bytes[end - 1] == 13 ? end - 1 : end
            lines.append(Substring(String(decoding: bytes[start..<stop], as: UTF8.self)))
            if end == bytes.endIndex { break }
            start = end + 1
        }
        if lines.last == "" { lines.removeLast() }
        guard let first = lines.first else { throw Corrupt(line: 1, reason: "empty file") }
        let header = try parseHeader(first)
        var records: [Record] = []
        records.reserveCapacity(lines.count)
        var number = 1
        for line in lines.dropFirst() {
            number += 1
            if line.isEmpty { continue }
            let r = try parseRecord(line, version: header.version, lineNumber: number)
            if let last = records.last, r.uid <= last.uid {
                throw Corrupt(line: number, reason: "uid \(r.uid) not above \(last.uid)")
            }
            records.append(r)
        }
        return UIDList(header: header, records: records)
    }

    public func serialized() -> [UInt8] {
        var out = header.line + "\n"
        for r in records { out += r.line + "\n" }
        return Array(out.utf8)
    }

    /// UID of each recorded stem.
    public func uidsByStem() -> [String: UInt32] {
        var map: [String: UInt32] = [:]
        map.reserveCapacity(records.count)
        for r in records { map[r.stem] = r.uid }
        return map
    }
}

extension UIDList.Header {
    func validate() throws {
        if uidValidity == 0 { throw UIDList.Corrupt(line: 1, reason: "uidvalidity is 0") }
        if nextUID == 0 { throw UIDList.Corrupt(line: 1, reason: "next uid is 0") }
    }
}

extension UIDList.Record {
    func validated(_ lineNumber: Int) throws -> UIDList.Record {
        if uid == 0 || uid == UInt32.max { throw UIDList.Corrupt(line: lineNumber, reason: "uid \(uid) out of range") }
        if name.isEmpty || name.utf8.contains(UInt8(ascii: "/")) { throw UIDList.Corrupt(line: lineNumber, reason: "bad file name") }
        return self
    }
}

/// The uidlist of one folder on disk: reading, appending under the lock, rewriting.
public struct UIDListFile: Sendable {
    public static let fileName = "dovecot-uidlist"
    public let folder: String
    /// The user's mail root, where `dovecot-uidvalidity` lives.
    public let mailRoot: String

    public init(folder: String, mailRoot: String) {
        self.folder = folder
        self.mailRoot = mailRoot
    }

    public var path: String { "\(folder)/\(UIDListFile.fileName)" }
    public var lockPath: String { "\(path).lock" }

    /// Reads the whole list without a lock (as Dovecot's readers do); nil if there is none.
    public func read() throws -> UIDList? {
        guard let bytes = try Files.read(path, limit: 1 << 30) else { return nil }
        do {
            return try UIDList.parse(bytes)
        } catch let corrupt as UIDList.Corrupt {
            throw NestboxFailure(.temporary, "\(path): \(corrupt)")
        }
    }

    public func lock(options: DotLock.Options = DotLock.Options()) throws -> DotLock {
        try DotLock.acquire(lockPath, watching: [path], options: options)
    }

    /// Gives `stems` the next UIDs, in order, appending them to the list. The caller holds the
    /// lock (`lock()`). Creates the list with a fresh UIDVALIDITY if there is none.
    /// With `keepOpen`, the new lines are written but not fdatasynced, and the list's descriptor
    /// is handed to `keepOpen` for the caller to fdatasync after releasing the lock.
    /// `uidValidityLock` is how long to wait for `dovecot-uidvalidity.lock` when the list is new.
    public func appendLocked(_ stems: [String], prepared: PreparedAppend? = nil, keepOpen: ((Int32) -> Void)? = nil,
                             uidValidityLock: DotLock.Options = DotLock.Options()) throws -> [UInt32] {
        guard !stems.isEmpty else { return [] }
        let state = try prepared ?? prepareAppend()
        guard state.fd >= 0 else {
            let header = UIDList.Header(uidValidity: try UIDValidity.next(mailRoot: mailRoot, options: uidValidityLock), nextUID: 1,
                                        guid: hexString(randomBytes(16)))
            var list = UIDList(header: header)
            let uids = list.appending(stems)
            try replaceLocked(list.serialized())
            return uids
        }
        // The stems are new files moved into new/ under this lock, so no record names them yet;
        // the records read for the last UID are checked all the same (a retry of a round).
        guard let (header, lastUID, tail) = state.ends, !stems.contains(where: { UIDListFile.names($0, in: tail) }) else {
            // A torn last line or a header we cannot read from the ends alone (or a name already
            // there): the whole list, rewritten keeping every mapping it holds.
            return try rewriteAppending(stems, list: state.whole, uidValidityLock: uidValidityLock)
        }
        var next = max(header.nextUID, lastUID + 1)
        var text = ""
        var uids: [UInt32] = []
        for stem in stems {
            guard next < UInt32.max - 1 else { throw NestboxFailure(.temporary, "\(path): UIDs exhausted") }
            uids.append(next)
            text += "\(next) :\(stem)\n"
            next += 1
        }
        let fd = state.fd
        do {
            guard lseek(fd, off_t(state.size), SEEK_SET) >= 0 else { throw NestboxFailure.system("lseek", path) }
            try Files.writeAll(fd, Array(text.utf8), path: path)
            if keepOpen == nil { try Files.fdatasync(fd, path: path) }
        } catch {
            _ = ftruncate(fd, off_t(state.size))  // never leave a torn record behind
            throw error
        }
        if let keepOpen {
            state.fd = -1  // handed over
            keepOpen(fd)
        }
        return uids
    }

    /// The list as an append finds it, read once with the lock held: the open file and its
    /// ends (a healthy list), or the whole list parsed (a torn last line, a header the ends do
    /// not show). The group commit prepares before it moves any file into new/, so that a list
    /// too damaged to number them defers the round (naming nestbox-reconstruct) instead of
    /// leaving files unnumbered; the append then uses what was read.
    public final class PreparedAppend {
        fileprivate var fd: Int32 = -1
        fileprivate var size = 0
        fileprivate var ends: (UIDList.Header, UInt32, [UInt8])? = nil
        fileprivate var whole: UIDList? = nil
        deinit { if fd >= 0 { close(fd) } }
    }

    /// Reads the list for an append (see PreparedAppend); throws when it is damaged beyond a
    /// torn last line. The caller holds the lock.
    public func prepareAppend() throws -> PreparedAppend {
        let state = PreparedAppend()
        let fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return state }
            throw NestboxFailure.system("open", path)
        }
        state.fd = fd
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw NestboxFailure.system("fstat", path) }
        state.size = Int(st.st_size)
        state.ends = try readEnds(fd, size: state.size)
        if state.ends == nil { state.whole = try readForRewrite(warn: true) }
        return state
    }

    /// Header, last UID and the last few KiB of records, from the first and the last few KiB;
    /// nil when the file does not end with a complete record line.
    private func readEnds(_ fd: Int32, size: Int) throws -> (UIDList.Header, UInt32, [UInt8])? {
        guard size > 0 else { return nil }
        let head = try Files.pread(fd, count: min(size, 4096), offset: 0, path: path)
        guard let nl = head.firstIndex(of: 10) else { return nil }
        let header: UIDList.Header
        do {
            header = try UIDList.parseHeader(Substring(String(decoding: head[..<nl], as: UTF8.self)))
        } catch {
            throw NestboxFailure(.temporary, "\(path): \(error); run nestbox-reconstruct")
        }
        guard header.version >= 2 else { return nil }
        if nl == size - 1 { return (header, 0, []) }
        let tailStart = max(nl + 1, size - 4096)
        let tail = try Files.pread(fd, count: size - tailStart, offset: tailStart, path: path)
        guard tail.last == 10 else { return nil }
        let body = tail.dropLast()
        let lineStart = body.lastIndex(of: 10).map { $0 + 1 } ?? body.startIndex
        if lineStart == body.startIndex && tailStart != nl + 1 { return nil }  // line longer than the window
        let line = Substring(String(decoding: body[lineStart...], as: UTF8.self))
        guard let record = try? UIDList.parseRecord(line, version: header.version, lineNumber: 0) else { return nil }
        return (header, record.uid, tail)
    }

    /// Whether `records` (whole lines) hold a record for `stem`: `:<stem>` followed by the end
    /// of the line or by `:` (a name with flags). A byte search: it runs on every append.
    static func names(_ stem: String, in records: [UInt8]) -> Bool {
        let needle = Array((":" + stem).utf8)
        guard !records.isEmpty else { return false }
        return records.withUnsafeBufferPointer { hay in
            needle.withUnsafeBufferPointer { pat in
                let last = hay.count - pat.count
                var i = 0
                while i <= last {
                    if hay[i] == pat[0] {
                        var j = 1
                        while j < pat.count && hay[i + j] == pat[j] { j += 1 }
                        if j == pat.count {
                            let after = i + j
                            if after == hay.count || hay[after] == 10 || hay[after] == UInt8(ascii: ":") { return true }
                        }
                    }
                    i += 1
                }
                return false
            }
        }
    }

    private func rewriteAppending(_ stems: [String], list parsed: UIDList?, uidValidityLock: DotLock.Options) throws -> [UInt32] {
        guard var list = try parsed ?? readForRewrite(warn: true) else {
            return try appendLocked(stems, uidValidityLock: uidValidityLock)
        }
        if list.header.version < 3 { list.header.version = 3 }
        let uids = list.appending(stems)
        try replaceLocked(list.serialized())
        return uids
    }

    /// The whole list without a torn last line (a write cut short: dropped, as Dovecot does);
    /// nil when there is none. Anything else that does not parse is a temporary failure naming
    /// nestbox-reconstruct.
    private func readForRewrite(warn: Bool) throws -> UIDList? {
        guard let bytes = try Files.read(path, limit: 1 << 30) else { return nil }
        var lines = bytes.split(separator: 10, omittingEmptySubsequences: false).map { Array($0) }
        if bytes.last != 10, !lines.isEmpty {
            if warn { Log.warning("\(path): dropping torn last line \"\(Names.printable(String(decoding: lines.last!, as: UTF8.self)))\"") }
            lines.removeLast()
        }
        do {
            return try UIDList.parse(Array(lines.joined(separator: [10])) + [10])
        } catch {
            throw NestboxFailure(.temporary, "\(path): \(error); run nestbox-reconstruct")
        }
    }

    /// Replaces the list with `bytes`, the caller holding the lock: `dovecot-uidlist.tmp` (a
    /// fixed name: only the lock holder writes it), fsync, rename over the list (a new inode,
    /// which Dovecot's cache notices), fsync of the folder.
    func replaceLocked(_ bytes: [UInt8]) throws {
        try Files.replace(path, with: bytes, temporary: "\(path).tmp")
    }
}

extension UIDList {
    /// Adds records for `stems` at the next UIDs and returns them. A stem the list already
    /// holds keeps its record and UID: a file is never numbered twice.
    public mutating func appending(_ stems: [String]) -> [UInt32] {
        var known = records.isEmpty ? [:] : uidsByStem()
        var next = nextUID
        var uids: [UInt32] = []
        for stem in stems {
            if let uid = known[stem] {
                uids.append(uid)
                continue
            }
            records.append(Record(uid: next, name: stem))
            known[stem] = next
            uids.append(next)
            next += 1
        }
        return uids
    }
}

/// New UIDVALIDITY values, shared with Dovecot: `dovecot-uidvalidity` in the user's mail root
/// holds the last value given out as `%08x`, beside an empty mode-0444 marker file
/// `dovecot-uidvalidity.<value>`. The first value is the current time; each new folder gets
/// the next one.
public enum UIDValidity {
    public static func next(mailRoot: String, options: DotLock.Options = DotLock.Options()) throws -> UInt32 {
        let path = "\(mailRoot)/dovecot-uidvalidity"
        let lock = try DotLock.acquire("\(path).lock", watching: [path], options: options)
        defer { lock.release() }
        var value = UInt32(truncatingIfNeeded: Int(wallSeconds()))
        var old: UInt32? = nil
        if let bytes = try Files.read(path, limit: 64) {
            let text = String(decoding: bytes, as: UTF8.self).trimmingSpaces()
            if let stored = UInt32(text, radix: 16), stored != 0 {
                old = stored
                value = stored == UInt32.max ? 1 : stored + 1
            }
        }
        if value == 0 { value = 1 }
        let hex = hexUID(value)
        try Files.replace(path, with: Array(hex.utf8))
        let marker = "\(path).\(hex)"
        let fd = open(marker, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o444)
        if fd >= 0 { close(fd) }
        if let old, old != value { Files.removeQuietly("\(path).\(hexUID(old))") }
        return value
    }

    static func hexUID(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, 8 - s.count)) + s
    }
}
