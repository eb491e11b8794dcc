// mbox: reading a mail spool file and removing messages from it, for nestbox-purge.
//
// Format (STORAGE-FORMAT.md section 3). A message starts at a From_ line (`From <sender>
// <asctime>`) at the start of the file or right after an empty line; the line must parse as a
// From_ line with a date (MboxParse.swift), as Dovecot requires, so Postfix's `>From ` quoting
// and a stray `From ` body line both stay inside their message. Content-Length is not trusted
// (Dovecot ignores it unless it points exactly at the next From_ line; Postfix never writes
// one). The first message is the UW-IMAP/Dovecot pseudo-message when its Subject is `DON'T
// DELETE THIS MESSAGE -- FOLDER INTERNAL DATA` or it has an `X-IMAP:` header: never counted,
// never a candidate, always kept byte for byte.
//
// A message's bytes run from its From_ line up to the next From_ line, the separating empty
// line included, so the kept messages concatenated in order are a valid mbox again: every
// message but the file's last ends with "\n\n", and the file's last message, if kept, stays
// last with whatever ending it had. Nothing inside a kept message is changed (X-UID, Status,
// X-Keywords, From_ line, all of it). One exception, and it only adds bytes: Dovecot keeps
// UIDVALIDITY and the next UID in `X-IMAPbase:` of the first real message when there is no
// pseudo-message. Removing that message would make Dovecot give the folder a new UIDVALIDITY
// and renumber every survivor (clients download everything again). So when the message
// carrying X-IMAPbase goes, a pseudo-message with `X-IMAP: <the same value>` is put first,
// the UW-IMAP way, which Dovecot reads the same (it parses X-IMAP as X-IMAPbase and hides the
// message).
//
// Purge, in this order:
// 1. take the locks in the caller's order (MboxLock.swift), re-check that the path is still
//    the inode we locked, then read the whole file through that one descriptor and scan it:
//    under the locks, never before, so what a delivery appended before we got them is seen
//    and kept;
// 2. write the survivors to `.<name>.nestbox-purge` in the same directory (a leftover of a
//    crash there is removed first: only a lock holder writes it), give it the mbox's owner,
//    group and mode (fchown, fchmod), take the same kernel locks on it, fsync it;
// 3. if the old file grew meanwhile (a writer that does not use our locks), copy the new tail;
// 4. rename it over the mbox, fsync the directory; copy any tail that reached the old inode
//    in between (same reason), then drop the kernel locks of both and the dotlock last.
// A kill at any instant leaves the old file (before the rename) or the complete new one
// (after): never a truncated mbox. At worst the temporary file is left, to be replaced by the
// next purge.
//
// Why a delivery cannot be lost (facts from Postfix's src/global/mbox_open.c and
// dot_lockfile.c): Postfix local(8) and virtual(8) take the dotlock FIRST whatever the order in
// `mailbox_delivery_lock` (Debian's default "fcntl, dotlock"), before they even open the mbox:
// `<mbox>.lock` created O_EXCL, empty, mode 0, retried deliver_lock_attempts (20) times every
// deliver_lock_delay (1 s), broken when its ctime is older than stale_lock_time (500 s), and
// on EEXIST the delivery is deferred (4.2.0), not lost. While we hold the dotlock (from before
// the scan until after the rename and the directory fsync) no Postfix delivery has the mbox
// open. Without a dotlock (a site that lists only fcntl or flock, or a dotlock Postfix could not
// create in a read-only directory), Postfix opens the old inode and polls its kernel lock,
// which we keep on the OLD inode until after the rename; once it gets it, it fstat()s and
// defers with "file status changed unexpectedly" because st_nlink is no longer 1. A deliverer
// that opens the path right after the rename finds the new inode kernel-locked by us until we
// are done. Dovecot (mbox_write_locks "fcntl dotlock") re-opens the mbox after taking its
// dotlock when the path names another inode (mbox_file_open_latest) and then resyncs from the
// X-UID/X-IMAPbase headers, which we keep. A writer that takes none of the listed locks is out
// of reach of any locking; step 3 and 4's tail copies catch what it appends while we work.
// Lock order: a peer that takes the same locks in another order can make both wait; each side's
// timeout then ends it (ours with a temporary failure), nothing is written half.
//
// A dry run takes no dotlock (it would create a file) and takes the kernel locks shared
// (F_RDLCK, LOCK_SH): it never waits behind another reader, only behind a writer, and it
// changes nothing on disk.
//
// The rewrite needs to create and rename files in the mbox's directory. When it cannot
// (/var/mail 2775 root:mail or 1777 and we are neither root nor the file's owner), purge fails
// before touching anything with a configuration failure naming the directory: rewriting in
// place is exactly what a crash turns into a truncated mailbox.
//
// The whole file is read into memory (the spool files purge works on are read once, under the
// lock, and written once).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public struct MboxMessage: Sendable, Equatable {
    /// 0-based among the real messages (the pseudo-message is not counted).
    public var index: Int
    /// Of its From_ line.
    public var offset: Int64
    /// From its From_ line up to the next message's From_ line (the separating empty line
    /// included), or to the end of the file for the last one.
    public var length: Int64
    public var envelopeSender: String
    /// From the From_ line (local time unless it names a numeric zone, as Dovecot reads it).
    public var envelopeDate: Int64?
    /// From the Date: header; nil when absent or unparsable.
    public var headerDate: Int64?
    /// The message's bytes without its From_ line and without the separating empty line: the
    /// message as delivered plus the IMAP state headers Dovecot added (X-UID, Status...). Not
    /// Dovecot's RFC822.SIZE, which hides those headers and counts CRLF line ends.
    public var size: Int64
    /// Letters of Status: (R, O).
    public var status: String
    /// Letters of X-Status: (A, D, F, T).
    public var xStatus: String
    /// X-UID:, when Dovecot or UW-IMAP has written one.
    public var uid: UInt32?
    /// X-Keywords: (space separated).
    public var keywords: String
    public var messageID: String?

    public var deleted: Bool { xStatus.contains("D") }
    public var flagged: Bool { xStatus.contains("F") }
    public var seen: Bool { status.contains("R") }
    public var answered: Bool { xStatus.contains("A") }
}

