// Reconstruct: finding every way a folder's files and its dovecot-uidlist disagree, and repairing
// each one without renumbering a message that can keep its UID.
//
// Why it works the way it does:
// - Dovecot's answer to a damaged list is to delete it and renumber everything; every IMAP client
//   then downloads the whole folder again. So the list is read here line by line, leniently (the
//   strict parser stops at the first bad line): every readable `uid -> stem` record whose file
//   still exists is kept, with the UIDVALIDITY and the GUID of the header when they can be read.
// - N never goes down: the new N is above the old N (when readable) and above every UID seen in
//   any readable record, kept or not (and the UID of a torn last line), so no UID is ever given
//   twice under one UIDVALIDITY. An N at or below the last record is not damage: it is how the
//   store appends (the header is never rewritten; the effective next UID is max(N, last + 1)).
//   Files with no record are numbered above that, in Dovecot's order (Folder.dovecotOrder).
// - Two records for one stem: the lower UID is kept. One UID for two stems: the first record is
//   kept, the other file is numbered again. Two files with one base (Dovecot keys messages by
//   base): the one with the record (or the first) keeps it, the other gets a fresh base.
// - A new UIDVALIDITY is taken (UIDValidity.next) only when the header's cannot be read, nor the
//   one in Dovecot's own `dovecot.index` header; that is reported loudly (`newUIDValidity`).
// - Everything runs under the folder's uidlist session, the lock Dovecot and the deliveries
//   take, so it can run while mail is delivered and served. The list is written as a whole,
//   through `dovecot-uidlist.tmp` and a rename (UIDListFile.replaceLocked); not through the
//   session's `rewrite`, which reads the old list strictly and refuses a damaged one.
// - Message files are never deleted: empty and unreadable ones are moved to `lost+found/` in the
//   folder (not a Maildir++ folder name, so Dovecot ignores it). Only temporary files older than
//   36 hours (Dovecot's rule) and, with `removeOddFiles`, entries of new/ and cur/ that cannot be
//   messages are removed.
// - A dry run reads the same things and reports the same problems, with "would ..." actions, and
//   writes nothing.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public struct ReconstructOptions: Sendable {
    /// Report only, change nothing.
    public var dryRun = false
    /// Read every message to check `,S=` and `,W=`.
    public var rereadMessages = false
    /// Do not stat every file: trust the sizes in the names.
    public var skipStat = false
    /// Remove entries of new/ and cur/ that are not messages (not regular files, or dot names).
    public var removeOddFiles = false
    public var lockPolicy = DotLock.Options()
    public init() {}
}

public struct ReconstructProblem: Equatable, Sendable {
    /// What is wrong, e.g. "uidlist line 7: garbage", "uid 12 has no file".
    public var what: String
    /// The file or directory concerned.
    public var path: String
    /// What was done ("dropped", "added as uid 57"), or in a dry run what would be ("would drop").
    public var action: String
    /// False in a dry run, or when it could not be repaired.
    public var repaired: Bool

    public init(what: String, path: String, action: String, repaired: Bool) {
        self.what = what
        self.path = path
        self.action = action
        self.repaired = repaired
    }
}

public struct FolderReport: Sendable {
    public var path: String
    public var problems: [ReconstructProblem]
    /// Messages in the folder after the run (in a dry run: the messages it would hold).
    public var messages: Int
    /// True when a new UIDVALIDITY was (or would be) taken: no UIDVALIDITY could be recovered.
    public var newUIDValidity: Bool

    public init(path: String, problems: [ReconstructProblem] = [], messages: Int = 0, newUIDValidity: Bool = false) {
        self.path = path
        self.problems = problems
        self.messages = messages
        self.newUIDValidity = newUIDValidity
    }
}

/// One readable uidlist record, as spans of the list's bytes (ByteSpans.swift).
struct RawRecord {
    var uid: UInt32
    /// Its line in the file (1 = the header).
    var line: Int32
    /// The file name as recorded, and its stem (up to any `:`).
    var name: Span
    var stem: Span
    /// The extension tokens between the UID and the `:` (`S1234 W1260`), spaces included.
    var extensions: Span
}

/// The readable parts of a dovecot-uidlist, however damaged. Records are read from the bytes
/// (one String per record would be most of the time of a check of a large folder).
struct RecoveredUIDList {
    var exists = false
    var uidValidity: UInt32?
    var nextUID: UInt32?
    var guid = ""
    var extra: [String] = []
    /// Readable records in file order (duplicates and disorder included); spans of `bytes`.
    var records: [RawRecord] = []
    var bytes: [UInt8] = []
    /// Problems found in the text itself: (line, description).
    var damage: [(line: Int, what: String)] = []
    /// The UID of a torn last line, when readable.
    var tornUID: UInt32?
    /// A torn last line that still reads as a record: its name may be cut short, its base is
    /// whole when a `,` follows it (`tornBaseIsWhole`).
    var torn: RawRecord?
    var tornBaseIsWhole = false

