// Group commit: deliveries into the same folder that arrive together (several LMTP sessions,
// several recipients) share one uidlist lock, one append, one fdatasync of the uidlist and one
// fsync of new/. The first delivery to arrive for a folder becomes the leader and commits
// everything queued for that folder, its own included; those that arrive meanwhile wait and
// are committed together in the next round. Every message is still durable (its file fsynced
// before, its name and UID after the round's syncs) before its caller acknowledges it.
//
// A message reaches new/ only while the round holds `dovecot-uidlist.lock`, and its UID is
// appended under that same lock, as Dovecot's own save path does: lock, move the files from
// tmp/ into new/, append their UIDs, unlock. Dovecot scans new/ and cur/ only with that lock
// held, so it never sees a file of ours that the list does not name yet, and never numbers one
// itself (a file numbered by two writers shows up under two UIDs). If the lock cannot be had
// within `lock_timeout`, nothing is moved: every delivery of the round fails temporarily and
// its file stays in tmp/ for its caller to remove.
//
// Only the commit is grouped: each message's file is written and fsynced by its own session
// beforehand (in tmp/), and those fsyncs overlap in the file system's journal by themselves.
// A delivery says it is on its way (`expect`) as soon as its file is synced; a leader that finds
// deliveries on their way to its folder waits for them (at most `gatherWait`) before it takes
// the round, as databases do for group commit: the steps between (duplicate lookup, quota
// check) take far less than the round's two syncs, which they would otherwise wait for anyway.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public final class GroupCommit: @unchecked Sendable {
    public static let shared = GroupCommit()

    /// Why a commit failed, and whether the file had already been moved into new/ (the caller
    /// then removes it from there; otherwise it is still at its tmp/ path).
    public struct Failure: Error, CustomStringConvertible {
        public let moved: Bool
        public let error: Error
        public var description: String { "\(error)" }
    }

    /// One delivery's part: its file in tmp/ and its final stem in; its UID (or the round's
    /// failure) out.
    final class Ticket {
        let source: String
        let stem: String
        /// Where the message is counted, and its size.
        let quota: QuotaRoot?
        let size: Int64
        var done = false
        var moved = false
        var uid: UInt32? = nil
        var failure: Error? = nil
        init(source: String, stem: String, quota: QuotaRoot?, size: Int64) {
            self.source = source
            self.stem = stem
            self.quota = quota
            self.size = size
        }
    }

    private var mutex = pthread_mutex_t()
    private var changed = pthread_cond_t()
    private var queues: [String: [Ticket]] = [:]
    private var committing: Set<String> = []
    /// Rounds taken so far (for tests and statistics).
    private(set) var rounds = 0
    /// Deliveries on their way to `commit`, per folder path.
    private var coming: [String: Int] = [:]
    /// The longest a leader waits for deliveries on their way.
    static let gatherWait: Int = 2_000_000  // nanoseconds

    /// Says that a delivery into `folder` will call `commit` shortly (its file is synced); it
    /// must then call `commit(..., expected: true)` or `unexpect`.
    public func expect(_ folder: Folder) {
        pthread_mutex_lock(&mutex)
        coming[folder.path, default: 0] += 1
        pthread_mutex_unlock(&mutex)
    }

    /// Withdraws an `expect` (the delivery ended before its commit: a duplicate, a refusal).
    public func unexpect(_ folder: Folder) {
        pthread_mutex_lock(&mutex)
        arrived(folder.path)
        pthread_cond_broadcast(&changed)
        pthread_mutex_unlock(&mutex)
    }

    /// Under the mutex.
    private func arrived(_ path: String) {
        if let n = coming[path] { coming[path] = n > 1 ? n - 1 : nil }
    }

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&changed, nil)
    }

    /// Moves `source` (a file in `folder`/tmp, written and fsynced) to `folder`/new/`stem` and
    /// numbers it, with whatever else is queued for the folder. Returns its UID (nil when the
    /// uidlist could not be written after the move: the message is delivered all the same, and
    /// Dovecot numbers it when it next looks). Throws `Failure` when the message is not
    /// delivered: the lock could not be had, the move failed, or new/ could not be made durable.
    /// `quota` (with the message's `size`) is the maildirsize the message counts in; its delta
    /// is appended under the lock, just before the move, and taken back if the move fails.
    /// The round's uidlist session waits for the lock as its leader's `lockPolicy` says.
    public func commit(_ source: String, as stem: String, in folder: Folder, label: String,
                       quota: QuotaRoot? = nil, size: Int64 = 0,
                       lockPolicy: DotLock.Options = DotLock.Options(), expected: Bool = false) throws -> UInt32? {
        let ticket = Ticket(source: source, stem: stem, quota: quota, size: size)
        pthread_mutex_lock(&mutex)
        queues[folder.path, default: []].append(ticket)
        if expected {
            arrived(folder.path)
            pthread_cond_broadcast(&changed)  // a leader may be waiting for this one
        }
        while !ticket.done {
            if committing.contains(folder.path) {
                pthread_cond_wait(&changed, &mutex)
                continue
            }
            committing.insert(folder.path)
            if coming[folder.path] != nil {
                var deadline = timespec()
                clock_gettime(CLOCK_REALTIME, &deadline)
                deadline.tv_nsec += GroupCommit.gatherWait
                if deadline.tv_nsec >= 1_000_000_000 {
                    deadline.tv_sec += 1
                    deadline.tv_nsec -= 1_000_000_000
                }
                while coming[folder.path] != nil {
                    if pthread_cond_timedwait(&changed, &mutex, &deadline) == ETIMEDOUT { break }
                }
            }
            let round = queues.removeValue(forKey: folder.path) ?? []
            rounds += 1
            pthread_mutex_unlock(&mutex)
            GroupCommit.commitRound(round, folder: folder, label: label, lockPolicy: lockPolicy)
            pthread_mutex_lock(&mutex)
            committing.remove(folder.path)
            pthread_cond_broadcast(&changed)
        }
        pthread_mutex_unlock(&mutex)
        if let failure = ticket.failure { throw Failure(moved: ticket.moved, error: failure) }
        return ticket.uid
    }

    /// One round: under the lock, the quota deltas, the moves and the UIDs (held for
    /// microseconds: no fsync inside); then the syncs. The uidlist's fdatasync goes first: it
    /// commits the file system's journal with the renames in it, so the fsync of new/ after it
    /// has (on ext4) nothing left to wait for.
    static func commitRound(_ round: [Ticket], folder: Folder, label: String,
                            lockPolicy: DotLock.Options = DotLock.Options()) {
        defer { for t in round { t.done = true } }
        // The folder, tmp/ and new/ opened level by level from the mail root, no link followed:
        // the moves are made relative to these descriptors, so they land in this folder or
        // nowhere; and the folder must still be at its path once locked (not renamed by an IMAP
        // client meanwhile), so that the UIDs go to the list beside the files.
        let folderFD: Int32, tmpFD: Int32, newFD: Int32
        do {
            guard let (fd, fds) = try folder.openDirectories(["tmp", "new"]) else {
                throw NestboxFailure(.temporary, "\(folder.path): folder vanished during delivery")
            }
            (folderFD, tmpFD, newFD) = (fd, fds[0], fds[1])
        } catch {
            for t in round { t.failure = error }
            return
        }
        defer {
            close(folderFD)
            close(tmpFD)
            close(newFD)
        }
        let session: UIDListSession
        let prepared: UIDListFile.PreparedAppend
        do {
            session = try folder.beginUIDListSession(options: lockPolicy)
            guard Folder.sameDirectory(folderFD, folder.path) else {
                session.finish()
                throw NestboxFailure(.temporary, "\(folder.path): folder renamed or replaced during delivery")
            }
            // A list that could not take the new UIDs defers the round before anything moves.
            do { prepared = try session.prepareAppend() } catch { session.finish(); throw error }
        } catch {
            for t in round { t.failure = error }
            return
        }
        // Counted before they are moved: a kill in between over-counts (repaired by the
        // Maildir++ recalculation rules when it matters), never under-counts.
        count(round, sign: 1, label: label)
        var moved: [Ticket] = []
        var failed: [Ticket] = []
        for t in round {
            if renameat(tmpFD, Files.baseName(t.source), newFD, t.stem) == 0 {
                t.moved = true
                moved.append(t)
            } else {
                t.failure = NestboxFailure.system("rename \(t.source) to", "\(folder.path)/new/\(t.stem)")
                failed.append(t)
            }
        }
        count(failed, sign: -1, label: label)
        var listFD: Int32 = -1
        do {
            let uids = try session.append(moved.map { $0.stem }, prepared: prepared, keepOpen: { listFD = $0 })
            for (t, uid) in zip(moved, uids) { t.uid = uid }
        } catch {
            // The files are in new/ and nobody else has numbered them: Dovecot gives them
            // their UIDs at its next sync, under this same lock.
            Log.warning("\(label): no UID recorded yet (Dovecot assigns one when it next looks): \(error)")
        }
        session.finish()
        guard !moved.isEmpty else { return }
        if listFD >= 0 {
            do { try Files.fdatasync(listFD, path: folder.uidList.path) } catch { Log.warning("\(label): \(error)") }
            close(listFD)
        }
        do {
            try Files.fsync(newFD, path: "\(folder.path)/new")
        } catch {
            for t in moved { t.failure = error }
        }
    }

    /// Appends the tickets' quota deltas, one line per maildirsize; failures are only logged
    /// (the next recalculation repairs the usage).
    static func count(_ tickets: [Ticket], sign: Int64, label: String) {
        var sums: [String: (QuotaRoot, Int64, Int64)] = [:]
        for t in tickets {
            guard let q = t.quota else { continue }
            let s = sums[q.path] ?? (q, 0, 0)
            sums[q.path] = (q, s.1 + sign * t.size, s.2 + sign)
        }
        for (quota, bytes, messages) in sums.values {
            do {
                try quota.append(bytes: bytes, messages: messages)
            } catch {
                Log.warning("\(label): maildirsize not updated by \(bytes) bytes, \(messages) messages: \(error)")
            }
        }
    }
}
