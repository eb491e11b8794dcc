// The duplicate-delivery database (Cyrus's deliver.db): which message has already been
// delivered to which mailbox, so that a retry (Postfix after a lost connection, a mail loop, a
// list sending twice) is not stored twice.
//
// Key: Message-ID, Date (empty when the message has none: unlike Cyrus, such messages are still
// recognised) and the target mailbox. A message without Message-ID is never suppressed.
//
// Storage: 256 append-only logs, `<root>/.nestbox/duplicates/<xx>.log`, the log chosen by the
// first byte of a 64-bit hash of the key. One record per line:
//
//     <kind> <length> <seconds> <key> <path>
//
// kind `P` (pending) or `F` (final); length: the bytes of the line without its newline; seconds:
// the time of delivery; key and path percent-encoded (no space, no control byte, nothing above
// ASCII), path `-` in a final record. A lookup reads one log (1/256 of the records) and compares
// whole keys, so a hash collision can never suppress a different message; nestbox-lmtpd keeps an
// index of each log instead (`LogIndex`, at the end of this file) and reads only what was
// appended since its last lookup, plus the one record a hit names. Records older than
// the expiry are ignored by lookups and dropped when `prune` rewrites the log (nestbox-lmtpd at
// start and daily, nestbox-purge -E); a pending record with a final one after it goes too.
//
// Appends: one write(2) of "\n" + record on a descriptor opened O_APPEND, so the records of
// concurrent processes never interleave, and a record torn by a power cut ends its own line (the
// next append starts a new one): it never hides another record, and it is itself ignored, as its
// length does not match. No record costs a file of its own: a delivery adds two lines to a file
// that is already open (nestbox-lmtpd keeps the 256 logs open).
// Appends hold a shared flock on the log and prune an exclusive one: prune reads the log, writes
// the kept records to `<xx>.log.tmp`, fsyncs it and renames it over the log while holding the
// lock; an appender that then gets the lock finds its descriptor's file unlinked (st_nlink 0)
// and opens the new log before writing, so no record written beside a prune is lost.
//
// Crash safety: before the message is renamed into new/, a pending record naming the path of
// its file in new/ is appended; after the syncs, a final record. A pending record suppresses a
// retry only while the file it names exists, in new/ or (flags set) in cur/; a final one for as
// long as it has not expired. What a kill -9 of the delivering process leaves, at any instant:
// the message is either not in new/ (no record, or a pending one naming a missing file: the
// retry is stored) or in new/ with a pending or final record (the retry is suppressed); never
// lost, never stored twice. Records are not fsynced by themselves: the pending record is in the
// file system's journal before the delivery's own syncs (on ext4 and XFS an fdatasync commits
// every metadata change made before it, the log's growth included), and the final record
// follows the acknowledgement. After a power cut a final record of the last seconds may be
// missing; its pending record still suppresses a retry while the message is in the mailbox.
//
// Records of the earlier layout (one file per key in `<xx>/<hash>`) are still honoured by lookups
// and removed by prune once expired, with their directories.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public final class DuplicateDB: @unchecked Sendable {
    public let directory: String
    public let expiry: Double

    static let buckets = 256
    /// One lock per log: the descriptor cache and flock's per-descriptor state are shared by the
    /// threads of nestbox-lmtpd.
    private let locks: UnsafeMutablePointer<pthread_mutex_t>
    private var descriptors: [Int32]
    /// Buckets known to have no directory of the earlier layout (none is made any more).
    private var legacyGone: [Bool]
    /// nestbox-lmtpd's index of each log (made by `openAll`; nil: every lookup reads its log).
    private var indexes: UnsafeMutablePointer<LogIndex>? = nil

    /// `indexed`: keep an index of each log (`LogIndex`; `openAll` turns it on too), for a
    /// process that makes many lookups.
    public init(directory: String, expiry: Double, indexed: Bool = false) {
        self.directory = directory
        self.expiry = expiry
        locks = .allocate(capacity: DuplicateDB.buckets)
        for i in 0..<DuplicateDB.buckets { pthread_mutex_init(locks + i, nil) }
        descriptors = [Int32](repeating: -1, count: DuplicateDB.buckets)
        legacyGone = [Bool](repeating: false, count: DuplicateDB.buckets)
        if indexed { makeIndexes() }
    }

    private func makeIndexes() {
        guard indexes == nil else { return }
        let made = UnsafeMutablePointer<LogIndex>.allocate(capacity: DuplicateDB.buckets)
        made.initialize(repeating: LogIndex(), count: DuplicateDB.buckets)
        indexes = made
    }

    deinit {
        for fd in descriptors where fd >= 0 { Glibc.close(fd) }
        for i in 0..<DuplicateDB.buckets { pthread_mutex_destroy(locks + i) }
        locks.deallocate()
        if let indexes {
            indexes.deinitialize(count: DuplicateDB.buckets)
            indexes.deallocate()
        }
    }

    public static func key(messageID: String?, date: String?, mailbox: String) -> [UInt8]? {
        guard let id = messageID?.trimmingSpaces(), !id.isEmpty else { return nil }
        return Array("\(id)\u{0}\((date ?? "").trimmingSpaces())\u{0}\(mailbox)".utf8)
    }

    /// FNV-1a, 64 bits: only spreads keys over the logs; equality is decided on the whole key.
    static func hash(_ key: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf29ce484222325
        for b in key { h = (h ^ UInt64(b)) &* 0x100000001b3 }
        return h
    }

    static func bucket(_ key: [UInt8]) -> Int { Int(hash(key) >> 56) }

    func logPath(_ bucket: Int) -> String {
        "\(directory)/\(hexString([UInt8(bucket)])).log"
    }

    // MARK: Records

    enum Kind: UInt8 {
        case pending = 80  // P
        case final = 70  // F
    }

    /// Percent-encodes everything but printable ASCII other than space and `%`.
    static func encode(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + 8)
        let hex = Array("0123456789ABCDEF".utf8)
        for b in bytes {
            if b > 32 && b < 127 && b != 37 {
                out.append(b)
            } else {
                out.append(37)
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 15)])
            }
        }
        return out
    }

    static func decode(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = bytes.startIndex
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 65...70: return c - 55
            case 97...102: return c - 87
            default: return nil
            }
        }
        while i < bytes.endIndex {
            if bytes[i] == 37, i + 2 < bytes.endIndex, let h = nibble(bytes[i + 1]), let l = nibble(bytes[i + 2]) {
                out.append(h << 4 | l)
                i += 3
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return out
    }

    /// One record, with the newline that starts it.
    static func line(_ kind: Kind, seconds: Int64, encodedKey: [UInt8], path: String?) -> [UInt8] {
        var rest: [UInt8] = [32]
        rest += Array(String(max(0, seconds)).utf8)
        rest.append(32)
        rest += encodedKey
        rest.append(32)
        if let path { rest += encode(Array(path.utf8)) } else { rest.append(45) }
        // The length counts its own digits.
        var length = 2 + rest.count + 1
        while 2 + String(length).utf8.count + rest.count != length { length = 2 + String(length).utf8.count + rest.count }
        var out: [UInt8] = [10, kind.rawValue, 32]
        out += Array(String(length).utf8)
        return out + rest
    }

    /// A record as read back: nil for anything that is not one whole record.
    struct Record {
        var kind: Kind
        var seconds: Int64
        /// Ranges in the buffer the line came from.
        var key: Range<Int>
        var path: Range<Int>?
    }

    static func parse(_ bytes: UnsafeBufferPointer<UInt8>, line: Range<Int>) -> Record? {
        guard line.count > 8, let kind = Kind(rawValue: bytes[line.lowerBound]), bytes[line.lowerBound + 1] == 32 else { return nil }
        var i = line.lowerBound + 2
        func number() -> Int64? {
            var value: Int64 = 0
            let start = i
            while i < line.upperBound, bytes[i] >= 48, bytes[i] <= 57, i - start < 18 {
                value = value * 10 + Int64(bytes[i] - 48)
                i += 1
            }
            guard i > start, i < line.upperBound, bytes[i] == 32 else { return nil }
            i += 1
            return value
        }
        guard let length = number(), length == line.count, let seconds = number() else { return nil }
        let keyStart = i
        while i < line.upperBound, bytes[i] != 32 { i += 1 }
        guard i < line.upperBound, i > keyStart else { return nil }
        let key = keyStart..<i
        let pathStart = i + 1
        guard pathStart < line.upperBound else { return nil }
        let path: Range<Int>? = (line.upperBound - pathStart == 1 && bytes[pathStart] == 45) ? nil : pathStart..<line.upperBound
        if kind == .pending && path == nil { return nil }
        return Record(kind: kind, seconds: seconds, key: key, path: path)
    }

    /// The first occurrence of `needle` (at least 2 bytes) at or after `from`: memchr for its
    /// second byte, then memcmp (Glibc's memmem is not visible from Swift).
    static func find(_ needle: [UInt8], in bytes: UnsafeBufferPointer<UInt8>, from: Int) -> Int? {
        guard let base = bytes.baseAddress, needle.count >= 2 else { return nil }
        var i = from + 1
        while i + needle.count - 1 <= bytes.count {
            guard let hit = memchr(base + i, Int32(needle[1]), bytes.count - i) else { return nil }
            let j = base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
            if j - 1 + needle.count > bytes.count { return nil }
            if memcmp(base + j - 1, needle, needle.count) == 0 { return j - 1 }
            i = j + 1
        }
        return nil
    }

    /// The first LF at or after `from`.
    static func newline(_ bytes: UnsafeBufferPointer<UInt8>, from: Int) -> Int? {
        guard from < bytes.count, let base = bytes.baseAddress,
              let hit = memchr(base + from, 10, bytes.count - from) else { return nil }
        return base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
    }

    /// Calls `body` for every whole record of `bytes`, in order.
    static func forEachRecord(_ bytes: UnsafeBufferPointer<UInt8>, _ body: (Record, Range<Int>) -> Void) {
        var start = 0
        let count = bytes.count
        while start < count {
            let end = newline(bytes, from: start) ?? count
            if end > start, let r = parse(bytes, line: start..<end) { body(r, start..<end) }
            start = end + 1
        }
    }

    // MARK: Lookups and appends

    /// Whether `key` was delivered within the expiry. A pending record (written between the
    /// message's rename and its syncs) counts only if the message file it names exists.
    public func contains(_ key: [UInt8]) -> Bool {
        let bucket = DuplicateDB.bucket(key)
        pthread_mutex_lock(locks + bucket)
        let legacy = !legacyGone[bucket]
        pthread_mutex_unlock(locks + bucket)
        if legacy {
            switch legacyLookup(key) {
            case .found: return true
            case .noDirectory:
                pthread_mutex_lock(locks + bucket)
                legacyGone[bucket] = true
                pthread_mutex_unlock(locks + bucket)
            case .notFound: break
            }
        }
        let encoded = DuplicateDB.encode(key)
        var pendingPaths: [String] = []
        var found = false
        let oldest = Int64(wallSeconds() - expiry)
        withLog(bucket, create: false) { fd, st in
            if let indexes {
                switch indexes[bucket].lookup(encoded, oldest: oldest, fd: fd, st: st) {
                case .found: found = true; return
                case .absent: return
                case .readTheLog: break
                }
            }
            guard let bytes = try? DuplicateDB.readAll(fd) else { return }
            let needle = [32] + encoded + [32]
            bytes.withUnsafeBufferPointer { buffer in
                var from = 0
                while let at = DuplicateDB.find(needle, in: buffer, from: from) {
                    from = at + 1
                    var start = at
                    while start > 0 && buffer[start - 1] != 10 { start -= 1 }
                    let end = DuplicateDB.newline(buffer, from: at) ?? buffer.count
                    guard let r = DuplicateDB.parse(buffer, line: start..<end), r.key.lowerBound == at + 1,
                          r.seconds >= oldest else { continue }
                    if r.kind == .final {
                        found = true
                        return
                    }
                    if let p = r.path { pendingPaths.append(String(decoding: DuplicateDB.decode(bytes[p]), as: UTF8.self)) }
                }
            }
        }
        if found { return true }
        return pendingPaths.contains { DuplicateDB.messageExists($0) }
    }

    /// Whether the message `<folder>/new/<stem>` is still there, in new/ or (flags set) in cur/.
    static func messageExists(_ path: String) -> Bool {
        if Files.exists(path) { return true }
        let folder = Files.directoryName(Files.directoryName(path))
        let stem = Files.baseName(path)
        guard let names = try? Files.list("\(folder)/cur") else { return false }
        return names.contains { $0 == stem || $0.hasPrefix(stem + ":") }
    }

    /// Records `key` as pending: the message is at `messagePath` but not yet durable. A crash
    /// before `record` leaves a pending record that suppresses a retry only if the file exists.
    public func recordPending(_ key: [UInt8], messagePath: String) {
        append(key, DuplicateDB.line(.pending, seconds: Int64(wallSeconds()), encodedKey: DuplicateDB.encode(key), path: messagePath))
    }

    /// Records `key` as delivered (the message is durable). Failures are only logged.
    public func record(_ key: [UInt8]) {
        record(key, seconds: Int(wallSeconds()))
    }

    /// Records `key` as delivered at `seconds` (since the epoch).
    public func record(_ key: [UInt8], seconds: Int) {
        append(key, DuplicateDB.line(.final, seconds: Int64(seconds), encodedKey: DuplicateDB.encode(key), path: nil))
    }

    private func append(_ key: [UInt8], _ record: [UInt8]) {
        let bucket = DuplicateDB.bucket(key)
        withLog(bucket, create: true, locked: true) { fd, _ in
            // One write(2) nearly always; the log's path is spelled out only for a message.
            let done = record.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            guard done != record.count else { return }
            do {
                try Files.writeAll(fd, record[max(done, 0)...].map { $0 }, path: logPath(bucket))
            } catch {
                Log.warning("duplicate database: \(error)")
            }
        }
    }

    /// Runs `body` with the bucket's log open (O_APPEND), under the bucket's mutex; with
    /// `locked`, also under a shared flock taken on a descriptor whose file is still the log
    /// (see the top of this file). Nothing is run when the log does not exist and `create` is
    /// false, or it cannot be opened (logged).
    private func withLog(_ bucket: Int, create: Bool, locked: Bool = false, _ body: (Int32, stat) -> Void) {
        pthread_mutex_lock(locks + bucket)
        defer { pthread_mutex_unlock(locks + bucket) }
        for _ in 0..<8 {
            if descriptors[bucket] < 0 {
                descriptors[bucket] = openLog(bucket, create: create)
                // The index belongs to the descriptor: while it is open its inode cannot be
                // another file's; a new descriptor may be a new file under a reused number.
                indexes?[bucket] = LogIndex()
                if descriptors[bucket] < 0 { return }
            }
            let fd = descriptors[bucket]
            if locked {
                while flock(fd, LOCK_SH) != 0 && errno == EINTR {}
            }
            var st = stat()
            if fstat(fd, &st) == 0 && st.st_nlink > 0 {
                body(fd, st)
                if locked { flock(fd, LOCK_UN) }
                return
            }
            // Replaced by a prune: the new log is at the path.
            if locked { flock(fd, LOCK_UN) }
            Glibc.close(fd)
            descriptors[bucket] = -1
        }
        Log.warning("duplicate database: \(logPath(bucket)) keeps being replaced")
    }

    /// Makes every missing log and keeps them all open, looks once for the earlier layout's
    /// directories, and indexes every log (`LogIndex`): a long-running server (nestbox-lmtpd,
    /// at start) then pays for none of it while a client waits, and a lookup reads only what
    /// was appended since the last one instead of the whole log (at 100k deliveries a day and
    /// the default 3 days of expiry, about 1,200 records per log). Failures are logged; a log
    /// not opened here is opened at its first use.
    public func openAll() {
        let dir: Int32
        do {
            guard let fd = try openDirectory(create: true) else { return }
            dir = fd
        } catch {
            Log.warning("duplicate database: \(error)")
            return
        }
        defer { Glibc.close(dir) }
        makeIndexes()
        for bucket in 0..<DuplicateDB.buckets {
            var st = stat()
            let legacy = fstatat(dir, hexString([UInt8(bucket)]), &st, AT_SYMLINK_NOFOLLOW) == 0
            pthread_mutex_lock(locks + bucket)
            if !legacy { legacyGone[bucket] = true }
            if descriptors[bucket] < 0 {
                descriptors[bucket] = openLog(bucket, in: dir, create: true)
                indexes?[bucket] = LogIndex()
            }
            // Indexed now, so that no client waits for a log's first reading.
            if let indexes, descriptors[bucket] >= 0, fstat(descriptors[bucket], &st) == 0 {
                _ = indexes[bucket].refresh(fd: descriptors[bucket], st: st)
            }
            pthread_mutex_unlock(locks + bucket)
        }
    }

    private func openLog(_ bucket: Int, create: Bool) -> Int32 {
        let dir: Int32
        do {
            guard let fd = try openDirectory(create: create) else { return -1 }
            dir = fd
        } catch {
            Log.warning("duplicate database: \(error)")
            return -1
        }
        defer { Glibc.close(dir) }
        return openLog(bucket, in: dir, create: create)
    }

    private func openLog(_ bucket: Int, in dir: Int32, create: Bool) -> Int32 {
        let path = logPath(bucket)
        let flags = O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC | (create ? O_CREAT : 0)
        let fd = openat(dir, Files.baseName(path), flags, Files.fileMode)
        if fd < 0 && !(errno == ENOENT && !create) {
            Log.warning("duplicate database: \(NestboxFailure.system("open", path))")
        }
        return fd
    }

    /// The database's directory, opened (with `create`, made) level by level from two levels
    /// above (the mail root, for `.nestbox/duplicates`) without following a link: the logs are
    /// never written outside the mail root. nil when it does not exist (and not `create`).
    private func openDirectory(create: Bool) throws -> Int32? {
        let parent = Files.directoryName(directory)
        let base = Files.directoryName(parent)
        let relative = "\(Files.baseName(parent))/\(Files.baseName(directory))"
        return create ? try Files.makeDirectoryBeneath(base, relative) : try Files.openDirectoryBeneath(base, relative)
    }

    static func readAll(_ fd: Int32) throws -> [UInt8] {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw NestboxFailure.system("fstat", "duplicate log") }
        var size = Int(st.st_size)
        var out = [UInt8](repeating: 0, count: size)
        var got = 0
        while true {
            if got == size {  // grown meanwhile: read on
                size += 65536
                out += [UInt8](repeating: 0, count: 65536)
            }
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, size - got, off_t(got)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw NestboxFailure.system("read", "duplicate log")
            }
            if n == 0 { break }
            got += n
        }
        out.removeSubrange(got...)
        return out
    }

    // MARK: Pruning

    /// Removes records older than `age` seconds, and pending records a final one follows;
    /// returns how many records were removed (with `dryRun`, would be).
    @discardableResult
    public func prune(olderThan age: Double, dryRun: Bool = false) throws -> Int {
        // Checked first: nothing is removed through a link (the earlier layout's directories
        // are listed by path).
        guard let dir = try openDirectory(create: false) else { return 0 }
        defer { Glibc.close(dir) }
        var removed = try pruneLegacy(olderThan: age, dryRun: dryRun)
        let oldest = Int64(wallSeconds() - age)
        for bucket in 0..<DuplicateDB.buckets {
            let path = logPath(bucket)
            let fd = openat(dir, Files.baseName(path), O_RDWR | O_NOFOLLOW | O_CLOEXEC)
            if fd < 0 {
                if errno == ENOENT { continue }
                throw NestboxFailure.system("open", path)
            }
            defer { Glibc.close(fd) }
            pthread_mutex_lock(locks + bucket)
            defer { pthread_mutex_unlock(locks + bucket) }
            if !dryRun { while flock(fd, LOCK_EX) != 0 && errno == EINTR {} }
            let bytes = try DuplicateDB.readAll(fd)
            var kept: [UInt8] = []
            var count = 0
            bytes.withUnsafeBufferPointer { buffer in
                var finals = Set<ArraySlice<UInt8>>()
                DuplicateDB.forEachRecord(buffer) { r, _ in
                    if r.kind == .final && r.seconds >= oldest { finals.insert(bytes[r.key]) }
                }
                DuplicateDB.forEachRecord(buffer) { r, line in
                    if r.seconds < oldest || (r.kind == .pending && finals.contains(bytes[r.key])) {
                        count += 1
                    } else {
                        kept.append(10)
                        kept += bytes[line]
                    }
                }
            }
            removed += count
            // A log holding torn lines only is rewritten too (count 0, but shorter).
            guard !dryRun, count > 0 || kept.count + 1 < bytes.count else { continue }
            if kept.isEmpty {
                unlink(path)
            } else {
                try Files.replace(path, with: kept)
            }
        }
        return removed
    }

    // MARK: The earlier layout

    /// A record of the earlier layout: `<xx>/<16 hex>` (`.1` ... after a collision), the key
    /// alone (final) or key, marker and path (pending); its mtime the time of delivery.
    private enum LegacyLookup { case found, notFound, noDirectory }

    private func legacyLookup(_ key: [UInt8]) -> LegacyLookup {
        let h = hexString(withUnsafeBytes(of: DuplicateDB.hash(key).bigEndian) { Array($0) })
        let dir = "\(directory)/\(h.prefix(2))"
        guard Files.isDirectory(dir) else { return .noDirectory }
        let marker = key + [0, UInt8(ascii: "P"), 0]
        for n in 0..<16 {
            let path = n == 0 ? "\(dir)/\(h)" : "\(dir)/\(h).\(n)"
            guard let st = try? Files.status(path) else { return .notFound }
            guard wallSeconds() - Double(st.st_mtim.tv_sec) <= expiry, let stored = try? Files.read(path, limit: 8192) else { continue }
            if stored == key { return .found }
            if stored.count > marker.count && stored.starts(with: marker) {
                return DuplicateDB.messageExists(String(decoding: stored[marker.count...], as: UTF8.self)) ? .found : .notFound
            }
        }
        return .notFound
    }

    /// Removes the earlier layout's records older than `age`, and its directories once empty.
    private func pruneLegacy(olderThan age: Double, dryRun: Bool) throws -> Int {
        var removed = 0
        let now = wallSeconds()
        for sub in try Files.list(directory) ?? [] {
            let dir = "\(directory)/\(sub)"
            guard sub.utf8.count == 2, let st = try Files.status(dir), (st.st_mode & S_IFMT) == S_IFDIR else { continue }
            // A bucket is a real directory, never a link.
            var st2 = stat()
            guard lstat(dir, &st2) == 0, (st2.st_mode & S_IFMT) == S_IFDIR else { continue }
            var left = 0
            for name in try Files.list(dir) ?? [] {
                let path = "\(dir)/\(name)"
                guard let st = try Files.status(path) else { continue }
                if now - Double(st.st_mtim.tv_sec) > age {
                    if !dryRun { Files.removeQuietly(path) }
                    removed += 1
                } else {
                    left += 1
                }
            }
            if left == 0 && !dryRun { rmdir(dir) }
        }
        return removed
    }
}