    /// Parses `bytes` line by line, keeping whatever can be read.
    static func parse(_ input: [UInt8]?) -> RecoveredUIDList {
        var out = RecoveredUIDList()
        guard let input else { return out }
        out.exists = true
        out.bytes = input
        let bytes = input
        if bytes.isEmpty {
            out.damage.append((1, "empty file"))
            return out
        }
        // Line spans, without their newline; a last line with no newline is torn.
        var lines: [Span] = []
        lines.reserveCapacity(bytes.count / 48)
        bytes.withUnsafeBufferPointer { buf in
            var start = 0
            while start < buf.count {
                let rest = UnsafeRawPointer(buf.baseAddress! + start)
                if let nl = memchr(rest, 10, buf.count - start) {
                    let end = start + (UnsafeRawPointer(nl) - rest)
                    lines.append(Span(start, end))
                    start = end + 1
                } else {
                    lines.append(Span(start, buf.count))
                    start = buf.count
                }
            }
        }
        if bytes.last != 10, let last = lines.popLast() {
            let text = bytes.string(Span(Int(last.start), Int(last.start) + min(60, last.count)))
            out.damage.append((lines.count + 1, "torn last line \"\(Names.printable(text))\""))
            // Its UID, when the number was written whole, counts as seen: it is never given again.
            var i = Int(last.start)
            while i < Int(last.end), bytes[i] >= 48 && bytes[i] <= 57 { i += 1 }
            if i < Int(last.end), bytes[i] == 32, i > Int(last.start),
               let uid = UInt32(String(decoding: bytes[Int(last.start)..<i], as: UTF8.self)) {
                out.tornUID = uid
                out.torn = parseRecord(bytes, last, version: 3, line: lines.count + 1)
                out.tornBaseIsWhole = out.torn.map { bytes.firstIndex(of: UInt8(ascii: ","), in: $0.stem) != nil } ?? false
            }
        }
        var version = 3
        var recordsFrom = 1
        if let first = lines.first {
            let text = Substring(bytes.string(first))
            do {
                let h = try UIDList.parseHeader(text)
                out.uidValidity = h.uidValidity
                out.nextUID = h.nextUID
                out.guid = h.guid
                out.extra = h.extra
                version = h.version
            } catch {
                if parseRecord(bytes, first, version: 3, line: 1) != nil {
                    out.damage.append((1, "no header"))
                    recordsFrom = 0
                } else {
                    out.damage.append((1, "header \(Names.printable(String(text.prefix(60)))): \((error as? UIDList.Corrupt)?.reason ?? "\(error)")"))
                    // Whatever tokens can still be read.
                    let tokens = text.split(separator: " ")
                    if tokens.first == "1", tokens.count >= 3 {
                        out.uidValidity = UInt32(tokens[1]).flatMap { $0 == 0 ? nil : $0 }
                        out.nextUID = UInt32(tokens[2]).flatMap { $0 == 0 ? nil : $0 }
                        version = 1
                    } else {
                        for t in tokens.dropFirst() {
                            switch t.first {
                            case "V": out.uidValidity = UInt32(t.dropFirst()).flatMap { $0 == 0 ? nil : $0 }
                            case "N": out.nextUID = UInt32(t.dropFirst()).flatMap { $0 == 0 ? nil : $0 }
                            case "G": out.guid = String(t.dropFirst()).allSatisfy({ $0.isHexDigit }) ? String(t.dropFirst()) : ""
                            default: break
                            }
                        }
                    }
                }
            }
        }
        out.records.reserveCapacity(lines.count)
        for (i, line) in lines.enumerated() where i >= recordsFrom {
            if line.isEmpty { continue }
            var record = parseRecord(bytes, line, version: version, line: i + 1)
            if record == nil && version == 1 { record = parseRecord(bytes, line, version: 3, line: i + 1) }
            if record == nil && version != 1 && bytes.firstIndex(of: UInt8(ascii: ":"), in: line) == nil {
                record = parseRecord(bytes, line, version: 1, line: i + 1)
            }
            guard let record else {
                let text = bytes.string(Span(Int(line.start), Int(line.start) + min(60, line.count)))
                out.damage.append((i + 1, "garbage \"\(Names.printable(text))\""))
                continue
            }
            out.records.append(record)
        }
        return out
    }

    /// One record line, as UIDList.parseRecord reads it (version 1: `<uid> <name>`; later:
    /// `<uid> [<extension>...] :<name>`), from the bytes; nil when it cannot be read.
    static func parseRecord(_ bytes: [UInt8], _ line: Span, version: Int, line number: Int) -> RawRecord? {
        let end = Int(line.end)
        var i = Int(line.start)
        while i < end, bytes[i] == 32 { i += 1 }
        var uid: UInt32 = 0
        let digits = i
        while i < end, bytes[i] >= 48 && bytes[i] <= 57 {
            let (m, o1) = uid.multipliedReportingOverflow(by: 10)
            let (v, o2) = m.addingReportingOverflow(UInt32(bytes[i] - 48))
            if o1 || o2 { return nil }
            uid = v
            i += 1
        }
        guard i > digits, i < end, bytes[i] == 32 || (version != 1 && bytes[i] == UInt8(ascii: ":")),
              uid != 0, uid != UInt32.max else { return nil }
        let name: Span, extensions: Span
        if version == 1 {
            name = Span(i + 1, end)
            extensions = Span(i, i)
        } else {
            guard let colon = bytes.firstIndex(of: UInt8(ascii: ":"), in: Span(i, end)) else { return nil }
            name = Span(colon + 1, end)
            extensions = Span(i, colon)
        }
        guard !name.isEmpty, bytes.firstIndex(of: UInt8(ascii: "/"), in: name) == nil else { return nil }
        let colon = bytes.firstIndex(of: UInt8(ascii: ":"), in: name) ?? end
        return RawRecord(uid: uid, line: Int32(number), name: name, stem: Span(Int(name.start), colon), extensions: extensions)
    }


    /// The highest UID any readable record names.
    var highestUID: UInt32 {
        let readable = records.lazy.map(\.uid).max() ?? 0
        guard let tornUID, tornUID < UInt32.max - 1, tornUID <= readable + 1 else { return readable }
        return max(readable, tornUID)
    }
}

