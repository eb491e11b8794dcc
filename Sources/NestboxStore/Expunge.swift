// Expunge: removing messages from a folder the way Dovecot does, so that the UIDs of every other
// message, N and UIDVALIDITY stay as they are and the quota stays exact.
//
// In this order, all under the folder's uidlist lock (UIDListSession.swift):
// 1. list new/ and cur/ and choose the messages (by UID, or by a predicate such as \Deleted);
// 2. unlink their files (relative to new/ and cur/, in a second thread while the listing goes
//    on: Unlinker.swift, four of them), then fsync new/ and cur/. Dovecot renames files to change flags
//    without the uidlist lock, so a file not found under its scanned name is looked for again by
//    its stem in new/ and cur/; one that is really gone was removed (and uncounted) by someone
//    else and is not counted again;
// 3. rewrite dovecot-uidlist without their records (through dovecot-uidlist.tmp and rename;
//    N unchanged, so the UIDs are never given again);
// 4. append the negative delta `-<bytes> -<count>` to the mail root's maildirsize in one
//    O_APPEND write, only if the file exists (no maildirsize: no quota).
// A crash after 2 leaves records without files (Dovecot drops them at its next sync) and a
// quota that over-counts, which the Maildir++ recalculation repairs; never a record naming a
// file that another message reused, nor a usage below the truth. Bytes are counted as the quota
// counts them: the `,S=` of the name, or the file's size when the name has none.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public struct ExpungeResult: Equatable, Sendable {
    /// The messages whose files were removed here.
    public var removed: [ScannedMessage]
    /// The uidlist records dropped (including those of requested UIDs whose file was gone).
    public var records: [UIDList.Record]
    /// What was taken off the quota.
    public var bytes: Int64
    public var count: Int64
}

extension Folder {
    /// Expunges the messages with `uids`; unknown UIDs are ignored.
    @discardableResult
    public func expunge(uids: Set<UInt32>, options: DotLock.Options, counting: QuotaCounting = .dovecot) throws -> ExpungeResult {
        try expunge(options: options, records: uids, counting: counting) { m in m.uid.map { uids.contains($0) } ?? false }
    }

    /// Expunges every message (recorded or not) for which `predicate` holds, e.g.
    /// `{ $0.has(.deleted) }`. With `predicateSeesUIDs` false the predicate is given the
    /// messages without their UIDs (nil), and the list is read while the last unlinks run
    /// instead of before the first (nestbox-purge, which selects by flags, size and date).
    @discardableResult
    public func expunge(options: DotLock.Options, counting: QuotaCounting = .dovecot, predicateSeesUIDs: Bool = true,
                        where predicate: (ScannedMessage) -> Bool) throws -> ExpungeResult {
        try expunge(options: options, records: [], counting: counting, listFirst: predicateSeesUIDs, predicate)
    }

