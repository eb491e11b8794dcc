// The duplicate-delivery database (Cyrus's deliver.db): which message has already been
// delivered to which mailbox, so that a retry (Postfix after a lost connection, a mail loop, a
// list sending twice) is not stored twice.
//
// Key: Message-ID, Date (empty when the message has none: unlike Cyrus, such messages are still
// recognised) and the target mailbox. A message without Message-ID is never suppressed.
//
// Storage: one small file per key below `<root>/.nestbox/duplicates/<xx>/`, named by a 64-bit
// hash of the key, holding the whole key. A lookup compares the stored key, so a hash collision
// can never suppress a different message (a collision takes the next name, `<hash>.1`, ...).
// The file's mtime is the time of delivery; entries older than the expiry are ignored by lookups
// and removed by `prune` (nestbox-lmtpd at start and daily; nestbox-purge later).
// Concurrent processes need no lock: a record is one small write, and a half-written one
// never matches a key.
//
// Crash safety: before the message is renamed into new/, a pending record (the key, a marker,
// and the path of its file in new/) is written; after the syncs, the record is made final by
// cutting it back to the key alone (one ftruncate: there is no instant at which the record says
// neither). A pending record suppresses a retry only while the file it names exists, in new/
// or (flags set) in cur/. A record is never truncated to zero and rewritten: new content is
// written over the old from offset 0 and only then cut to its length, so a kill -9 at any
// instant leaves either the old record, the new one, or (while a pending record replaces an
// older one that named a file that is gone) one naming no existing file.
// What a kill -9 of the delivering process leaves, at any instant: the message is either not in
// new/ (no record, or a pending one naming a missing file: the retry is stored) or in new/ with
// a pending or final record (the retry is suppressed); never lost, never stored twice.
// Records are not fsynced (that would cost an fsync per delivery): after a power cut a record
// written in the last seconds may be empty or missing, and a retry of such a message is then
// stored a second time. A power cut never loses an acknowledged message (its file and new/ are
// fsynced before the acknowledgement).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public struct DuplicateDB: Sendable {
    public let directory: String
    public let expiry: Double

    public init(directory: String, expiry: Double) {
        self.directory = directory
        self.expiry = expiry
    }

    public static func key(messageID: String?, date: String?, mailbox: String) -> [UInt8]? {
        guard let id = messageID?.trimmingSpaces(), !id.isEmpty else { return nil }
        return Array("\(id)\u{0}\((date ?? "").trimmingSpaces())\u{0}\(mailbox)".utf8)
    }

    /// FNV-1a, 64 bits: only spreads names; equality is decided on the stored key.
    static func hash(_ key: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf29ce484222325
        for b in key { h = (h ^ UInt64(b)) &* 0x100000001b3 }
        return h
    }

    private func candidates(_ key: [UInt8]) -> (dir: String, base: String) {
        let h = hexString(withUnsafeBytes(of: DuplicateDB.hash(key).bigEndian) { Array($0) })
        return ("\(directory)/\(h.prefix(2))", h)
    }

    /// Whether `key` was delivered within the expiry. A pending record (written between the
    /// message's rename and its syncs) counts only if the message file it names exists.
    public func contains(_ key: [UInt8]) -> Bool {
        let (dir, base) = candidates(key)
        for n in 0..<16 {
            let path = n == 0 ? "\(dir)/\(base)" : "\(dir)/\(base).\(n)"
            guard let st = try? Files.status(path) else { return false }
            guard let stored = try? Files.read(path, limit: 8192) else { continue }
            guard wallSeconds() - Double(st.st_mtim.tv_sec) <= expiry else {
                if stored.starts(with: key) { return false }
                continue
            }
            if stored == key { return true }
            let marker = key + DuplicateDB.pendingMarker
            if stored.count > marker.count && stored.starts(with: marker) {
                return DuplicateDB.messageExists(String(decoding: stored[marker.count...], as: UTF8.self))
            }
        }
        return false
    }

    static let pendingMarker: [UInt8] = [0, UInt8(ascii: "P"), 0]

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
        store(key, content: key + DuplicateDB.pendingMarker + Array(messagePath.utf8))
    }

    /// Makes `key`'s record final (the message is durable), or writes it if there is none.
    /// Failures are only logged.
    public func record(_ key: [UInt8]) {
        store(key, content: key)
    }

    private func store(_ key: [UInt8], content: [UInt8]) {
        do {
            try Files.ensureDirectory(directory)
            let (dir, base) = candidates(key)
            try Files.ensureDirectory(dir)
            let marker = key + DuplicateDB.pendingMarker
            for n in 0..<16 {
                let path = n == 0 ? "\(dir)/\(base)" : "\(dir)/\(base).\(n)"
                if let stored = try Files.read(path, limit: 8192) {
                    let ours = stored == key || stored.starts(with: marker)
                    let expired = (try Files.status(path)).map { wallSeconds() - Double($0.st_mtim.tv_sec) > expiry } ?? true
                    if ours || expired {
                        try write(content, to: path, over: stored)
                        return
                    }
                    continue
                }
                try write(content, to: path, over: nil)
                return
            }
            Log.warning("duplicate database: 16 colliding records for one hash in \(dir)")
        } catch {
            Log.warning("duplicate database: \(error)")
        }
    }

    /// Writes the record in place without ever emptying it: the content goes over the old one
    /// from offset 0, then the file is cut to its length. Made final, a pending record is only
    /// cut (its key is its beginning). A reader that sees a record half-written compares
    /// unequal and treats the message as new, which is the safe side.
    private func write(_ content: [UInt8], to path: String, over stored: [UInt8]?) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, Files.fileMode)
        if fd < 0 { throw NestboxFailure.system("create", path) }
        defer { close(fd) }
        let old = stored ?? []
        if !(old.count > content.count && old.starts(with: content)) {
            var written = 0
            while written < content.count {
                let n = content.withUnsafeBytes { pwrite(fd, $0.baseAddress! + written, content.count - written, off_t(written)) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw NestboxFailure.system("write", path)
                }
                written += n
            }
        }
        if old.count > content.count {
            guard ftruncate(fd, off_t(content.count)) == 0 else { throw NestboxFailure.system("truncate", path) }
        }
    }

    /// Removes records older than `age` seconds; returns how many.
    @discardableResult
    public func prune(olderThan age: Double) throws -> Int {
        var removed = 0
        let now = wallSeconds()
        for sub in try Files.list(directory) ?? [] {
            let dir = "\(directory)/\(sub)"
            guard Files.isDirectory(dir) else { continue }  // a bucket is a real directory, never a link
            for name in try Files.list(dir) ?? [] {
                let path = "\(dir)/\(name)"
                guard let st = try Files.status(path) else { continue }
                if now - Double(st.st_mtim.tv_sec) > age {
                    Files.removeQuietly(path)
                    removed += 1
                }
            }
        }
        return removed
    }
}