/// The UIDVALIDITY and next UID Dovecot's own index holds for a folder, for when the list's
/// header is lost: `dovecot.index` (major version 7; uid_validity at offset 24 and next_uid at
/// 28 of its header, host byte order, little-endian on the hosts Nestbox runs on), then what
/// `dovecot.index.log` changed since (header updates of those two fields, appended UIDs). A
/// small folder often has only the log. nil unless both values are known.
func dovecotIndexHeader(_ folder: String) -> (uidValidity: UInt32, nextUID: UInt32)? {
    func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
    }
    var v: UInt32 = 0, n: UInt32 = 0
    if let fd = try? Files.openForReading("\(folder)/dovecot.index") {
        defer { close(fd) }
        if let head = try? Files.pread(fd, count: 32, offset: 0, path: "\(folder)/dovecot.index"), head.count == 32,
           head[0] == 7 {
            v = u32(head, 24)
            n = u32(head, 28)
        }
    }
    if let log = (try? Files.read("\(folder)/dovecot.index.log", limit: 64 << 20)) ?? nil,
       log.count >= 8, log[0] == 1, log[1] >= 2 {
        var at = Int(UInt16(log[2]) | UInt16(log[3]) << 8)
        while at + 8 <= log.count {
            // Transaction: size (Dovecot's 7-bits-a-byte offset encoding), then type.
            let coded = u32(log, at)
            guard coded & 0x8080_8080 == 0x8080_8080 else { break }
            let size = Int((coded >> 24) & 0x7f) << 2 | Int((coded >> 16) & 0x7f) << 9
                | Int((coded >> 8) & 0x7f) << 16 | Int(coded & 0x7f) << 23
            guard size >= 8, at + size <= log.count else { break }
            let type = u32(log, at + 4) & 0x000f_ffff
            var p = at + 8
            let end = at + size
            if type == 0x20 {              // header update: offset, size, data, padding to 4
                while p + 4 <= end {
                    let offset = Int(UInt16(log[p]) | UInt16(log[p + 1]) << 8)
                    let count = Int(UInt16(log[p + 2]) | UInt16(log[p + 3]) << 8)
                    let data = p + 4
                    guard data + count <= end else { break }
                    for field in [24, 28] where offset <= field && field + 4 <= offset + count {
                        let value = u32(log, data + field - offset)
                        if field == 24 { v = value } else { n = max(n, value) }
                    }
                    p = data + (count + 3) / 4 * 4
                }
            } else if type == 0x02 {       // appends: 8-byte records, uid first
                while p + 8 <= end {
                    let uid = u32(log, p)
                    if uid < UInt32.max { n = max(n, uid + 1) }
                    p += 8
                }
            }
            at = end
        }
    }
    guard v != 0, n != 0 else { return nil }
    return (v, n)
}

extension Folder {
    /// Checks and (unless `dryRun`) repairs the folder under its uidlist session (the same lock
    /// Dovecot and deliveries take).
    public func reconstruct(_ options: ReconstructOptions) throws -> FolderReport {
        guard Files.isDirectory(path) else {
            throw NestboxFailure(.userUnknown, "\(path): no such folder")
        }
        // Nothing below the mail root is repaired through a symbolic link: a link on the way to
        // the folder or at its tmp/ new/ cur/ is a temporary failure naming it.
        _ = try checkLinks()
        var run = ReconstructRun(folder: self, options: options)
        try run.directories()
        let session = try beginUIDListSession(options: options.lockPolicy)
        defer { session.finish() }
        try run.messages(session)
        return FolderReport(path: path, problems: run.problems, messages: run.messageCount, newUIDValidity: run.newUIDValidity)
    }
}

struct ReconstructRun {
    let folder: Folder
    let options: ReconstructOptions
    var problems: [ReconstructProblem] = []
    var messageCount = 0
    var newUIDValidity = false

    init(folder: Folder, options: ReconstructOptions) {
        self.folder = folder
        self.options = options
    }

    var dry: Bool { options.dryRun }
    var path: String { folder.path }

    mutating func report(_ what: String, _ path: String, done: @autoclosure () -> String, would: @autoclosure () -> String,
                         repaired: Bool = true) {
        problems.append(ReconstructProblem(what: what, path: path, action: dry ? would() : done(), repaired: dry ? false : repaired))
    }

    // MARK: Directories

    /// cur/ new/ tmp/, `maildirfolder`, stale temporary files.
    mutating func directories() throws {
        for sub in ["cur", "new", "tmp"] {
            let dir = "\(path)/\(sub)"
            if Files.isDirectory(dir) { continue }
            if Files.exists(dir) {
                report("\(sub)/ is not a directory", dir, done: "left", would: "would leave", repaired: false)
                continue
            }
            if !dry { try Files.makeDirectory(dir) }
            report("\(sub)/ missing", dir, done: "created", would: "would create")
        }
        let marker = "\(path)/maildirfolder"
        if folder.isRoot {
            if Files.exists(marker) {
                if !dry { Files.removeQuietly(marker) }
                report("maildirfolder in the root folder (breaks quota lookups)", marker, done: "removed", would: "would remove")
            }
        } else if !Files.exists(marker) {
            if !dry {
                let fd = open(marker, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, Files.fileMode)
                if fd < 0 { throw NestboxFailure.system("create", marker) }
                close(fd)
            }
            report("maildirfolder missing", marker, done: "created", would: "would create")
        }
        // Locks of processes that died holding them (`<pid>:<host>` naming a pid of this host
        // that is gone): Dovecot's and ours, e.g. dovecot-uidlist.lock, dovecot-keywords.lock.
        var locks: [String] = []
        try Files.forEachEntry(path) { name, count, _, _ in
            if count > 5, strcmp(name + count - 5, ".lock") == 0 { locks.append(String(cString: name)) }
        }
        for name in locks.sorted() {
            let p = "\(path)/\(name)"
            guard let held = try DotLock.removeIfHolderDead(p, dryRun: dry) else { continue }
            report("stale lock (\(held)) of a process that is gone", p, done: "removed", would: "would remove")
        }
        // Temporary files older than 36 hours (access and change times both: Dovecot's rule).
        let tmp = "\(path)/tmp"
        let limit = wallSeconds() - 36 * 3600
        for name in try Files.list(tmp) ?? [] {
            let p = "\(tmp)/\(name)"
            guard let st = try Files.status(p), (st.st_mode & S_IFMT) == S_IFREG else { continue }
            guard Double(st.st_mtim.tv_sec) < limit, Double(st.st_atim.tv_sec) < limit else { continue }
            if !dry { Files.removeQuietly(p) }
            report("temporary file older than 36 hours", p, done: "removed", would: "would remove")
        }
    }

