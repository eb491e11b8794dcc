// A long-running process's dotlocks without a new inode each: one file of its own (the hitch),
// holding `<pid>:<hostname>` like every lock, hard-linked into place as each lock and unlinked
// from there on release. link(2) fails with EEXIST when the name is taken, exactly as
// open(O_CREAT|O_EXCL) does, so Dovecot and other Nestbox processes exclude us and we them just
// as before; what they read and judge (the content, the mtime touched at each lock, the inode
// while it stands) is what an O_EXCL lock would show them.
//
// Why: every O_EXCL lock allocates an inode and frees it microseconds later. On ext4 without a
// journal the allocator then skips, for each new file, every inode freed in the last seconds
// (reading their inode-table blocks to see when): a server taking a lock per delivery slows its
// own file creations down. A link only adds a directory entry. bench/README gives the figures.
//
// The hitch lives in the mail root's `.nestbox/locks/` (the same file system as the mailboxes,
// reached, and made when missing, without following a link), named `lock.<host>.<pid>.<random>` (dots in the host name
// written as `_`). Locks in a directory on another file system (EXDEV) are taken with O_EXCL. A
// hitch removed by someone else is made again. One left by a process that was killed is
// removed by the store's housekeeping (its pid is gone); a lock linked to it names a dead
// process and is judged stale as any other. What differs: every lock of the process shows the
// mtime of its latest, so Nestbox's own age rule (nothing changed for 120 s) does not break the
// lock of a live nestbox-lmtpd that goes on delivering elsewhere; Dovecot never breaks the lock
// of a live process at all. Only the thread whose link is the latest at a path removes it, and
// only while the name is still a link to this hitch. Only nestbox-lmtpd uses one: a process that takes
// one lock and exits would only add the hitch's own inode.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public final class DotLockHitch: @unchecked Sendable {
    /// The directory the hitch is made in, and how it is reached: `base` as configured, then
    /// `relative` level by level without following a link.
    public let base: String
    public let relative: String

    private var mutex = pthread_mutex_t()
    /// Valid while `directory >= 0`; changed only under `mutex`.
    private var directory: Int32 = -1
    private var name = ""
    private var file: Int32 = -1
    private var inode: ino_t = 0
    /// Lock directories found on another file system.
    private var elsewhere: Set<String> = []

    /// The host name as hitch names carry it (dots as `_`, so the name splits on dots).
    public static let hostLabel = String(Host.name.map { $0 == "." ? "_" : $0 })

    public init(base: String, relative: String) {
        self.base = base
        self.relative = relative
        pthread_mutex_init(&mutex, nil)
    }

    deinit {
        remove()
        close()
    }

    /// What `link` did.
    enum Outcome {
        /// The lock is made: a link to the hitch; `token` is what `release` needs.
        case linked(token: UInt64, inode: ino_t, mtime: timespec)
        /// The name is taken.
        case exists
        /// Not possible here: take the lock with O_EXCL.
        case unavailable
    }

    /// The last link made at each lock path, and the hitch it was made from (`generation`):
    /// only that link's holder may remove the name. Under `mutex`.
    private var owners: [String: (token: UInt64, generation: UInt64)] = [:]
    private var nextToken: UInt64 = 0
    /// Counts the hitches made: a lock linked to an earlier one (gone: its last link went, so
    /// its inode may belong to anyone now) is never removed through this one.
    private var generation: UInt64 = 0

    /// Links the hitch as `lockPath`, its mtime set to now first (the lock's age is what other
    /// processes judge; every lock of this process then looks as fresh as its latest, which
    /// is what Dovecot assumes of a lock whose process is alive: it never breaks one).
    /// Everything runs under the mutex: the descriptors are never used while another thread
    /// replaces them, and a link and its release never interleave with another at that path.
    func link(as lockPath: String) -> Outcome {
        let parent = Files.directoryName(lockPath)
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        for attempt in 0..<2 {
            if retired || elsewhere.contains(parent) || (directory < 0 && !make()) { return .unavailable }
            var st = stat()
            guard futimens(file, nil) == 0, fstat(file, &st) == 0 else { return .unavailable }
            if st.st_nlink > 0 && linkat(directory, name, AT_FDCWD, lockPath, 0) == 0 {
                nextToken += 1
                owners[lockPath] = (nextToken, generation)
                if owners.count > 10_000 { owners = owners.filter { $0.value.generation == generation } }
                return .linked(token: nextToken, inode: inode, mtime: st.st_mtim)
            }
            let code = st.st_nlink == 0 ? ENOENT : errno
            switch code {
            case EEXIST:
                return .exists
            case EXDEV:
                if elsewhere.count < 10_000 { elsewhere.insert(parent) }
                return .unavailable
            case ENOENT where attempt == 0 && st.st_nlink == 0:
                // The hitch removed by someone else and no lock linked to it: made again, once.
                close()
            default:
                // ENOENT with links left: the hitch's name is gone but a lock made from it still
                // stands; O_EXCL until it is released and the hitch can be made again.
                return .unavailable
            }
        }
        return .unavailable
    }

    /// Removes `lockPath` if it is still the link `token` made: this process's latest link
    /// there, from the hitch that is still open (so the inode is ours), and the name still that
    /// inode. Returns whether it was removed.
    @discardableResult
    func release(_ lockPath: String, token: UInt64) -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        guard let owner = owners[lockPath], owner.token == token else { return false }
        owners[lockPath] = nil
        var st = stat()
        guard owner.generation == generation, file >= 0 else { return false }
        if lstat(lockPath, &st) != 0 {
            // Gone already (judged stale and removed): nothing to do. Anything else leaves a
            // lock that looks alive for as long as this process locks elsewhere: said so.
            if errno != ENOENT { Log.warning("lock \(lockPath): \(errnoText(errno)); not removed") }
            return false
        }
        guard st.st_ino == inode else { return false }
        if unlink(lockPath) == 0 { return true }
        if errno != ENOENT { Log.warning("remove lock \(lockPath): \(errnoText(errno))") }
        return false
    }

    /// Removes the hitch's name (at exit). Locks still linked to it are released by their
    /// holders as usual; later locks are made with O_EXCL.
    public func remove() {
        pthread_mutex_lock(&mutex)
        retired = true
        if directory >= 0 { unlinkat(directory, name, 0) }
        pthread_mutex_unlock(&mutex)
    }

    private var retired = false

    /// Under `mutex`.
    /// The directory is made here if missing (only a process with a hitch needs it), level by
    /// level without following a link. A hitch that cannot be made is not tried again: this
    /// process's locks are then made with O_EXCL, as without one.
    private func make() -> Bool {
        let dir: Int32
        do {
            dir = try Files.makeDirectoryBeneath(base, relative)
        } catch {
            Log.warning("dotlocks made as files (no lock file of this process): \(error)")
            retired = true
            return false
        }
        let candidate = "lock.\(DotLockHitch.hostLabel).\(getpid()).\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        let fd = openat(dir, candidate, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            Log.warning("dotlocks made as files (no lock file of this process): \(NestboxFailure.system("create", "\(base)/\(relative)/\(candidate)"))")
            retired = true
            Glibc.close(dir)
            return false
        }
        var st = stat()
        guard (try? Files.writeAll(fd, Array("\(getpid()):\(Host.name)".utf8), path: candidate)) != nil,
              fstat(fd, &st) == 0 else {
            unlinkat(dir, candidate, 0)
            Glibc.close(fd)
            Glibc.close(dir)
            return false
        }
        (directory, name, file, inode) = (dir, candidate, fd, st.st_ino)
        generation += 1
        return true
    }

    /// Under `mutex`.
    private func close() {
        if file >= 0 { Glibc.close(file) }
        if directory >= 0 { Glibc.close(directory) }
        (directory, file, name, inode) = (-1, -1, "", 0)
    }
}