public struct MboxPurgeResult: Equatable, Sendable {
    /// Real messages and file bytes before the purge.
    public var messages: Int64
    public var bytes: Int64
    public var removedMessages: Int64
    public var removedBytes: Int64
    /// The messages removed (a dry run: those that would be).
    public var removed: [MboxMessage]

    public var remainingMessages: Int64 { messages - removedMessages }
    /// The file's size after the purge, before any pseudo-message added to keep X-IMAPbase.
    public var remainingBytes: Int64 { bytes - removedBytes }

    public init(messages: Int64, bytes: Int64, removedMessages: Int64, removedBytes: Int64, removed: [MboxMessage] = []) {
        self.messages = messages
        self.bytes = bytes
        self.removedMessages = removedMessages
        self.removedBytes = removedBytes
        self.removed = removed
    }
}

/// One file as scanned: the real messages, where the pseudo-message is, and who carries
/// X-IMAPbase.
struct MboxLayout {
    var messages: [MboxMessage] = []
    /// Bytes of the pseudo-message (offset 0) when there is one.
    var pseudoLength: Int = 0
    /// Index (among `messages`) and value of the X-IMAPbase header, if a real message has one.
    var imapBase: (index: Int, value: String)?
}

public enum Mbox {
    static let pseudoSubject = "DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA"

    /// Reads every message (the pseudo-message skipped) without changing anything and without
    /// locks. A missing file is a failure (userUnknown row, "No such mailbox"); a file that
    /// does not start with a From_ line a data error naming the file and line 1.
    public static func scan(path: String) throws -> [MboxMessage] {
        try requireExisting(path)
        guard let fd = try Files.openForReading(path) else { try requireExisting(path); return [] }
        defer { Glibc.close(fd) }
        return try layout(of: try readAll(fd, path: path), path: path).messages
    }