    // MARK: Messages and the list

    /// The list's bytes, then the names of the files, then names made here: every name of the
    /// run is a span of it (ByteSpans.swift).
    var arena: [UInt8] = []

    mutating func messages(_ session: UIDListSession) throws {
        let listPath = session.file.path
        // Read with room for the files' names (about as long as the records), which follow the
        // list's bytes in the arena.
        var recovered = RecoveredUIDList.parse(try Files.read(listPath, limit: 1 << 30) {
            $0 + (1 << 16)
        })
        arena = recovered.bytes
        recovered.bytes = []
        var listChanged = false
        for d in recovered.damage where recovered.torn == nil || d.line != Int(recovered.torn!.line) {
            report("uidlist line \(d.line): \(d.what)", listPath, done: "dropped", would: "would drop")
            listChanged = true
        }

        // Records: one per stem (the lowest UID), one stem per UID (the first record). `holder`
        // gives each stem's record (an index in `records`, -1 once dropped). One UID naming two
        // stems needs UIDs out of order, so the UID map is kept only for a list in disorder.
        var records = recovered.records
        var stems = SpanTable(capacity: records.count + 16)
        var holder: [Int32] = []
        var stemSlot: [Int32] = []
        holder.reserveCapacity(records.count)
        stemSlot.reserveCapacity(records.count)
        var ordered = true
        var last: UInt32 = 0
        for r in records {
            if r.uid <= last { ordered = false; break }
            last = r.uid
        }
        var stemOfUID: [UInt32: Int]? = ordered ? nil : [:]
        var previous: UInt32 = 0
        for (i, r) in records.enumerated() {
            if i & 1023 == 0 { session.keepAlive() }
            if r.uid <= previous {
                report("uidlist line \(r.line): uid \(r.uid) not above \(previous)", listPath, done: "sorted", would: "would sort")
                listChanged = true
            }
            previous = max(previous, r.uid)
            let (slot, added) = stems.insert(r.stem, in: arena)
            stemSlot.append(Int32(slot))
            if added {
                holder.append(Int32(i))
                if stemOfUID != nil, stemOfUID![r.uid] == nil { stemOfUID![r.uid] = slot }
                continue
            }
            let other = records[Int(holder[slot])]
            let keep = min(other.uid, r.uid), drop = max(other.uid, r.uid)
            report("uidlist line \(r.line): uids \(keep) and \(drop) both name \(arena.string(r.stem))", listPath,
                   done: "kept uid \(keep)", would: "would keep uid \(keep)")
            listChanged = true
            if r.uid < other.uid {
                stemOfUID?[other.uid] = nil
                holder[slot] = Int32(i)
                stemOfUID?[r.uid] = slot
            }
        }
        if var byUID = stemOfUID {
            for (uid, slot) in byUID where records[Int(holder[slot])].uid != uid { byUID[uid] = nil }
            for (i, r) in records.enumerated() {
                let slot = Int(stemSlot[i])
                guard let first = byUID[r.uid], first != slot, holder[slot] == Int32(i) else { continue }
                let firstStem = arena.string(stems.spans[first])
                report("uidlist line \(r.line): uid \(r.uid) names both \(firstStem) and \(arena.string(r.stem))", listPath,
                       done: "kept for \(firstStem)", would: "would keep for \(firstStem)")
                holder[slot] = -1
                listChanged = true
            }
        }
        /// The UID of the live record naming `stem`, if any.
        func recordedUID(_ stem: Span, _ arena: [UInt8]) -> UInt32? {
            guard let slot = stems.find(stem, in: arena), holder[slot] >= 0 else { return nil }
            return records[Int(holder[slot])].uid
        }

        // The files.
        var files = try scanFiles(session)

        // Two files with one base: the one with the lowest UID (or the first) keeps it.
        var bases = SpanTable(capacity: files.count + 16)
        var baseSlot: [Int32] = []
        baseSlot.reserveCapacity(files.count)
        var shared = false
        for f in files {
            let (slot, added) = bases.insert(f.base(arena), in: arena)
            baseSlot.append(Int32(slot))
            if !added { shared = true }
        }
        var fresh: Set<Int> = []
        if shared {
            var groups: [Int: [Int]] = [:]
            for (i, slot) in baseSlot.enumerated() { groups[Int(slot), default: []].append(i) }
            let arena = self.arena
            for (slot, indexes) in groups.filter({ $0.value.count > 1 }).sorted(by: { arena.compare(bases.spans[$0.key], bases.spans[$1.key]) < 0 }) {
                let keeper = indexes.min { a, b in
                    let ua = recordedUID(files[a].stem(arena), arena) ?? UInt32.max, ub = recordedUID(files[b].stem(arena), arena) ?? UInt32.max
                    if ua != ub { return ua < ub }
                    if files[a].sub != files[b].sub { return files[a].sub < files[b].sub }  // cur/ first
                    return arena.compare(files[a].name, files[b].name) < 0
                }!
                for i in indexes.sorted(by: { arena.compare(files[$0].name, files[$1].name) < 0 }) where i != keeper {
                    let newBase = MaildirName.newBase(host: Host.name)
                    files[i].fixes.newBase = newBase
                    fresh.insert(i)
                    report("base \(arena.string(bases.spans[slot])) used by two files", filePath(files[i]),
                           done: "renamed to base \(newBase)", would: "would rename to a fresh base")
                }
            }
        }

        // Sizes in the names: ,S= against the file's size, ,W= against its RFC822.SIZE.
        for i in files.indices {
            let f = files[i]
            let stem = f.stem(arena)
            for (key, actual) in [("S", f.knownSize), ("W", f.knownVirtualSize)] {
                guard let actual else { continue }
                let named = arena.maildirField(UInt8(ascii: key == "S" ? "S" : "W"), in: stem)
                guard named != actual else { continue }
                let truth = key == "S" ? "the file has \(actual) bytes" : "RFC822.SIZE is \(actual)"
                report("file name has \(named.map { ",\(key)=\($0)" } ?? "no ,\(key)="); \(truth)", filePath(f),
                       done: "renamed with ,\(key)=\(actual)", would: "would rename with ,\(key)=\(actual)")
                if key == "S" { files[i].fixes.size = actual } else { files[i].fixes.virtualSize = actual }
            }
        }

        // Renames: a fresh base gets a new UID, a size fix keeps the record's UID.
        var renamedIn: Set<String> = []
        var movedExtensions: [Int: [String]] = [:]
        for i in files.indices where files[i].needsRename {
            session.keepAlive()
            let f = files[i]
            let name = MaildirName(arena.string(f.name))
            let newStem = f.newStem(name.stem)
            let target = "\(path)/\(f.subdirectory)/\(MaildirName(stem: newStem, info: name.info).fileName)"
            var from = filePath(f), to = target
            if !dry {
                // Dovecot renames files to change flags without the uidlist lock: a file not
                // found under its scanned name is looked for again by its stem.
                if !Files.exists(from), let (sub, current) = try findByStem(name.stem) {
                    from = "\(path)/\(sub)/\(current.fileName)"
                    to = "\(path)/\(sub)/\(MaildirName(stem: newStem, info: current.info).fileName)"
                    files[i].sub = sub == "cur" ? 0 : 1
                }
                if Files.exists(to) || !Files.exists(from) {
                    problems.append(ReconstructProblem(what: Files.exists(to) ? "cannot rename: \(to) exists" : "file vanished before its rename",
                                                       path: from, action: "left", repaired: false))
                    continue
                }
                try Files.rename(from, to)
                renamedIn.insert(files[i].subdirectory)
            }
            let newName = arena.appendSpan(Files.baseName(to).utf8)
            if !fresh.contains(i), let slot = stems.find(f.stem(arena), in: arena), holder[slot] >= 0 {
                let record = records[Int(holder[slot])]
                holder[slot] = -1
                let stem = arena.appendSpan(newStem.utf8)
                movedExtensions[records.count] = sizeFreeExtensions(record.extensions)
                let (newSlot, added) = stems.insert(stem, in: arena)
                if added { holder.append(Int32(records.count)) } else { holder[newSlot] = Int32(records.count) }
                records.append(RawRecord(uid: record.uid, line: record.line, name: stem, stem: stem, extensions: Span(0, 0)))
                listChanged = true
            }
            files[i].named(newName, in: arena)
            files[i].fix = nil
        }
        for sub in renamedIn.sorted() { try Files.fsyncDirectory("\(path)/\(sub)") }

        try checkKeywords(files)

        // Join: records whose file is gone are dropped, files with no record are numbered. A
        // record whose file is gone keeps its UID for a file with no record and the same base
        // (the same message, renamed with other sizes by a run that died before writing the
        // list), and so does a torn last record whose base was written whole.
        let arena = self.arena
        var fileStems = SpanTable(capacity: files.count + 16)
        for f in files { _ = fileStems.insert(f.stem(arena), in: arena) }
        var unrecordedByBase = SpanTable(capacity: 16)
        var unrecordedStem: [Span] = []
        for f in files where recordedUID(f.stem(arena), arena) == nil {
            let (slot, added) = unrecordedByBase.insert(f.base(arena), in: arena)
            if added { unrecordedStem.append(f.stem(arena)) } else { unrecordedStem[slot] = Span(0, 0) }  // two: no guess
        }
        var adopted = Set<Int>()
        func adopt(_ stem: Span) -> Span? {
            let base = arena.firstIndex(of: UInt8(ascii: ","), in: stem).map { Span(Int(stem.start), $0) } ?? stem
            guard let slot = unrecordedByBase.find(base, in: arena), !unrecordedStem[slot].isEmpty, !adopted.contains(slot) else { return nil }
            adopted.insert(slot)
            return unrecordedStem[slot]
        }
        var candidates = holder.filter { $0 >= 0 }.map(Int.init)
        candidates.sort { records[$0].uid < records[$1].uid }
        var kept: [(uid: UInt32, name: Span, extensions: Span, replaced: [String]?)] = []
        kept.reserveCapacity(candidates.count)
        var keptUIDs = Set<UInt32>()
        for idx in candidates {
            let r = records[idx]
            if fileStems.find(r.stem, in: arena) != nil {
                kept.append((r.uid, r.name, r.extensions, movedExtensions[idx]))
            } else if let stem = adopt(r.stem) {
                report("uid \(r.uid) names \(arena.string(r.stem)), now \(arena.string(stem))", listPath,
                       done: "kept uid \(r.uid)", would: "would keep uid \(r.uid)")
                kept.append((r.uid, stem, Span(0, 0), sizeFreeExtensions(r.extensions)))
                listChanged = true
            } else {
                report("uid \(r.uid) has no file (\(arena.string(r.stem)))", listPath, done: "dropped", would: "would drop")
                listChanged = true
                continue
            }
            keptUIDs.insert(r.uid)
        }
        if let torn = recovered.torn, let d = recovered.damage.first(where: { $0.line == Int(torn.line) }) {
            listChanged = true
            let n = recovered.nextUID ?? 0
            if recovered.tornBaseIsWhole, !keptUIDs.contains(torn.uid), torn.uid == recovered.highestUID || torn.uid < n,
               let stem = adopt(torn.stem) {
                report("uidlist line \(d.line): \(d.what)", listPath, done: "kept uid \(torn.uid) for \(arena.string(stem))",
                       would: "would keep uid \(torn.uid) for \(arena.string(stem))")
                kept.append((torn.uid, stem, Span(0, 0), nil))
                keptUIDs.insert(torn.uid)
                kept.sort { $0.uid < $1.uid }
            } else {
                report("uidlist line \(d.line): \(d.what)", listPath, done: "dropped", would: "would drop")
            }
        }
        var keptStems = SpanTable(capacity: kept.count + 16)
        for k in kept {
            let colon = arena.firstIndex(of: UInt8(ascii: ":"), in: k.name) ?? Int(k.name.end)
            _ = keptStems.insert(Span(Int(k.name.start), colon), in: arena)
        }
        var newStems: [(key: (Int64, Int64), stem: Span)] = []
        for stem in fileStems.spans where keptStems.find(stem, in: arena) == nil {
            newStems.append((Folder.dovecotOrderKey(arena, stem), stem))
        }
        newStems.sort { a, b in a.key != b.key ? a.key < b.key : arena.compare(a.stem, b.stem) < 0 }

        // Header: UIDVALIDITY and N.
        var uidValidity = recovered.uidValidity
        var indexNext: UInt32 = 0
        if recovered.exists || !files.isEmpty {
            if uidValidity == nil, let index = dovecotIndexHeader(path) {
                uidValidity = index.uidValidity
                indexNext = index.nextUID
                report("uidlist has no readable UIDVALIDITY", listPath,
                       done: "took \(index.uidValidity) from dovecot.index", would: "would take \(index.uidValidity) from dovecot.index")
                listChanged = true
            }
        }
        if recovered.exists, recovered.uidValidity != nil, recovered.nextUID == nil {
            report("uidlist header has no readable next UID", listPath, done: "recomputed", would: "would recompute")
            listChanged = true
        }
        // An N at or below the last record is the store's own format (appends never rewrite the
        // header; the effective next UID is max(N, last UID + 1)): not a problem by itself.
        let highest = max(recovered.highestUID, kept.last?.uid ?? 0)
        var next = max(recovered.nextUID ?? 1, highest + 1, indexNext)
        if !recovered.exists && !files.isEmpty {
            report("dovecot-uidlist missing", listPath, done: "created", would: "would create")
            listChanged = true
        }
        guard listChanged || !newStems.isEmpty else {
            messageCount = files.count
            return
        }
        var numbered: [(uid: UInt32, stem: Span)] = []
        numbered.reserveCapacity(newStems.count)
        for (_, stem) in newStems {
            guard next < UInt32.max - 1 else { throw NestboxFailure(.temporary, "\(listPath): UIDs exhausted") }
            numbered.append((next, stem))
            report("\(arena.string(stem)) has no uid", listPath, done: "added as uid \(next)", would: "would add as uid \(next)")
            next += 1
        }
        var header = UIDList.Header(uidValidity: uidValidity ?? 1, nextUID: next, guid: recovered.guid, extra: recovered.extra)
        if uidValidity == nil {
            newUIDValidity = true
            if dry {
                problems.append(ReconstructProblem(what: "no UIDVALIDITY can be recovered: clients will download the folder again",
                                                   path: listPath, action: "would take a new UIDVALIDITY", repaired: false))
            } else {
                header.uidValidity = try UIDValidity.next(mailRoot: folder.mailRoot, options: options.lockPolicy)
                // A new mailbox as far as clients can tell: a GUID of its own unless one was read.
                if header.guid.isEmpty { header.guid = hexString(randomBytes(16)) }
                problems.append(ReconstructProblem(what: "no UIDVALIDITY can be recovered: clients will download the folder again",
                                                   path: listPath, action: "took new UIDVALIDITY \(header.uidValidity)", repaired: true))
            }
        }
        messageCount = kept.count + numbered.count
        guard !dry else { return }

        // The new list, written from the spans (the format of UIDList.serialized).
        var out = Array(header.line.utf8)
        out.append(10)
        out.reserveCapacity(arena.count + numbered.count * 64)
        var lastUID: UInt32 = 0
        func record(_ uid: UInt32, _ extensions: Span, _ replaced: [String]?, _ name: Span) throws {
            // What UIDListSession.validate checks of a rewrite.
            guard uid > lastUID, uid != UInt32.max, !name.isEmpty else {
                throw NestboxFailure(.temporary, "\(listPath): rewrite refused: uid \(uid) after \(lastUID)")
            }
            lastUID = uid
            out.appendDecimal(uid)
            if let replaced {
                for e in replaced {
                    out.append(32)
                    out.append(contentsOf: e.utf8)
                }
            } else {
                // The tokens as read, one space apart.
                var space = true
                for i in Int(extensions.start)..<Int(extensions.end) {
                    let b = arena[i]
                    if b == 32 { space = true; continue }
                    if space { out.append(32); space = false }
                    out.append(b)
                }
            }
            out.append(32)
            out.append(UInt8(ascii: ":"))
            out.append(contentsOf: arena[Int(name.start)..<Int(name.end)])
            out.append(10)
        }
        try header.validate()
        for k in kept { try record(k.uid, k.extensions, k.replaced, k.name) }
        for (uid, stem) in numbered { try record(uid, Span(0, 0), [], stem) }
        try session.file.replaceLocked(out)
    }

