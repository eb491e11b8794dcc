// Which lock covers which file, and what each writer must hold.
//
// Dovecot, our deliveries and our tools share one mail root, so they share Dovecot's locks, all
// dotlocks taken by DotLock's rules (O_CREAT|O_EXCL, `<pid>:<host>`, stale after 120 s without
// change), plus one lock of our own inside a process:
//
// - `dovecot-uidlist.lock` (per folder) covers `dovecot-uidlist` and the folder's message names:
//   every append or rewrite of the list, every move of a file into new/ (GroupCommit.swift: a
//   file that appears in new/ while nobody holds it is numbered by the next Dovecot that syncs,
//   and our later append would give it a second UID), every rename between new/ and cur/
//   (flag changes) and every unlink of a message (expunge). Dovecot scans new/ and cur/ only
//   under it; so must anything that joins files to records and acts on the result (readdir can
//   skip entries while another process renames). Readers of the list alone take no lock.
// - `dovecot-keywords` has no lock of its own: it is written under the same folder's uidlist
//   lock (Keywords.swift), through a temporary file and rename, with an increasing mtime.
// - `dovecot-uidvalidity.lock` (per mail root) covers `dovecot-uidvalidity` and its marker
//   files: taken only to hand out a new UIDVALIDITY when a folder's list is first created,
//   always inside that folder's uidlist lock (never the other way round).
// - `subscriptions.lock` (per mail root) covers `subscriptions`, rewritten by rename.
// - `dovecot-acl.lock` (per folder) covers `dovecot-acl`; Nestbox only reads ACLs so far (no
//   lock), a tool that writes one takes it and renames a temporary file over.
// - `maildirsize` has no lock: deltas are appended with O_APPEND in one write each (Maildir++
//   is made for that) and a recalculation replaces the whole file by rename. A delivery appends
//   its `+` delta under the uidlist lock, just before the move; an expunge appends its `-`
//   delta after the unlinks and the list rewrite, so a crash in between over-counts (repaired by
//   the recalculation rules), never under-counts.
// - In one process (nestbox-lmtpd), deliveries to the same folder are serialized by the group
//   commit (GroupCommit.swift): one leader per folder per round takes the dotlock for everybody
//   queued. Nothing else in a process may take a folder's uidlist lock while the same process
//   can deliver into it without going through that queue: a DotLock names the pid, so a second
//   acquisition by the same process would wait on itself until it looks stale.
//
// Tools (reconstruct, purge, quota, admin) hold a folder's uidlist lock, through a
// `UIDListSession`, for the whole of any change to that folder's files, list or keywords, and
// touch it every 10 s during long work (`keepAlive()`); they give the lock policy (`lock_timeout`) explicitly.
// A session is begun and finished explicitly (`finish()` is also run on deinit, as a net).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

/// A folder's `dovecot-uidlist`, held under `dovecot-uidlist.lock` from `begin` to `finish`:
/// read it whole, append records, rewrite it, remove records. Every method requires the session
/// to be open.
public final class UIDListSession {
    public let folder: Folder
    public let file: UIDListFile
    /// The lock policy the session was begun with, also used for `dovecot-uidvalidity.lock`.
    public let options: DotLock.Options
    private var lock: DotLock?

    /// Takes the folder's uidlist lock, waiting as `options` say.
    public static func begin(_ folder: Folder, options: DotLock.Options) throws -> UIDListSession {
        let file = folder.uidList
        let lock = try file.lock(options: options)
        return UIDListSession(folder: folder, file: file, lock: lock, options: options)
    }

    private init(folder: Folder, file: UIDListFile, lock: DotLock, options: DotLock.Options) {
        self.folder = folder
        self.file = file
        self.lock = lock
        self.options = options
    }

    deinit { finish() }

    public var isOpen: Bool { lock != nil }

    /// Releases the lock. Safe to call twice.
    public func finish() {
        lock?.release()
        lock = nil
    }

    private var lastTouch = monotonicSeconds()

    /// Marks the lock alive during long work: call it as often as convenient (on every file);
    /// it touches the lock once 10 s have passed since the last time (Dovecot's rhythm).
    public func keepAlive() {
        let now = monotonicSeconds()
        guard now - lastTouch >= 10 else { return }
        lastTouch = now
        lock?.touch()
    }