    private func expunge(options: DotLock.Options, records wanted: Set<UInt32>, counting: QuotaCounting,
                         listFirst: Bool = true, _ predicate: (ScannedMessage) -> Bool) throws -> ExpungeResult {
        _ = try checkLinks()  // nothing is unlinked through a symbolic link below the mail root
        let session = try beginUIDListSession(options: options)
        defer { session.finish() }
        let listRead = listFirst || !wanted.isEmpty  // requested UIDs are matched during the scan
        var list = listRead ? try session.read() : nil
        // Each chosen file is unlinked (relative to new/ or cur/, opened here) by other threads
        // while the listing goes on: the removal then takes about as long as the unlinks alone,
        // and less on a disk that discards freed blocks (their waits overlap).
        let subdirectories = ["new", "cur"]
        var directories: [Int32?] = []
        defer { for case let fd? in directories { close(fd) } }
        for sub in subdirectories { directories.append(try Files.openDirectory("\(path)/\(sub)")) }
        let unlinker = Unlinker(ahead: 4096, threads: 4)
        var chosen: [ScannedMessage] = []
        var found = Set<UInt32>()  // requested UIDs whose file is there
        do {
            try FolderScan.forEachMessage(self, uids: list?.uidsByStem() ?? [:], session: session, trustNames: true) { m in
                if let uid = m.uid, wanted.contains(uid) { found.insert(uid) }
                guard predicate(m) else { return }
                if let fd = directories[subdirectories.firstIndex(of: m.subdirectory)!] {
                    unlinker.unlink(in: fd, Files.baseName(m.path), tag: chosen.count)
                } else {
                    unlinker.unlink(in: AT_FDCWD, m.path, tag: chosen.count)
                }
                chosen.append(m)
            }
            if !listRead {  // read under the same lock while the unlinks go on
                list = try session.read()
                let uids = list?.uidsByStem() ?? [:]
                for i in chosen.indices { chosen[i].uid = uids[chosen[i].name.stem] }
            }
        } catch {
            _ = unlinker.finish()
            throw error
        }
        // A file not found under its listed name was renamed meanwhile (a flag change) or
        // removed by someone else: looked for again by its stem. Any other failure is reported
        // after the records of what did go are dropped.
        var failed: [Int: Int32] = [:]
        for f in unlinker.finish() { failed[f.tag] = f.code }
        var removed: [ScannedMessage] = []
        var bytes: Int64 = 0
        var counted: Int64 = 0
        var touched: Set<String> = []
        var failure: Error?
        let folderDirectory = Files.baseName(path)
        for (i, found) in chosen.enumerated() {
            var m = found
            if let code = failed[i] {
                session.keepAlive()
                do {
                    guard code == ENOENT else { throw NestboxFailure.system("unlink", m.path, errno: code) }
                    guard let gonePath = try unlinkMessage(m) else { continue }
                    if gonePath != m.path {  // as it was found
                        m.path = gonePath
                        m.subdirectory = Files.baseName(Files.directoryName(gonePath))
                        m.name = MaildirName(Files.baseName(gonePath))
                    }
                } catch {
                    if failure == nil { failure = error }
                    continue
                }
            }
            removed.append(m)
            // Only what the quota counted is taken off it (Courier's counting leaves out Trash
            // and T-flagged files: taking them off would put the usage below the truth).
            if QuotaRoot.counts(m.name, inFolderDirectory: folderDirectory, counting) {
                bytes += m.name.size ?? max(m.size, 0)
                counted += 1
            }
            touched.insert(m.subdirectory)
        }
        for sub in touched.sorted() { try Files.fsyncDirectory("\(path)/\(sub)") }
        // In UID order (the scan gave directory order).
        removed.sort { a, b in
            let (x, y) = (a.uid ?? .max, b.uid ?? .max)
            return x != y ? x < y : a.name.stem < b.name.stem
        }
        // Records to drop: those of the files removed here, and those of requested UIDs whose
        // file was already missing (never one whose file still exists under another name).
        var uids = Set(removed.compactMap(\.uid))
        for uid in wanted.subtracting(found) { uids.insert(uid) }  // a UID with no record is ignored
        let records = try session.remove(uids: uids, read: list)  // read under this same lock
        if counted > 0 {
            do {
                try QuotaRoot(root: mailRoot).append(bytes: -bytes, messages: -counted)
            } catch {
                Log.warning("\(path): maildirsize not updated by -\(bytes) bytes, -\(counted) messages: \(error)")
            }
        }
        if let failure { throw failure }
        return ExpungeResult(removed: removed, records: records, bytes: bytes, count: counted)
    }

    /// Unlinks `m`'s file, following a rename by its stem (a few times at most); returns the
    /// path removed, nil if the file is gone.
    func unlinkMessage(_ m: ScannedMessage) throws -> String? {
        var candidate: String? = m.path
        for _ in 0..<3 {
            guard let p = candidate else { return nil }
            if unlink(p) == 0 { return p }
            guard errno == ENOENT else { throw NestboxFailure.system("unlink", p) }
            candidate = nil
            for sub in ["new", "cur"] {
                if let n = try Files.list("\(path)/\(sub)")?.first(where: { MaildirName($0).stem == m.name.stem }) {
                    candidate = "\(path)/\(sub)/\(n)"
                    break
                }
            }
        }
        return nil
    }
}