    /// The extension tokens of a record (`S1234 W1260 ...`) without the sizes, for a record whose
    /// file was renamed with other sizes.
    func sizeFreeExtensions(_ s: Span) -> [String] {
        arena.string(s).split(separator: " ").filter { !$0.hasPrefix("S") && !$0.hasPrefix("W") }.map(String.init)
    }

    /// Keyword letters used in file names with no name in dovecot-keywords: reported only (a
    /// name cannot be guessed; Dovecot shows such letters as no keyword at all).
    mutating func checkKeywords(_ files: [FileEntry]) throws {
        var users = [Int](repeating: 0, count: 26)
        var any = false
        for f in files {
            // The flag letters: after `:2,` (or `:`), up to any second `,`.
            guard let colon = arena.firstIndex(of: UInt8(ascii: ":"), in: f.name) else { continue }
            var i = colon + 1
            let end = Int(f.name.end)
            if i + 1 < end, arena[i] == UInt8(ascii: "2"), arena[i + 1] == UInt8(ascii: ",") { i += 2 }
            while i < end, arena[i] != UInt8(ascii: ",") {
                let b = arena[i]
                if b >= 97 && b <= 122 { users[Int(b - 97)] += 1; any = true }
                i += 1
            }
        }
        guard any else { return }
        let keywordsPath = "\(path)/\(Keywords.fileName)"
        let table: Keywords
        do {
            table = try Keywords.read(folder: path)
        } catch {
            report("dovecot-keywords unreadable: \(error)", keywordsPath, done: "left", would: "would leave", repaired: false)
            return
        }
        for (n, count) in users.enumerated() where count > 0 {
            let letter = Character(Unicode.Scalar(UInt8(97 + n)))
            guard table.name(of: letter) == nil else { continue }
            report("keyword letter \(letter) used by \(count) file\(count == 1 ? "" : "s") has no name in dovecot-keywords",
                   keywordsPath, done: "left (no name to give it)", would: "would leave (no name to give it)", repaired: false)
        }
    }