    /// Removes the messages for which `predicate` holds (never the pseudo-message) with the
    /// locks and order `locks` under `options.timeout` (all of them together), crash-safe as
    /// written at the top of this file. `dryRun`: no dotlock, kernel locks shared, nothing
    /// written; returns what would go. Failures: no such file (userUnknown row), not an mbox
    /// (dataError), lock timeout (temporary), directory or file we may not replace (config).
    public static func purge(path: String, locks: [MboxLock], options: DotLock.Options, dryRun: Bool,
                             where predicate: (MboxMessage) -> Bool) throws -> MboxPurgeResult {
        if !dryRun {
            guard !locks.isEmpty else {
                throw NestboxFailure(.config, "purge \(path): no mbox lock method configured")
            }
            try requireExisting(path)
            try requireReplaceable(path)
        }
        let session = try MboxLockSession.acquire(path, locks: locks, options: options, exclusive: !dryRun)
        defer { session.release() }
        let data = try readAll(session.fd, path: path)
        let layout = try layout(of: data, path: path)
        let chosen = layout.messages.filter(predicate)
        let result = MboxPurgeResult(messages: Int64(layout.messages.count), bytes: Int64(data.count),
                                     removedMessages: Int64(chosen.count),
                                     removedBytes: chosen.reduce(0) { $0 + $1.length }, removed: chosen)
        guard !dryRun, !chosen.isEmpty else { return result }
        session.touch()

        let gone = Set(chosen.map(\.index))
        var out: [UInt8] = []
        out.reserveCapacity(data.count - Int(result.removedBytes) + 1024)
        if let base = layout.imapBase, gone.contains(base.index) {
            out += pseudoMessage(imapValue: base.value)
        }
        out += data[0..<layout.pseudoLength]
        for m in layout.messages where !gone.contains(m.index) {
            out += data[Int(m.offset)..<Int(m.offset + m.length)]
        }
        try replace(session, with: out, consumed: data.count)
        return result
    }

    // MARK: - reading

    static func requireExisting(_ path: String) throws {
        var st = stat()
        if lstat(path, &st) == 0 { return }
        let code = errno
        if code == ENOENT || code == ENOTDIR {
            throw NestboxFailure(.userUnknown.with(text: "No such mailbox"), "open \(path): \(errnoText(code))")
        }
        throw NestboxFailure.system("stat", path, errno: code)
    }