/// nestbox-lmtpd's index of one log: for each key hash (of the key as written), where the
/// latest whole record with that hash starts. Each lookup first indexes what was appended since
/// the last one (by any process: the log is only ever appended to, until a prune renames a new
/// one over it, which shows as another inode and starts the index again). A key whose hash is
/// not in the index has no record: nothing is read. A hit is read back and its whole key
/// compared; only a final, unexpired record of that very key answers "found" from here. Anything
/// else (another key with the same hash, a pending record, an expired one) reads the whole log
/// as a process without an index does, so the answer is always the one the full read gives.
/// Memory: 8 bytes and the table's overhead per distinct key hash of the log (measured with
/// `bench/lmtp.sh --history 300000`: 3.4 MiB more peak RSS than without the index).
struct LogIndex {
    var device = -1
    var inode = -1
    /// Where the part not yet indexed begins (the LF before a record, or the end).
    var end = 0
    /// FNV-1a 32 of the encoded key -> offset of the record's first byte.
    var latest: [UInt32: UInt32] = [:]

    enum Answer { case found, absent, readTheLog }

    static func hash(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> UInt32 {
        var h: UInt32 = 0x811c9dc5
        for i in range { h = (h ^ UInt32(bytes[i])) &* 0x01000193 }
        return h
    }

    mutating func lookup(_ encodedKey: [UInt8], oldest: Int64, fd: Int32, st: stat) -> Answer {
        guard refresh(fd: fd, st: st) else { return .readTheLog }
        let h = encodedKey.withUnsafeBufferPointer { LogIndex.hash($0, 0..<$0.count) }
        guard let offset = latest[h] else { return .absent }
        guard let line = LogIndex.record(fd, at: Int(offset)) else { return .readTheLog }
        return line.withUnsafeBufferPointer { buffer in
            guard let r = DuplicateDB.parse(buffer, line: 0..<buffer.count), r.kind == .final, r.seconds >= oldest,
                  r.key.count == encodedKey.count,
                  encodedKey.withUnsafeBufferPointer({ memcmp(buffer.baseAddress! + r.key.lowerBound, $0.baseAddress!, $0.count) == 0 })
            else { return .readTheLog }
            return .found
        }
    }

    /// Indexes what was appended since the last look; false when the log cannot be indexed
    /// (not readable, or too big for 32-bit offsets).
    mutating func refresh(fd: Int32, st: stat) -> Bool {
        let size = Int(st.st_size)
        if device != Int(st.st_dev) || inode != Int(st.st_ino) || size < end {
            self = LogIndex()
            (device, inode) = (Int(st.st_dev), Int(st.st_ino))
        }
        guard size > end else { return true }
        guard size < Int(UInt32.max) else { return false }
        guard let bytes = try? Files.pread(fd, count: size - end, offset: end, path: "duplicate log") else {
            self = LogIndex()
            return false
        }
        let base = end
        // `end` only ever moves to an LF: every line start the index uses is one a full read
        // uses. The last line (no LF after it yet) is indexed if it is a whole record, and read
        // again at the next look, as it may still grow: a record appended to it without its LF
        // (a short write) makes it one line no record parses, for a full read as for the index;
        // its entry then leads to a line that does not parse, and the lookup reads the log.
        var done = 0
        bytes.withUnsafeBufferPointer { buffer in
            var at = 0
            while at < buffer.count {
                let start = buffer[at] == 10 ? at + 1 : at
                let next = DuplicateDB.newline(buffer, from: start)
                if let r = DuplicateDB.parse(buffer, line: start..<(next ?? buffer.count)) {
                    latest[LogIndex.hash(buffer, r.key)] = UInt32(base + start)
                }
                guard let next else { break }
                at = next
                done = next
            }
        }
        end = base + done
        return true
    }

    /// The record starting at `offset`, up to its LF or the end of the log.
    static func record(_ fd: Int32, at offset: Int) -> [UInt8]? {
        var out: [UInt8] = []
        var chunk = 512
        while true {
            guard let part = try? Files.pread(fd, count: chunk, offset: offset + out.count, path: "duplicate log") else { return nil }
            if let lf = part.firstIndex(of: 10) {
                out += part[..<lf]
                return out
            }
            out += part
            if part.count < chunk { return out }
            chunk = min(chunk * 4, 1 << 20)
        }
    }
}
