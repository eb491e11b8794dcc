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
// reached without following a link), named `lock.<host>.<pid>.<random>` (dots in the host name
// written as `_`). Locks in a directory on another file system (EXDEV) are taken with O_EXCL. A
// hitch removed by someone else is made again. One left by a process that was killed is
// removed by the store's housekeeping (its pid is gone); a lock linked to it names a dead
// process and is judged stale as any other. Only nestbox-lmtpd uses one: a process that takes
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

    deinit { remove() }

    /// What `link` did.
    enum Outcome {
        /// The lock is made: a link to the hitch, whose inode and mtime are these.
        case linked(ino_t, timespec)
        /// The name is taken.
        case exists
        /// Not possible here: take the lock with O_EXCL.
        case unavailable
    }

    /// Links the hitch as `lockPath`, its mtime set to now first.
    func link(as lockPath: String) -> Outcome {
        let parent = Files.directoryName(lockPath)
        for attempt in 0..<2 {
            pthread_mutex_lock(&mutex)
            if elsewhere.contains(parent) || (directory < 0 && !make()) {
                pthread_mutex_unlock(&mutex)
                return .unavailable
            }
            let (dir, name, file, inode) = (directory, self.name, self.file, self.inode)
            pthread_mutex_unlock(&mutex)

            var st = stat()
            guard futimens(file, nil) == 0, fstat(file, &st) == 0 else { return .unavailable }
            if st.st_nlink > 0 && linkat(dir, name, AT_FDCWD, lockPath, 0) == 0 { return .linked(inode, st.st_mtim) }
            let code = st.st_nlink == 0 ? ENOENT : errno
            switch code {
            case EEXIST:
                return .exists
            case EXDEV:
                pthread_mutex_lock(&mutex)
                if elsewhere.count < 10_000 { elsewhere.insert(parent) }
                pthread_mutex_unlock(&mutex)
                return .unavailable
            case ENOENT where attempt == 0:
                // The hitch itself gone (removed by a cleanup)? Then made again, once.
                guard fstat(file, &st) == 0, st.st_nlink == 0 else { return .unavailable }
                pthread_mutex_lock(&mutex)
                if self.file == file { close() }
                pthread_mutex_unlock(&mutex)
            default:
                return .unavailable
            }
        }
        return .unavailable
    }

    /// Removes the hitch (at exit; locks linked to it are released by their holders first).
    public func remove() {
        pthread_mutex_lock(&mutex)
        if directory >= 0 { unlinkat(directory, name, 0) }
        close()
        pthread_mutex_unlock(&mutex)
    }

    /// Under `mutex`.
    private func make() -> Bool {
        guard let dir = try? Files.openDirectoryBeneath(base, relative) else { return false }
        let candidate = "lock.\(DotLockHitch.hostLabel).\(getpid()).\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        let fd = openat(dir, candidate, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
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
        return true
    }

    /// Under `mutex`.
    private func close() {
        if file >= 0 { Glibc.close(file) }
        if directory >= 0 { Glibc.close(directory) }
        (directory, file, name, inode) = (-1, -1, "", 0)
    }
}
