// Purge: which messages a policy removes, and removing them from a Maildir folder through
// expunge (Expunge.swift), so Dovecot sees them expunged and keeps every other UID.
//
// The selection is one `PurgeCriteria`, the same for a Maildir file (ScannedMessage) and an
// mbox message: it sees a message only as \Deleted, \Flagged, its size, its delivery time and
// (read only when an age is asked for and the delivery time is not) its Date: header. The rules
// are Cyrus ipurge's (CYRUS-COMPAT.md), with these choices where ipurge is silent or unsafe:
// - no age and no size: the message is taken when it is \Deleted (`T`), the nightly default;
// - an age and a size together: both must hold; `-i` inverts the whole, `-x` makes each exact
//   (age in whole days, size to the byte); `-s` (keep \Flagged) and `-o` (only \Deleted) are
//   filters applied before, never inverted;
// - `-i` or `-x` without an age or a size is refused by the tool: inverting "\Deleted" would
//   remove every message a user kept;
// - the age by the Date: header falls back to the delivery time when there is no readable
//   Date: (as Cyrus falls back to the internal date), so a message is never kept forever for
//   a broken header;
// - the delivery time of a Maildir file is the seconds that start its base name (the time it
//   was saved into this folder: a copy into Trash gets a new base, so `Trash=30d` counts from
//   the move), else the file's mtime (Dovecot's INTERNALDATE);
// - sizes are the bytes the quota counts (`,S=`, else the file's size), the bytes a purge frees.
//
// Per-folder rules (`purge_rules: Trash=30d Junk=14d`) select by delivery time and keep
// \Flagged unless the rule says `+flagged` (`Junk=14d+flagged`). A folder's rule is the first
// whose name (IMAP LIST pattern, `*` and `%`) matches the folder's name within its owner
// (`INBOX`, `Trash`, `Lists/Old`). With `--rules` a message goes when the command line's
// selection or its folder's rule takes it.
//
// A dry run scans as a reader (no lock, nothing written: not even a lock file appears); a real
// run is one expunge per folder, under the uidlist lock for the whole scan and removal.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

/// One selection: which messages of a folder a purge takes.
public struct PurgeCriteria: Equatable, Sendable {
    /// Older than this many seconds (`-d`); nil: no age rule.
    public var age: Double?
    /// Larger than this many bytes (`-b`, `-k`, `-m`); nil: no size rule.
    public var size: Int64?
    /// `-x`: age in the same whole day, size equal.
    public var exact = false
    /// `-X`: the delivery time, not the Date: header.
    public var useDeliveryTime = false
    /// `-i`: take what the age and size rules do not.
    public var invert = false
    /// `-s`: never take a \Flagged message.
    public var skipFlagged = false
    /// `-o`: only ever take a \Deleted message.
    public var onlyDeleted = false

    public init(age: Double? = nil, size: Int64? = nil, exact: Bool = false, useDeliveryTime: Bool = false,
                invert: Bool = false, skipFlagged: Bool = false, onlyDeleted: Bool = false) {
        self.age = age
        self.size = size
        self.exact = exact
        self.useDeliveryTime = useDeliveryTime
        self.invert = invert
        self.skipFlagged = skipFlagged
        self.onlyDeleted = onlyDeleted
    }

    /// Whether the criteria take a message. `headerDate` is called only when the age rule needs
    /// the Date: header (seconds since the epoch, nil when there is none or it does not parse).
    public func selects(deleted: Bool, flagged: Bool, size messageSize: Int64, deliveryTime: Int64,
                        now: Int64, headerDate: () -> Int64?) -> Bool {
        if skipFlagged && flagged { return false }
        if onlyDeleted && !deleted { return false }
        guard age != nil || size != nil else { return deleted }
        var match = true
        if let size {
            match = exact ? messageSize == size : messageSize > size
        }
        if match, let age {
            let date = useDeliveryTime ? deliveryTime : (headerDate() ?? deliveryTime)
            let seconds = Double(now - date)
            match = exact ? (seconds / 86400).rounded(.down) == (age / 86400).rounded(.down) : seconds > age
        }
        return invert ? !match : match
    }

    /// For a Maildir file: flags from its name, its quota bytes, its Date: header read on demand.
    public func selects(_ m: ScannedMessage, now: Int64) -> Bool {
        selects(deleted: m.has(.deleted), flagged: m.has(.flagged), size: m.quotaBytes,
                deliveryTime: m.deliveryTime, now: now, headerDate: { MessageHeader.date(ofFile: m.path) })
    }