    static func readAll(_ fd: Int32, path: String) throws -> [UInt8] {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw NestboxFailure.system("fstat", path) }
        var out = try Files.pread(fd, count: Int(st.st_size), offset: 0, path: path)
        // Grown since the fstat (a writer without our locks): take it all.
        while true {
            let more = try Files.pread(fd, count: 1 << 20, offset: out.count, path: path)
            if more.isEmpty { break }
            out += more
        }
        return out
    }

    /// Splits `data` into messages. Throws a data error when it is not empty and does not
    /// start with a From_ line.
    static func layout(of data: [UInt8], path: String) throws -> MboxLayout {
        var result = MboxLayout()
        guard !data.isEmpty else { return result }
        return try data.withUnsafeBufferPointer { bytes in
            guard fromLine(bytes, at: 0) != nil else {
                throw NestboxFailure(.dataError.with(text: "Not a mailbox"),
                                     "\(path): line 1: not an mbox (no From_ line with a sender and a date)")
            }
            var starts = [0]
            var search = 0
            let pattern: [UInt8] = Array("\n\nFrom ".utf8)
            while search < bytes.count {
                guard let hit = find(pattern, in: bytes, from: search) else { break }
                let start = hit + 2
                if fromLine(bytes, at: start) != nil { starts.append(start) }
                search = hit + 1
            }
            for (n, start) in starts.enumerated() {
                let end = n + 1 < starts.count ? starts[n + 1] : bytes.count
                let (sender, date, lineEnd) = fromLine(bytes, at: start)!
                let headers = MboxHeaders(bytes, lineEnd..<end)
                if n == 0 && (headers["x-imap"] != nil || headers["subject"] == pseudoSubject) {
                    result.pseudoLength = end
                    continue
                }
                // The separating empty line is not part of the message's size.
                var bodyEnd = end
                if bodyEnd - lineEnd >= 2 && bytes[bodyEnd - 1] == 0x0A && bytes[bodyEnd - 2] == 0x0A {
                    bodyEnd -= 1
                }
                let index = result.messages.count
                if index == 0 && result.pseudoLength == 0, let base = headers["x-imapbase"] {
                    result.imapBase = (index, base)
                }
                result.messages.append(MboxMessage(
                    index: index, offset: Int64(start), length: Int64(end - start),
                    envelopeSender: sender, envelopeDate: date,
                    headerDate: headers["date"].flatMap(MboxDate.parseRFC5322),
                    size: Int64(max(0, bodyEnd - lineEnd)),
                    status: headers["status"] ?? "", xStatus: headers["x-status"] ?? "",
                    uid: headers["x-uid"].flatMap { UInt32($0) }, keywords: headers["x-keywords"] ?? "",
                    messageID: headers["message-id"]))
            }
            return result
        }
    }

    /// The From_ line at `start`: sender, date and the offset after its newline; nil if the
    /// line there is not one.
    static func fromLine(_ bytes: UnsafeBufferPointer<UInt8>, at start: Int) -> (String, Int64?, Int)? {
        let prefix: [UInt8] = Array("From ".utf8)
        guard bytes.count - start >= prefix.count,
              prefix.indices.allSatisfy({ bytes[start + $0] == prefix[$0] }) else { return nil }
        var end = start + prefix.count
        while end < bytes.count && bytes[end] != 0x0A { end += 1 }
        var text = String(decoding: bytes[(start + prefix.count)..<end], as: UTF8.self)
        if text.last == "\r" { text.removeLast() }
        guard let parsed = MboxDate.parseFromLine(text[...]) else { return nil }
        return (parsed.sender, parsed.date, min(end + 1, bytes.count))
    }

    /// The offset of the next `pattern` at or after `from` (memchr for its first byte).
    static func find(_ pattern: [UInt8], in bytes: UnsafeBufferPointer<UInt8>, from: Int) -> Int? {
        guard let base = bytes.baseAddress, let first = pattern.first else { return nil }
        var at = from
        while at + pattern.count <= bytes.count {
            guard let hit = memchr(base + at, Int32(first), bytes.count - at) else { return nil }
            let i = UnsafeRawPointer(hit) - UnsafeRawPointer(base)
            if i + pattern.count > bytes.count { return nil }
            if memcmp(base + i, pattern, pattern.count) == 0 { return i }
            at = i + 1
        }
        return nil
    }

    /// A whole-file fcntl lock of `type` (F_WRLCK, F_RDLCK), without waiting.
    static func fcntlLock(_ fd: Int32, _ type: Int32) -> Int32 {
        var fl = flock(l_type: Int16(type), l_whence: Int16(SEEK_SET), l_start: 0, l_len: 0, l_pid: 0)
        return fcntl(fd, F_SETLK, &fl)
    }

    /// UW-IMAP's pseudo-message, carrying `value` (an X-IMAPbase value: uidvalidity, last UID,
    /// keywords) in X-IMAP.
    static func pseudoMessage(imapValue value: String) -> [UInt8] {
        var now = time(nil)
        var tm = Glibc.tm()
        gmtime_r(&now, &tm)
        // The names by hand, not strftime: fixed English names whatever the locale.
        let days = "Sun Mon Tue Wed Thu Fri Sat".split(separator: " ")
        let months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(separator: " ")
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let clock = "\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec))"
        let day = days[Int(tm.tm_wday)], month = months[Int(tm.tm_mon)], year = tm.tm_year + 1900
        let text = """
        From MAILER-DAEMON \(day) \(month) \(tm.tm_mday < 10 ? " " : "")\(tm.tm_mday) \(clock) \(year)
        Date: \(day), \(tm.tm_mday) \(month) \(year) \(clock) +0000
        From: Mail System Internal Data <MAILER-DAEMON@\(Host.name)>
        Subject: \(pseudoSubject)
        Message-ID: <\(now)@\(Host.name)>
        X-IMAP: \(value)
        Status: RO

        This text is part of the internal format of your mail folder, and is not
        a real message.  It is created automatically by the mail system software.
        If deleted, the folder will lose some of its internal data.


        """
        return Array(text.utf8)
    }

    // MARK: - writing

    /// The name of the temporary file for `path`: hidden, in the same directory.
    static func temporaryPath(_ path: String) -> String {
        "\(Files.directoryName(path))/.\(Files.baseName(path)).nestbox-purge"
    }

    /// Fails with a configuration error, before any lock is taken, when we may not create and
    /// rename files in the mbox's directory (see the top of this file).
    static func requireReplaceable(_ path: String) throws {
        let dir = Files.directoryName(path)
        if faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) != 0 {
            throw NestboxFailure(.config, "purge \(path): directory \(dir) is not writable by uid \(geteuid()) "
                                 + "(\(errnoText(errno))); the mbox is replaced through a temporary file and "
                                 + "rename, never rewritten in place: run the purge as root or as the directory's owner")
        }
        var d = stat(), f = stat()
        guard lstat(dir, &d) == 0, lstat(path, &f) == 0 else { return }
        let me = geteuid()
        if (d.st_mode & S_ISVTX) != 0 && me != 0 && me != d.st_uid && me != f.st_uid {
            throw NestboxFailure(.config, "purge \(path): \(dir) is sticky and \(path) belongs to uid \(f.st_uid), "
                                 + "not to uid \(me): it cannot be replaced; run the purge as root or as its owner")
        }
        if me != 0 && me != f.st_uid {
            throw NestboxFailure(.config, "purge \(path): owned by uid \(f.st_uid); uid \(me) cannot give the "
                                 + "rewritten file that owner: run the purge as root or as the mailbox's owner")
        }
    }

    private static func replace(_ session: MboxLockSession, with contents: [UInt8], consumed: Int) throws {
        let path = session.path
        let tmp = temporaryPath(path)
        if unlink(tmp) != 0 && errno != ENOENT { throw NestboxFailure.system("remove", tmp) }
        let fd = Glibc.open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd < 0 {
            let code = errno
            if code == EACCES || code == EPERM || code == EROFS {
                throw NestboxFailure(.config, "create \(tmp): \(errnoText(code))")
            }
            throw NestboxFailure.system("create", tmp, errno: code)
        }
        var renamed = false
        defer {
            if !renamed { Files.removeQuietly(tmp) }
            Glibc.close(fd)  // after the rename and the tail copy: a deliverer waits on it till then
        }
        let old = session.status
        if fchown(fd, old.st_uid, old.st_gid) != 0 {
            throw NestboxFailure(.config, "chown \(tmp) to \(old.st_uid):\(old.st_gid) (the owner of \(path)): \(errnoText(errno))")
        }
        if fchmod(fd, old.st_mode & 0o7777) != 0 { throw NestboxFailure.system("chmod", tmp) }
        _ = fcntlLock(fd, F_WRLCK)  // nobody else knows this file yet: cannot fail but by a bug
        _ = systemFlock(fd, LOCK_EX | LOCK_NB)
        try Files.writeAll(fd, contents, path: tmp)
        let copied = try copyTail(from: session.fd, path: path, after: consumed, to: fd, tmp: tmp)
        try Files.fsync(fd, path: tmp)
        session.touch()
        try Files.rename(tmp, path)
        renamed = true
        try Files.fsyncDirectory(Files.directoryName(path))
        let late = try copyTail(from: session.fd, path: path, after: copied, to: fd, tmp: path)
        if late > copied {
            Log.warning("\(path): \(late - copied) bytes appended without our locks during the purge, copied after the rename")
            try Files.fsync(fd, path: path)
        }
    }

    /// Copies what the old file holds past `after` to the end of `to`; returns the old file's
    /// length copied up to.
    private static func copyTail(from old: Int32, path: String, after: Int, to fd: Int32, tmp: String) throws -> Int {
        var done = after
        while true {
            let more = try Files.pread(old, count: 1 << 20, offset: done, path: path)
            if more.isEmpty { return done }
            if done == after { Log.warning("\(path): grew by a writer that does not take our locks; keeping its bytes") }
            if lseek(fd, 0, SEEK_END) < 0 { throw NestboxFailure.system("seek", tmp) }
            try Files.writeAll(fd, more, path: tmp)
            done += more.count
        }
    }
}