    private func requireOpen() {
        precondition(lock != nil, "uidlist session of \(folder.path) used after finish()")
    }

    /// The whole list; nil when the folder has none yet.
    public func read() throws -> UIDList? {
        requireOpen()
        return try file.read()
    }

    /// Gives `stems` the next UIDs (a stem already recorded keeps its UID) and returns them;
    /// creates the list with a fresh UIDVALIDITY if there is none. With `keepOpen`, the lines
    /// are not fdatasynced: the list's descriptor is handed over for the caller to sync after
    /// `finish()` (the group commit's way; UIDListFile.appendLocked).
    /// Reads the list for an append; throws when it is too damaged to number new files (see
    /// UIDListFile.PreparedAppend).
    public func prepareAppend() throws -> UIDListFile.PreparedAppend {
        requireOpen()
        return try file.prepareAppend()
    }

    public func append(_ stems: [String], prepared: UIDListFile.PreparedAppend? = nil,
                       keepOpen: ((Int32) -> Void)? = nil) throws -> [UInt32] {
        requireOpen()
        return try file.appendLocked(stems, prepared: prepared, keepOpen: keepOpen, uidValidityLock: options)
    }

    /// Replaces the list with `list`, through `dovecot-uidlist.tmp`, fdatasync and rename. Refused
    /// (nothing written) when it would make Dovecot discard the list: another UIDVALIDITY than
    /// the one on disk, a lower N than the effective next UID on disk, UIDs not increasing or
    /// out of range, or a bad file name. `onDisk`: the list as this session last read it (the
    /// lock has been held since, so it is still what is on disk); nil: read it again.
    public func rewrite(_ list: UIDList, onDisk: UIDList? = nil) throws {
        requireOpen()
        var list = list
        if let old = try onDisk ?? file.read() {
            guard old.header.uidValidity == list.header.uidValidity else {
                throw NestboxFailure(.temporary, "\(file.path): rewrite with UIDVALIDITY \(list.header.uidValidity) refused (on disk: \(old.header.uidValidity))")
            }
            guard list.nextUID >= old.nextUID else {
                throw NestboxFailure(.temporary, "\(file.path): rewrite would lower the next UID from \(old.nextUID) to \(list.nextUID)")
            }
        }
        try UIDListSession.validate(list, path: file.path)
        if list.header.version < 3 { list.header.version = 3 }
        list.header.nextUID = list.nextUID
        try file.replaceLocked(list.serialized())
    }

    /// Removes the records of `uids` (those the list holds), keeping every other record, the
    /// UIDVALIDITY and N (which never goes down: the removed UIDs are never given again).
    /// Returns the records removed. `read`: the list as this session read it (see `rewrite`),
    /// so a large list is not parsed again; nil: read it now.
    @discardableResult
    public func remove(uids: Set<UInt32>, read: UIDList? = nil) throws -> [UIDList.Record] {
        requireOpen()
        guard !uids.isEmpty, var list = try read ?? file.read() else { return [] }
        let onDisk = list
        let next = list.nextUID
        let removed = list.records.filter { uids.contains($0.uid) }
        guard !removed.isEmpty else { return [] }
        list.records.removeAll { uids.contains($0.uid) }
        list.header.nextUID = next
        try rewrite(list, onDisk: onDisk)
        return removed
    }

    static func validate(_ list: UIDList, path: String) throws {
        do {
            try list.header.validate()
            var last: UInt32 = 0
            for (i, r) in list.records.enumerated() {
                _ = try r.validated(i + 2)
                if r.uid <= last { throw UIDList.Corrupt(line: i + 2, reason: "uid \(r.uid) not above \(last)") }
                last = r.uid
            }
        } catch let corrupt as UIDList.Corrupt {
            throw NestboxFailure(.temporary, "\(path): rewrite refused: \(corrupt)")
        }
    }
}

extension Folder {
    /// Begins a locked uidlist session on this folder (see UIDListSession).
    public func beginUIDListSession(options: DotLock.Options) throws -> UIDListSession {
        try UIDListSession.begin(self, options: options)
    }
}