    /// For an mbox message: D and F of X-Status, its size, the date of its From_ line as the
    /// delivery time (else its Date:, else now: a message of unknown age never expires by age).
    public func selects(_ m: MboxMessage, now: Int64) -> Bool {
        selects(deleted: m.deleted, flagged: m.flagged, size: m.size,
                deliveryTime: m.envelopeDate ?? m.headerDate ?? now, now: now, headerDate: { m.headerDate })
    }
}

/// A folder's retention rule from `purge_rules`.
public struct PurgeRule: Equatable, Sendable {
    /// The folder name pattern (`Trash`, `Lists/*`).
    public var folder: String
    public var age: Double
    /// `+flagged`: \Flagged messages expire too.
    public var includeFlagged: Bool

    /// The rule as a selection: by delivery time, \Flagged kept unless `includeFlagged`.
    public var criteria: PurgeCriteria {
        PurgeCriteria(age: age, useDeliveryTime: true, skipFlagged: !includeFlagged)
    }

    /// The configured rules (already checked when the configuration was loaded).
    public static func rules(_ config: Config) -> [PurgeRule] {
        (Config.parseRules(config.string("purge_rules")) ?? []).map {
            PurgeRule(folder: $0.name, age: $0.age, includeFlagged: $0.includeFlagged)
        }
    }

    /// The first rule whose pattern matches `folderName` (a Folder's name; an mbox spool file
    /// is an INBOX); nil when none does.
    public static func rule(for folderName: String, in rules: [PurgeRule], separator: Character) -> PurgeRule? {
        rules.first { MailboxNames.matches(pattern: $0.folder, folderName, separator: separator) }
    }
}

/// What a purge of one folder or mbox found and removed: messages and bytes, as the quota
/// counts them.
public typealias PurgeTally = QuotaUsage

extension QuotaUsage {
    public mutating func add(_ other: QuotaUsage) {
        messages += other.messages
        bytes += other.bytes
    }

    public static func - (a: QuotaUsage, b: QuotaUsage) -> QuotaUsage {
        QuotaUsage(bytes: a.bytes - b.bytes, messages: a.messages - b.messages)
    }
}

public struct PurgeReport: Equatable, Sendable {
    /// Every message before the purge.
    public var total = PurgeTally()
    /// Those removed (with a dry run: those that would be).
    public var expunged = PurgeTally()
    /// For `-v`: each message removed, as "uid <n> <file name>" (Maildir) or "message <n>" (mbox).
    public var removed: [String] = []
    public var remaining: PurgeTally { total - expunged }
    public init() {}
}

extension ScannedMessage {
    /// The bytes the quota counts: `,S=`, else the file's size.
    public var quotaBytes: Int64 { name.size ?? max(size, 0) }

    /// The seconds that start the base name, else the file's mtime, else 0.
    public var deliveryTime: Int64 {
        var seconds: Int64 = 0
        var digits = 0
        for b in name.stem.utf8 {
            guard b >= 48 && b <= 57 else { break }
            seconds = seconds * 10 + Int64(b - 48)
            digits += 1
            if digits > 12 { break }
        }
        if digits > 0 && digits <= 12 { return seconds }
        return (try? Files.status(path)).flatMap { $0 }.map { Int64($0.st_mtim.tv_sec) } ?? 0
    }

    var purgeLine: String { "uid \(uid.map(String.init) ?? "-") \(name.fileName)" }
}

extension Folder {
    /// Removes the messages `selects` takes (see the top of this file). With `dryRun` nothing
    /// is written and no lock is taken: the report says what a real run would remove now.
    public func purge(dryRun: Bool, options: DotLock.Options, counting: QuotaCounting = .dovecot,
                      selects: (ScannedMessage) -> Bool) throws -> PurgeReport {
        var report = PurgeReport()
        func choose(_ m: ScannedMessage) -> Bool {
            report.total.add(PurgeTally(bytes: m.quotaBytes, messages: 1))
            return selects(m)
        }
        // The scan comes in directory order; the lines are given in UID order.
        func inOrder(_ m: [ScannedMessage]) -> [String] {
            m.sorted { ($0.uid ?? UInt32.max, $0.name.stem) < ($1.uid ?? UInt32.max, $1.name.stem) }.map(\.purgeLine)
        }
        if dryRun {
            _ = try checkLinks()
            var chosen: [ScannedMessage] = []
            for m in try FolderScan.scan(self, readFiles: false, trustNames: true, checks: false).messages where choose(m) {
                report.expunged.add(PurgeTally(bytes: m.quotaBytes, messages: 1))
                chosen.append(m)
            }
            report.removed = inOrder(chosen)
        } else {
            let result = try expunge(options: options, counting: counting, predicateSeesUIDs: false, where: choose)
            // What went (result.bytes/count are what the quota lost, less with Courier's counting).
            report.expunged = PurgeTally(bytes: result.removed.reduce(0) { $0 + $1.quotaBytes }, messages: Int64(result.removed.count))
            report.removed = result.removed.map(\.purgeLine)  // already in UID order
        }
        return report
    }