    /// One message file of new/ or cur/; its name is a span of the run's arena.
    struct FileEntry {
        var name: Span
        /// The true size and RFC822.SIZE when known (stat, read), else -1.
        var size: Int64 = -1
        var virtualSize: Int64 = -1
        /// 0: cur/, 1: new/ (the order of the names).
        var sub: UInt8
        /// What its name needs, if anything (a class: most files need nothing, and 100k entries
        /// must stay small).
        var fix: Fix?

        final class Fix {
            var newBase: String?
            var size: Int64?
            var virtualSize: Int64?
        }

        init(sub: String, name: Span, in arena: [UInt8]) {
            self.sub = sub == "cur" ? 0 : 1
            self.name = name
            named(name, in: arena)
        }

        var subdirectory: String { sub == 0 ? "cur" : "new" }
        var knownSize: Int64? { size >= 0 ? size : nil }
        var knownVirtualSize: Int64? { virtualSize >= 0 ? virtualSize : nil }

        /// The fixes, made when first needed.
        var fixes: Fix {
            mutating get {
                if let fix { return fix }
                let made = Fix()
                fix = made
                return made
            }
        }

        /// Where the stem (the part before `:`) and the base (the stem up to its first `,`) end,
        /// found once (`named`).
        var stemEnd: Int32 = 0
        var baseEnd: Int32 = 0

