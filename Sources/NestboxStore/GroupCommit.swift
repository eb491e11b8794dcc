// Group commit: deliveries into the same folder that arrive together (several LMTP sessions,
// several recipients) share one uidlist lock, one append, one fdatasync of the uidlist and one
// fsync of new/. The first delivery to arrive for a folder becomes the leader and commits
// everything queued for that folder, its own included; those that arrive meanwhile wait and
// are committed together in the next round. Every message is still durable (its file fsynced
// before, its name and UID after the round's syncs) before its caller acknowledges it.
//
// Only the commit is grouped: each message's file is written and fsynced by its own session
// beforehand, and those fsyncs overlap in the file system's journal by themselves.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public final class GroupCommit: @unchecked Sendable {
    public static let shared = GroupCommit()

    /// One delivery's part: its file's stem in; its UID (or the round's failure) out.
    final class Ticket {
        let stem: String
        var done = false
        var uid: UInt32? = nil
        var failure: Error? = nil
        init(stem: String) { self.stem = stem }
    }

    private var mutex = pthread_mutex_t()
    private var changed = pthread_cond_t()
    private var queues: [String: [Ticket]] = [:]
    private var committing: Set<String> = []

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&changed, nil)
    }

    /// Commits `stem` (already renamed into `folder`/new) with whatever else is queued for the
    /// folder. Returns its UID (nil when the uidlist could not be updated: the message is still
    /// delivered, Dovecot numbers it later); throws when new/ could not be made durable.
    public func commit(_ stem: String, in folder: Folder, label: String) throws -> UInt32? {
        let ticket = Ticket(stem: stem)
        pthread_mutex_lock(&mutex)
        queues[folder.path, default: []].append(ticket)
        while !ticket.done {
            if committing.contains(folder.path) {
                pthread_cond_wait(&changed, &mutex)
                continue
            }
            committing.insert(folder.path)
            let round = queues.removeValue(forKey: folder.path) ?? []
            pthread_mutex_unlock(&mutex)
            GroupCommit.commitRound(round, folder: folder, label: label)
            pthread_mutex_lock(&mutex)
            committing.remove(folder.path)
            pthread_cond_broadcast(&changed)
        }
        pthread_mutex_unlock(&mutex)
        if let failure = ticket.failure { throw failure }
        return ticket.uid
    }

    /// One round: the UIDs under the lock (held for microseconds: no fsync inside), then the
    /// syncs. The uidlist's fdatasync goes first: it commits the file system's journal with the
    /// renames in it, so the fsync of new/ after it has (on ext4) nothing left to wait for.
    static func commitRound(_ round: [Ticket], folder: Folder, label: String) {
        var listFD: Int32 = -1
        do {
            let lock = try folder.uidList.lock()
            defer { lock.release() }
            let uids = try folder.uidList.appendLocked(round.map { $0.stem }, keepOpen: { listFD = $0 })
            for (t, uid) in zip(round, uids) { t.uid = uid }
        } catch {
            Log.warning("\(label): no UID recorded yet (Dovecot assigns one when it next looks): \(error)")
        }
        if listFD >= 0 {
            do { try Files.fdatasync(listFD, path: folder.uidList.path) } catch { Log.warning("\(label): \(error)") }
            close(listFD)
        }
        do {
            try Files.fsyncDirectory("\(folder.path)/new")
        } catch {
            for t in round { t.failure = error }
        }
        for t in round { t.done = true }
    }
}