    /// The regular files of tmp/ not modified nor read for `age` seconds (Dovecot's rule for
    /// leftovers of interrupted deliveries), removed unless `dryRun`; returns their paths.
    @discardableResult
    public func removeStaleTemporaryFiles(olderThan age: Double = 36 * 3600, dryRun: Bool) throws -> [String] {
        let tmp = "\(path)/tmp"
        let limit = wallSeconds() - age
        var out: [String] = []
        for name in try Files.list(tmp) ?? [] {
            let p = "\(tmp)/\(name)"
            guard let st = try Files.status(p), (st.st_mode & S_IFMT) == S_IFREG else { continue }
            guard Double(st.st_mtim.tv_sec) < limit, Double(st.st_atim.tv_sec) < limit else { continue }
            if !dryRun { Files.removeQuietly(p) }
            out.append(p)
        }
        return out
    }
}

// MARK: mbox spools

extension Config {
    /// `mbox_write_locks`, in order.
    public var mboxWriteLocks: [MboxLock] {
        string("mbox_write_locks").split(separator: " ").compactMap { MboxLock(rawValue: $0.lowercased()) }
    }
}

extension Mbox {
    /// The spool files of `directory` (one per user, as /var/mail holds them): regular files,
    /// not dot files (our own temporary files among them), not `.lock` files; sorted.
    public static func spoolFiles(in directory: String) -> [String] {
        ((try? Files.list(directory)) ?? []).sorted().filter { name in
            guard !name.hasPrefix("."), !name.hasSuffix(".lock"),
                  let st = (try? Files.status("\(directory)/\(name)")).flatMap({ $0 }) else { return false }
            return (st.st_mode & S_IFMT) == S_IFREG
        }.map { "\(directory)/\($0)" }
    }
}

// MARK: Pruning (-E)

public struct PruneReport: Equatable, Sendable {
    public var duplicateRecords = 0
    public var spoolFiles = 0
    public var creationTrees = 0
    public var temporaryFiles = 0
    public init() {}
}

extension MailStore {
    /// cyr_expire -E: duplicate records older than `duplicatesOlderThan` (never less than the
    /// configured `duplicate_expire`, so no record a delivery still honours goes), spool files
    /// and creation trees older than `staleAfter`, and the stale tmp/ files of `folders`.
    /// With `dryRun`, counts and removes nothing.
    public func prune(duplicatesOlderThan: Double, staleAfter: Double = 36 * 3600, folders: [Folder],
                      dryRun: Bool) -> PruneReport {
        let expiry = max(duplicatesOlderThan, config.duplicateExpire)
        var report = PruneReport()
        if dryRun {
            do {
                report.duplicateRecords = try DuplicateDB(directory: duplicatesDirectory, expiry: expiry).prune(olderThan: expiry, dryRun: true)
            } catch {
                Log.warning("duplicate database: \(error)")
            }
            report.spoolFiles = MailStore.oldEntries(spoolDirectory, age: staleAfter) { $0.st_ctim }
            report.creationTrees = MailStore.oldEntries(creationDirectory, age: staleAfter) { $0.st_mtim }
        } else {
            let done = housekeeping(duplicates: DuplicateDB(directory: duplicatesDirectory, expiry: expiry), age: staleAfter)
            report.duplicateRecords = done.duplicateRecords
            report.spoolFiles = done.spoolFiles
            report.creationTrees = done.creationTrees
        }
        for folder in folders {
            do {
                report.temporaryFiles += try folder.removeStaleTemporaryFiles(olderThan: staleAfter, dryRun: dryRun).count
            } catch {
                Log.warning("\(folder.path)/tmp: cleanup: \(error)")
            }
        }
        return report
    }

    /// How many entries of `dir` are older than `age` by the time `when` picks.
    static func oldEntries(_ dir: String, age: Double, _ when: (stat) -> timespec) -> Int {
        let now = wallSeconds()
        return ((try? Files.list(dir)) ?? []).filter { name in
            guard let st = (try? Files.status("\(dir)/\(name)")).flatMap({ $0 }) else { return false }
            return now - Double(when(st).tv_sec) > age
        }.count
    }
}

// MARK: The Date: header