        /// The part before `:`.
        func stem(_ arena: [UInt8]) -> Span { Span(Int(name.start), Int(stemEnd)) }

        /// The stem up to its first `,`.
        func base(_ arena: [UInt8]) -> Span { Span(Int(name.start), Int(baseEnd)) }

        /// Gives the entry the name `span` of `arena`.
        mutating func named(_ span: Span, in arena: [UInt8]) {
            name = span
            let stem = arena.firstIndex(of: UInt8(ascii: ":"), in: span) ?? Int(span.end)
            stemEnd = Int32(stem)
            baseEnd = Int32(arena.firstIndex(of: UInt8(ascii: ","), in: Span(Int(span.start), stem)) ?? stem)
        }

        var needsRename: Bool { fix != nil }

        /// `stem` with the fresh base and the true sizes.
        func newStem(_ stem: String) -> String {
            guard let fix else { return stem }
            let fixSize = fix.size, fixVirtualSize = fix.virtualSize
            var parts = stem.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            if let newBase = fix.newBase { parts[0] = newBase }
            var sawS = false, sawW = false
            for j in parts.indices.dropFirst() {
                if parts[j].hasPrefix("S="), let s = fixSize { parts[j] = "S=\(s)"; sawS = true }
                else if parts[j].hasPrefix("W="), let w = fixVirtualSize { parts[j] = "W=\(w)"; sawW = true }
            }
            if let s = fixSize, !sawS {
                let at = parts.firstIndex { $0.hasPrefix("W=") } ?? parts.count
                parts.insert("S=\(s)", at: at)
            }
            if let w = fixVirtualSize, !sawW { parts.append("W=\(w)") }
            return parts.joined(separator: ",")
        }
    }

    func filePath(_ f: FileEntry) -> String { "\(path)/\(f.subdirectory)/\(arena.string(f.name))" }

