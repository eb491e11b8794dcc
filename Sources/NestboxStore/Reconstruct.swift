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

/// The readable parts of a dovecot-uidlist, however damaged.
struct RecoveredUIDList: Sendable {
    var exists = false
    var uidValidity: UInt32?
    var nextUID: UInt32?
    var guid = ""
    var extra: [String] = []
    /// Readable records in file order (duplicates and disorder included).
    var records: [(line: Int, record: UIDList.Record)] = []
    /// Problems found in the text itself: (line, description).
    var damage: [(line: Int, what: String)] = []
    /// The UID of a torn last line, when readable.
    var tornUID: UInt32?

    /// Parses `bytes` line by line, keeping whatever can be read.
    static func parse(_ bytes: [UInt8]?) -> RecoveredUIDList {
        var out = RecoveredUIDList()
        guard let bytes else { return out }
        out.exists = true
        if bytes.isEmpty {
            out.damage.append((1, "empty file"))
            return out
        }
        var lines = bytes.split(separator: 10, omittingEmptySubsequences: false)
        if bytes.last == 10 {
            lines.removeLast()
        } else {
            let torn = lines.removeLast()
            out.damage.append((lines.count + 1, "torn last line \"\(Names.printable(String(decoding: torn.prefix(60), as: UTF8.self)))\""))
            // Its UID, when the number was written whole, counts as seen: it is never given again.
            let digits = torn.prefix { $0 >= 48 && $0 <= 57 }
            if digits.count < torn.count, torn[torn.startIndex + digits.count] == 32, let uid = UInt32(String(decoding: digits, as: UTF8.self)) {
                out.tornUID = uid
            }
        }
        var version = 3
        var recordsFrom = 1
        if let first = lines.first {
            let text = Substring(String(decoding: first, as: UTF8.self))
            do {
                let h = try UIDList.parseHeader(text)
                out.uidValidity = h.uidValidity
                out.nextUID = h.nextUID
                out.guid = h.guid
                out.extra = h.extra
                version = h.version
            } catch {
                if (try? UIDList.parseRecord(text, version: 3, lineNumber: 1)) != nil {
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
        for (i, line) in lines.enumerated() where i >= recordsFrom {
            if line.isEmpty { continue }
            let text = Substring(String(decoding: line, as: UTF8.self))
            var record = try? UIDList.parseRecord(text, version: version, lineNumber: i + 1)
            if record == nil && version == 1 { record = try? UIDList.parseRecord(text, version: 3, lineNumber: i + 1) }
            if record == nil && version != 1 && !text.utf8.contains(UInt8(ascii: ":")) {
                record = try? UIDList.parseRecord(text, version: 1, lineNumber: i + 1)
            }
            guard let record else {
                out.damage.append((i + 1, "garbage \"\(Names.printable(String(text.prefix(60))))\""))
                continue
            }
            out.records.append((i + 1, record))
        }
        return out
    }

    /// The highest UID any readable record names.
    var highestUID: UInt32 {
        let readable = records.map(\.record.uid).max() ?? 0
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

    mutating func report(_ what: String, _ path: String, done: String, would: String, repaired: Bool = true) {
        problems.append(ReconstructProblem(what: what, path: path, action: dry ? would : done, repaired: dry ? false : repaired))
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

    mutating func messages(_ session: UIDListSession) throws {
        let listPath = session.file.path
        let raw = try Files.read(listPath, limit: 1 << 30)
        let recovered = RecoveredUIDList.parse(raw)
        var listChanged = false
        for d in recovered.damage {
            report("uidlist line \(d.line): \(d.what)", listPath, done: "dropped", would: "would drop")
            listChanged = true
        }

        // Records: one per stem (the lowest UID), one stem per UID (the first record).
        var byStem: [String: UIDList.Record] = [:]
        var stemOfUID: [UInt32: String] = [:]
        var previous: UInt32 = 0
        for (line, record) in recovered.records {
            session.keepAlive()
            if record.uid <= previous {
                report("uidlist line \(line): uid \(record.uid) not above \(previous)", listPath, done: "sorted", would: "would sort")
                listChanged = true
            }
            previous = max(previous, record.uid)
            if let other = byStem[record.stem] {
                let keep = min(other.uid, record.uid), drop = max(other.uid, record.uid)
                report("uidlist line \(line): uids \(keep) and \(drop) both name \(record.stem)", listPath,
                       done: "kept uid \(keep)", would: "would keep uid \(keep)")
                listChanged = true
                if record.uid < other.uid {
                    stemOfUID[other.uid] = nil
                    byStem[record.stem] = record
                    stemOfUID[record.uid] = record.stem
                }
                continue
            }
            byStem[record.stem] = record
            if stemOfUID[record.uid] == nil { stemOfUID[record.uid] = record.stem }
        }
        for (uid, stem) in stemOfUID where byStem[stem]?.uid != uid { stemOfUID[uid] = nil }
        for (line, record) in recovered.records {
            guard let first = stemOfUID[record.uid], first != record.stem, byStem[record.stem]?.uid == record.uid else { continue }
            report("uidlist line \(line): uid \(record.uid) names both \(first) and \(record.stem)", listPath,
                   done: "kept for \(first)", would: "would keep for \(first)")
            byStem[record.stem] = nil
            listChanged = true
        }

        // The files.
        var files = try scanFiles(session)

        // Two files with one base: the one with the lowest UID (or the first) keeps it.
        var byBase: [String: [Int]] = [:]
        for (i, f) in files.enumerated() { byBase[f.name.base, default: []].append(i) }
        var fresh: Set<Int> = []
        for (base, indexes) in byBase.filter({ $0.value.count > 1 }).sorted(by: { $0.key < $1.key }) {
            let keeper = indexes.min { a, b in
                let ua = byStem[files[a].name.stem]?.uid ?? UInt32.max, ub = byStem[files[b].name.stem]?.uid ?? UInt32.max
                return (ua, files[a].sub, files[a].name.fileName) < (ub, files[b].sub, files[b].name.fileName)
            }!
            for i in indexes where i != keeper {
                files[i].newBase = MaildirName.newBase(host: Host.name)
                fresh.insert(i)
                report("base \(base) used by two files", files[i].path,
                       done: "renamed to base \(files[i].newBase!)", would: "would rename to a fresh base")
            }
        }

        // Sizes in the names.
        for i in files.indices {
            session.keepAlive()
            let f = files[i]
            if let actual = f.size, f.name.size != actual {
                report("file name has \(f.name.size.map { ",S=\($0)" } ?? "no ,S="); the file has \(actual) bytes", f.path,
                       done: "renamed with ,S=\(actual)", would: "would rename with ,S=\(actual)")
                files[i].fixSize = actual
            }
            if let actual = f.virtualSize, f.name.virtualSize != actual {
                report("file name has \(f.name.virtualSize.map { ",W=\($0)" } ?? "no ,W="); RFC822.SIZE is \(actual)", f.path,
                       done: "renamed with ,W=\(actual)", would: "would rename with ,W=\(actual)")
                files[i].fixVirtualSize = actual
            }
        }

        // Renames: a fresh base gets a new UID, a size fix keeps the record's UID.
        for i in files.indices where files[i].newStem != files[i].name.stem {
            session.keepAlive()
            let f = files[i]
            let newStem = f.newStem
            let target = "\(path)/\(f.sub)/\(MaildirName(stem: newStem, info: f.name.info).fileName)"
            var from = f.path, to = target
            if !dry {
                // Dovecot renames files to change flags without the uidlist lock: a file not
                // found under its scanned name is looked for again by its stem.
                if !Files.exists(from), let (sub, current) = try findByStem(f.name.stem) {
                    from = "\(path)/\(sub)/\(current.fileName)"
                    to = "\(path)/\(sub)/\(MaildirName(stem: newStem, info: current.info).fileName)"
                    files[i].sub = sub
                }
                if Files.exists(to) || !Files.exists(from) {
                    problems.append(ReconstructProblem(what: Files.exists(to) ? "cannot rename: \(to) exists" : "file vanished before its rename",
                                                       path: from, action: "left", repaired: false))
                    continue
                }
                try Files.rename(from, to)
            }
            if !fresh.contains(i), let record = byStem[f.name.stem] {
                byStem[f.name.stem] = nil
                var moved = UIDList.Record(uid: record.uid, name: newStem)
                moved.extensions = record.extensions.filter { !$0.hasPrefix("S") && !$0.hasPrefix("W") }
                byStem[newStem] = moved
                listChanged = true
            }
            files[i].name = MaildirName(Files.baseName(to))
            files[i].renamed = true
            files[i].newBase = nil
            files[i].fixSize = nil
            files[i].fixVirtualSize = nil
        }
        if !dry {
            for sub in Set(files.filter { $0.renamed }.map(\.sub)) { try Files.fsyncDirectory("\(path)/\(sub)") }
        }

        try checkKeywords(files)

        // Join: records whose file is gone are dropped, files with no record are numbered.
        let present = Set(files.map(\.name.stem))
        var kept: [UIDList.Record] = []
        for record in byStem.values.sorted(by: { $0.uid < $1.uid }) {
            if present.contains(record.stem) {
                kept.append(record)
            } else {
                report("uid \(record.uid) has no file (\(record.stem))", listPath, done: "dropped", would: "would drop")
                listChanged = true
            }
        }
        let recorded = Set(kept.map(\.stem))
        let newStems = Folder.sortedInDovecotOrder(present.subtracting(recorded))

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
        var list = UIDList(header: UIDList.Header(uidValidity: uidValidity ?? 1, nextUID: next,
                                                   guid: recovered.guid,
                                                   extra: recovered.extra),
                           records: kept)
        for stem in newStems {
            guard next < UInt32.max - 1 else { throw NestboxFailure(.temporary, "\(listPath): UIDs exhausted") }
            list.records.append(UIDList.Record(uid: next, name: stem))
            report("\(stem) has no uid", listPath, done: "added as uid \(next)", would: "would add as uid \(next)")
            next += 1
        }
        list.header.nextUID = next
        if uidValidity == nil {
            newUIDValidity = true
            if dry {
                problems.append(ReconstructProblem(what: "no UIDVALIDITY can be recovered: clients will download the folder again",
                                                   path: listPath, action: "would take a new UIDVALIDITY", repaired: false))
            } else {
                list.header.uidValidity = try UIDValidity.next(mailRoot: folder.mailRoot, options: options.lockPolicy)
                // A new mailbox as far as clients can tell: a GUID of its own unless one was read.
                if list.header.guid.isEmpty { list.header.guid = hexString(randomBytes(16)) }
                problems.append(ReconstructProblem(what: "no UIDVALIDITY can be recovered: clients will download the folder again",
                                                   path: listPath, action: "took new UIDVALIDITY \(list.header.uidValidity)", repaired: true))
            }
        }
        messageCount = list.records.count
        if !dry {
            try UIDListSession.validate(list, path: listPath)
            try session.file.replaceLocked(list.serialized())
        }
    }

    /// Keyword letters used in file names with no name in dovecot-keywords: reported only (a
    /// name cannot be guessed; Dovecot shows such letters as no keyword at all).
    mutating func checkKeywords(_ files: [FileEntry]) throws {
        var users: [Character: Int] = [:]
        for f in files {
            for c in f.name.flagLetters where c.isASCII && c.isLowercase { users[c, default: 0] += 1 }
        }
        guard !users.isEmpty else { return }
        let keywordsPath = "\(path)/\(Keywords.fileName)"
        let table: Keywords
        do {
            table = try Keywords.read(folder: path)
        } catch {
            report("dovecot-keywords unreadable: \(error)", keywordsPath, done: "left", would: "would leave", repaired: false)
            return
        }
        for (letter, count) in users.sorted(by: { $0.key < $1.key }) where table.name(of: letter) == nil {
            report("keyword letter \(letter) used by \(count) file\(count == 1 ? "" : "s") has no name in dovecot-keywords",
                   keywordsPath, done: "left (no name to give it)", would: "would leave (no name to give it)", repaired: false)
        }
    }

    /// One message file of new/ or cur/.
    struct FileEntry {
        var sub: String
        var name: MaildirName
        var path: String
        /// The true size and RFC822.SIZE, when known (stat, read).
        var size: Int64?
        var virtualSize: Int64?
        var newBase: String?
        var fixSize: Int64?
        var fixVirtualSize: Int64?
        var renamed = false

        /// The stem with the fresh base and the true sizes.
        var newStem: String {
            guard newBase != nil || fixSize != nil || fixVirtualSize != nil else { return name.stem }
            var parts = name.stem.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            if let newBase { parts[0] = newBase }
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

    /// The message files of new/ and cur/: empty and unreadable ones moved to lost+found/, odd
    /// entries reported (removed with `removeOddFiles`).
    mutating func scanFiles(_ session: UIDListSession) throws -> [FileEntry] {
        var out: [FileEntry] = []
        for sub in ["new", "cur"] {
            let dir = "\(path)/\(sub)"
            for fileName in (try Files.list(dir) ?? []).sorted() {
                session.keepAlive()
                let p = "\(dir)/\(fileName)"
                let name = MaildirName(fileName)
                if options.skipStat && MaildirName.isMessageName(fileName) && !options.rereadMessages {
                    out.append(FileEntry(sub: sub, name: name, path: p))
                    continue
                }
                guard let st = try Files.status(p) else { continue }  // gone meanwhile
                let regular = (st.st_mode & S_IFMT) == S_IFREG
                guard regular, MaildirName.isMessageName(fileName) else {
                    if (st.st_mode & S_IFMT) == S_IFDIR && !regular {
                        report("directory in \(sub)/", p, done: "left", would: "would leave", repaired: false)
                    } else if options.removeOddFiles {
                        if !dry { Files.removeQuietly(p) }
                        report("not a message file", p, done: "removed", would: "would remove")
                    } else {
                        report("not a message file", p, done: "left (remove with -O)", would: "would leave (remove with -O)", repaired: false)
                    }
                    continue
                }
                if st.st_size == 0 {
                    try moveToLostAndFound(p, because: "empty message file")
                    continue
                }
                var entry = FileEntry(sub: sub, name: name, path: p, size: Int64(st.st_size))
                if options.rereadMessages || name.virtualSize == nil {
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