public enum MessageHeader {
    /// The Date: of the message file at `path` as seconds since the epoch; nil when the file
    /// is gone, has no Date: in its first 64 KiB of header, or it does not parse.
    public static func date(ofFile path: String) -> Int64? {
        guard let fd = try? Files.openForReading(path) else { return nil }
        defer { close(fd) }
        // 8 KiB holds almost every header; a longer one is read again, up to 64 KiB.
        for count in [8192, 65536] {
            guard let bytes = try? Files.pread(fd, count: count, offset: 0, path: path) else { return nil }
            if let value = field("date", in: bytes) { return RFC5322Date.parse(value) }
            if bytes.count < count || headerEnds(in: bytes) { return nil }
        }
        return nil
    }

    /// Whether `bytes` hold the empty line that ends the header (LF or CRLF line ends).
    static func headerEnds(in bytes: [UInt8]) -> Bool {
        var previous: UInt8 = 0
        for b in bytes where b != 13 {
            if b == 10 && previous == 10 { return true }
            previous = b
        }
        return false
    }

    /// The unfolded value of the first header field `name` (lower case) of `message`.
    public static func field(_ name: String, in message: [UInt8]) -> String? {
        let wanted = Array(name.utf8)
        var lineStart = 0
        let n = message.count
        while lineStart < n {
            var end = lineStart
            while end < n && message[end] != 10 { end += 1 }
            var line = message[lineStart..<end]
            if line.last == 13 { line = line.dropLast() }
            if line.isEmpty { return nil }  // end of the header
            if line.count > wanted.count, line[line.startIndex + wanted.count] == UInt8(ascii: ":"),
               zip(line, wanted).allSatisfy({ ($0 | 0x20) == $1 }) {
                var value = Array(line.dropFirst(wanted.count + 1))
                var next = end + 1
                // Folded continuation lines start with a space or a tab.
                while next < n && (message[next] == 32 || message[next] == 9) {
                    var e = next
                    while e < n && message[e] != 10 { e += 1 }
                    value.append(32)
                    value += message[next..<e].filter { $0 != 13 }
                    next = e + 1
                }
                return String(decoding: value, as: UTF8.self)
            }
            lineStart = end + 1
        }
        return nil
    }
}

/// RFC 5322 dates (section 3.3 with the obsolete forms of 4.3): `[day ","] d month yyyy
/// hh:mm[:ss] zone`, two- and three-digit years, zone names and comments.
public enum RFC5322Date {
    static let months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    static let zones: [String: Int64] = [
        "ut": 0, "utc": 0, "gmt": 0, "z": 0, "est": -5, "edt": -4, "cst": -6, "cdt": -5,
        "mst": -7, "mdt": -6, "pst": -8, "pdt": -7,
    ]

    /// Seconds since the epoch; nil when the text is no date.
    public static func parse(_ text: String) -> Int64? {
        // Comments out, commas to spaces, then words.
        var plain = ""
        var depth = 0
        for c in text {
            if c == "(" { depth += 1; continue }
            if c == ")" { depth = max(0, depth - 1); continue }
            if depth == 0 { plain.append(c == "," ? " " : c) }
        }
        var words = plain.lowercased().split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        if let first = words.first, first.first?.isLetter == true, !months.contains(String(first.prefix(3))) {
            words.removeFirst()  // the day of the week
        }
        guard words.count >= 4, let day = Int64(words[0]), (1...31).contains(day),
              let month = months.firstIndex(of: String(words[1].prefix(3))), var year = Int64(words[2]) else { return nil }
        if words[2].count <= 2 { year += year < 50 ? 2000 : 1900 } else if words[2].count == 3 { year += 1900 }
        let time = words[3].split(separator: ":").map { Int64($0) }
        guard time.count == 2 || time.count == 3, !time.contains(nil) else { return nil }
        let (hour, minute, second) = (time[0]!, time[1]!, time.count == 3 ? time[2]! : 0)
        guard hour < 24, minute < 60, second <= 60 else { return nil }
        var offset: Int64 = 0
        if words.count >= 5 {
            let zone = words[4]
            if let sign = zone.first, sign == "+" || sign == "-", zone.count == 5, let hhmm = Int64(zone.dropFirst()) {
                offset = (hhmm / 100 * 3600 + hhmm % 100 * 60) * (sign == "-" ? -1 : 1)
            } else if let hours = zones[zone] {
                offset = hours * 3600
            }  // military and unknown zones: "-0000", no known offset
        }
        return daysFromCivil(year, Int64(month) + 1, day) * 86400 + hour * 3600 + minute * 60 + second - offset
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    static func daysFromCivil(_ y: Int64, _ m: Int64, _ d: Int64) -> Int64 {
        let y = m <= 2 ? y - 1 : y
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146097 + doe - 719468
    }
}