    /// The message files of new/ and cur/, each directory in name order: empty and unreadable
    /// ones moved to lost+found/, odd entries reported (removed with `removeOddFiles`). Names go
    /// to the arena; each file is stat'ed relative to its directory (not by a path).
    mutating func scanFiles(_ session: UIDListSession) throws -> [FileEntry] {
        var out: [FileEntry] = []
        let trustNames = options.skipStat && !options.rereadMessages
        for sub in ["new", "cur"] {
            let dir = "\(path)/\(sub)"
            var entries: [(name: Span, message: Bool, mode: mode_t, size: Int64)] = []
            var arena = self.arena
            self.arena = []
            defer { self.arena = arena }
            // The names first (each followed by a NUL in the arena, outside its span, so that
            // it can be passed to fstatat), then their status, in parallel threads for a large
            // directory: the stat calls are most of a default check's time.
            guard let dirFD = try Files.openDirectory(dir) else { continue }
            defer { close(dirFD) }
            var unstated: [Int] = []
            try Files.forEachEntry(dir) { name, count, _, _ in
                if entries.count & 1023 == 0 { session.keepAlive() }
                let span = name.withMemoryRebound(to: UInt8.self, capacity: count + 1) {
                    arena.appendSpan(UnsafeBufferPointer(start: $0, count: count))
                }
                arena.append(0)
                let message = name[0] != 46  // not a dot name (never empty)
                if !(trustNames && message) { unstated.append(entries.count) }
                entries.append((span, message, S_IFREG, -1))
            }
            var failure: (Int32, Int)? = nil
            var gone = Set<Int>()
            arena.withUnsafeBufferPointer { names in
                entries.withUnsafeMutableBufferPointer { slots in
                    let results = Files.parallelMap(unstated.count, minimumPerThread: 4096) { k -> (code: Int32, mode: mode_t, size: Int64) in
                        let e = slots[unstated[k]]
                        var st = stat()
                        let p = UnsafeRawPointer(names.baseAddress! + Int(e.name.start)).assumingMemoryBound(to: CChar.self)
                        if fstatat(dirFD, p, &st, AT_SYMLINK_NOFOLLOW) != 0 { return (errno, 0, 0) }
                        return (0, st.st_mode, Int64(st.st_size))
                    }
                    for (k, r) in results.enumerated() {
                        let i = unstated[k]
                        if r.code == ENOENT { gone.insert(i); continue }  // gone meanwhile
                        if r.code != 0 { if failure == nil { failure = (r.code, i) }; continue }
                        slots[i].mode = r.mode
                        slots[i].size = r.size
                    }
                }
            }
            if let (code, i) = failure {
                errno = code
                throw NestboxFailure.system("stat", "\(dir)/\(arena.string(entries[i].name))")
            }
            if !gone.isEmpty { entries = entries.enumerated().filter { !gone.contains($0.offset) }.map(\.element) }
            self.arena = arena
            // Name order only matters for the order of report lines: sorted when some entry
            // may be reported (odd, empty, sizes to read or fix), not for a clean directory.
            let names = arena
            let mayReport = options.rereadMessages || entries.contains { e in
                if trustNames && e.message && e.size < 0 { return false }
                guard e.message, (e.mode & S_IFMT) == S_IFREG, e.size > 0 else { return true }
                let stem = Span(Int(e.name.start), names.firstIndex(of: UInt8(ascii: ":"), in: e.name) ?? Int(e.name.end))
                return names.maildirField(UInt8(ascii: "W"), in: stem) == nil || names.maildirField(UInt8(ascii: "S"), in: stem) != e.size
            }
            if mayReport { entries.sort { names.compare($0.name, $1.name) < 0 } }
            for e in entries {
                var entry = FileEntry(sub: sub, name: e.name, in: arena)
                if trustNames && e.message && e.size < 0 {
                    out.append(entry)
                    continue
                }
                let p = filePath(entry)
                let regular = (e.mode & S_IFMT) == S_IFREG
                guard regular, e.message else {
                    if (e.mode & S_IFMT) == S_IFDIR {
                        report("directory in \(sub)/", p, done: "left", would: "would leave", repaired: false)
                    } else if options.removeOddFiles {
                        if !dry { Files.removeQuietly(p) }
                        report("not a message file", p, done: "removed", would: "would remove")
                    } else {
                        report("not a message file", p, done: "left (remove with -O)", would: "would leave (remove with -O)", repaired: false)
                    }
                    continue
                }
                if e.size == 0 {
                    try moveToLostAndFound(p, because: "empty message file")
                    continue
                }
                entry.size = e.size
                if options.rereadMessages || arena.maildirField(UInt8(ascii: "W"), in: entry.stem(arena)) == nil {
                    do {
                        guard let v = try FolderScan.virtualSize(p) else { continue }  // gone meanwhile
                        entry.virtualSize = v
                    } catch {
                        try moveToLostAndFound(p, because: "unreadable message file (\(error))")
                        continue
                    }
                }
                out.append(entry)
            }
        }
        return out
    }

    /// Where the file whose stem is `stem` is now (new/ or cur/), if anywhere.
    func findByStem(_ stem: String) throws -> (String, MaildirName)? {
        for sub in ["new", "cur"] {
            if let name = (try Files.list("\(path)/\(sub)") ?? []).lazy.map(MaildirName.init).first(where: { $0.stem == stem }) {
                return (sub, name)
            }
        }
        return nil
    }

    /// Moves `file` to `<folder>/lost+found/` (made 0700), under a name not taken there.
    mutating func moveToLostAndFound(_ file: String, because what: String) throws {
        let dir = "\(path)/lost+found"
        var target = "\(dir)/\(Files.baseName(file))"
        if !dry {
            if !Files.isDirectory(dir) { try Files.makeDirectory(dir, mode: 0o700) }
            var n = 1
            while Files.exists(target) {
                target = "\(dir)/\(Files.baseName(file)).\(n)"
                n += 1
            }
            guard Files.exists(file) else { return }  // gone meanwhile
            try Files.rename(file, target)
            try Files.fsyncDirectory(Files.directoryName(file))
            try Files.fsyncDirectory(dir)
        }
        report(what, file, done: "moved to \(target)", would: "would move to lost+found/")
    }
}

extension QuotaRoot {
    /// maildirsize against the files: recalculated (limits kept) when it disagrees; nil when fine
    /// or when there is no maildirsize. A limits line that cannot be read is reported and left
    /// (rewriting it would lose the limits).
    public func reconstruct(dryRun: Bool) throws -> ReconstructProblem? {
        guard let bytes = try Files.read(path, limit: 1 << 20) else { return nil }
        guard let parsed = MaildirSize.parse(bytes) else {
            return ReconstructProblem(what: "line 1: bad limits \"\(Names.printable(String(decoding: bytes.prefix(60), as: UTF8.self)))\"",
                                      path: path, action: dryRun ? "would leave (set the limits again)" : "left (set the limits again)",
                                      repaired: false)
        }
        let actual = try scan()
        var what: String? = nil
        if parsed.damaged {
            what = "unparsable line"
        } else if parsed.usage != actual {
            what = "says \(parsed.usage.bytes) bytes in \(parsed.usage.messages) messages; the folders hold \(actual.bytes) in \(actual.messages)"
        }
        guard let what else { return nil }
        if dryRun { return ReconstructProblem(what: what, path: path, action: "would recalculate", repaired: false) }
        let fresh = try recalculate(limits: parsed.limits)
        return ReconstructProblem(what: what, path: path,
                                  action: "recalculated: \(fresh.usage.bytes) bytes, \(fresh.usage.messages) messages", repaired: true)
    }
}
