// Dotlocks as Dovecot takes them (lib/file-dotlock.c), so that Nestbox and Dovecot exclude each
// other on `dovecot-uidlist.lock`, `dovecot-keywords` and friends.
//
// - The lock is the file `<path>.lock`, created with O_CREAT|O_EXCL; its content is
//   `<pid>:<hostname>` with no newline, written at once.
// - A lock is stale, and may be removed, when it names this host and a process that no longer
//   exists, when it is still empty 2 s after it was made (its creator died before writing), or
//   when neither the lock nor any of the files it protects has changed for `staleAfter` seconds
//   (120: a live holder touches the lock every 10 s during long work).
// - A waiter gives up after `timeout` seconds (Dovecot waits up to 122) with a temporary failure.
//   The timeout is checked on every turn of the wait, whatever the turn found: a lock that
//   cannot be removed, or one that vanishes and reappears, never keeps a waiter past it.
// - A lock path that is not a regular file (a directory, a symbolic link, a fifo...) is no lock
//   anyone holds, and not ours to remove (a link's target may be anything): the waiter fails at
//   once, naming the path and what it is, for the administrator to remove it.
// - A stale lock that cannot be removed (unlink fails: EPERM, EACCES...) is waited on like a
//   held one, with one warning per waiter, until the timeout.
// Removing a stale lock re-checks that it is still the same inode first, so that two waiters
// judging the same dead lock do not remove each other's fresh one.
// A long-running process may set `DotLock.hitch`: its locks are then links to one file of its
// own instead of new files (DotLockHitch.swift), the same lock to everyone else.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public final class DotLock {
    public let path: String
    private var held = true
    private let inode: ino_t
    /// A link to the process's hitch: released through it (DotLockHitch.release).
    private var hitched: (hitch: DotLockHitch, token: UInt64)? = nil

    /// Set once, before the first lock, by a process that takes many (nestbox-lmtpd).
    nonisolated(unsafe) public static var hitch: DotLockHitch?

    public struct Options: Sendable {
        public var timeout: Double
        public var staleAfter: Double
        /// 122 s: Dovecot's wait. Programs pass the configured one (`lock_timeout`,
        /// Config.lockPolicy) down to every lock they take.
        public init(timeout: Double = 122, staleAfter: Double = 120) {
            self.timeout = timeout
            self.staleAfter = staleAfter
        }
    }

    /// The lock's mtime when we made it: with the inode, what tells our lock from another one
    /// made later (an inode number alone can be reused at once).
    private let made: timespec

    private init(path: String, inode: ino_t, made: timespec = timespec()) {
        self.path = path
        self.inode = inode
        self.made = made
    }

    deinit { release() }

    /// Takes `lockPath`, waiting while someone else holds it. `watched` are the files whose
    /// changes count as the holder's activity (e.g. the uidlist itself).
    public static func acquire(_ lockPath: String, watching watched: [String] = [], options: Options = Options()) throws -> DotLock {
        let content = Array("\(getpid()):\(Host.name)".utf8)
        let start = monotonicSeconds()
        var pause: UInt32 = 100  // microseconds; grows to 4 ms, with jitter so waiters spread out
        var unremovable: String? = nil  // why a stale lock could not be removed, once known
        while true {
            // O_EXCL, then the content: Dovecot's own way (dotlock_use_excl). A temporary file
            // linked into place would never be empty, but costs a second inode per lock, and
            // ext4's inode allocator slows down with every recently freed inode. An empty lock
            // is judged by its age instead (removeIfStale). With a hitch, a link to it.
            var taken = false
            let hitch = DotLock.hitch
            switch hitch?.link(as: lockPath) ?? .unavailable {
            case .linked(let token, let inode, let mtime):
                let lock = DotLock(path: lockPath, inode: inode, made: mtime)
                lock.hitched = (hitch!, token)
                return lock
            case .exists:
                taken = true
            case .unavailable:
                break
            }
            let fd = taken ? -1 : open(lockPath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            if fd >= 0 {
                do {
                    try Files.writeAll(fd, content, path: lockPath)
                } catch {
                    Glibc.close(fd)
                    Files.removeQuietly(lockPath)
                    throw error
                }
                var st = stat()
                fstat(fd, &st)
                Glibc.close(fd)
                return DotLock(path: lockPath, inode: st.st_ino, made: st.st_mtim)
            }
            if !taken && errno != EEXIST { throw NestboxFailure.system("create lock", lockPath) }
            let vanished = try removeIfStale(lockPath, watched: watched, staleAfter: options.staleAfter,
                                             unremovable: &unremovable)
            if monotonicSeconds() - start > options.timeout {
                let why = unremovable.map { "; it is stale but cannot be removed: \($0)" } ?? ""
                throw NestboxFailure(.temporary.with(text: "Mailbox is locked, try again later"),
                                     "lock \(lockPath): timed out after \(Int(options.timeout)) s\(why)")
            }
            if vanished { continue }
            usleep(pause / 2 + UInt32.random(in: 0...pause))
            pause = min(pause * 2, 4_000)
        }
    }

    /// Marks the lock as alive during long work (Dovecot's holders do it every 10 s).
    public func touch() {
        guard held else { return }
        _ = utimes(path, nil)
        touched = true
    }

    private var touched = false

    /// Removes the lock if it is still ours. Safe to call twice.
    public func release() {
        guard held else { return }
        held = false
        // Same inode and the mtime we made it with (or, after touch(), still our pid:host
        // inside): an inode number alone can be reused by a lock someone else created after
        // ours was judged stale and removed.
        if let (hitch, token) = hitched {
            hitch.release(path, token: token)
            return
        }
        var st = stat()
        guard lstat(path, &st) == 0, st.st_ino == inode else { return }
        if !touched && st.st_mtim.tv_sec == made.tv_sec && st.st_mtim.tv_nsec == made.tv_nsec {
            unlink(path)
        } else if let content = try? Files.read(path, limit: 300), content == Array("\(getpid()):\(Host.name)".utf8) {
            unlink(path)
        }
    }

    /// Judges the lock at `path` by Dovecot's rules and removes it if it is stale. Returns true
    /// only when the lock is gone (removed here, or by someone else meanwhile): the caller may
    /// create it again at once. Returns false while it stands: held, or stale but impossible to
    /// remove (`unremovable` then holds the reason; the warning is logged the first time only).
    /// Throws a temporary failure when `path` is not a regular file.
    static func removeIfStale(_ path: String, watched: [String], staleAfter: Double,
                              unremovable: inout String?) throws -> Bool {
        // lstat first: opening a fifo or a device for reading can block or do things.
        var st = stat()
        if lstat(path, &st) != 0 { return errno == ENOENT }  // vanished: try again at once
        try requireRegularFile(path, mode: st.st_mode)
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            if code == ELOOP { try requireRegularFile(path, mode: S_IFLNK) }  // replaced meanwhile
            return code == ENOENT
        }
        let lstatInode = st.st_ino
        fstat(fd, &st)
        guard st.st_ino == lstatInode, (st.st_mode & S_IFMT) == S_IFREG else {
            Glibc.close(fd)
            return false  // replaced between lstat and open: judge it on the next turn
        }
        var buffer = [UInt8](repeating: 0, count: 300)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        Glibc.close(fd)
        let text = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""

        var stale = holderIsDead(text, modified: st.st_mtim)
        if !stale {
            var newest = Double(st.st_mtim.tv_sec)
            for file in watched {
                var w = stat()
                if lstat(file, &w) == 0 { newest = max(newest, Double(w.st_mtim.tv_sec)) }
            }
            if wallSeconds() - newest > staleAfter { stale = true }
        }
        guard stale else { return false }
        var again = stat()
        guard lstat(path, &again) == 0, again.st_ino == st.st_ino else { return true }
        let what = text.isEmpty ? "empty" : text
        if unlink(path) != 0 {
            if errno == ENOENT { return true }
            let reason = errnoText(errno)
            if unremovable == nil { Log.warning("remove stale lock \(path) (\(what)): \(reason)") }
            unremovable = reason
            return false
        }
        Log.warning("removed stale lock \(path) (\(what))")
        return true
    }

    /// Whether a lock holding `text` was left by a process that is gone: it names a process of
    /// this host that no longer exists, or it is still empty 2 s after it was made (its creator
    /// writes the content right after creating it, so it died in between).
    public static func holderIsDead(_ text: String, modified: timespec) -> Bool {
        if let colon = text.firstIndex(of: ":"), let pid = pid_t(text[..<colon]), pid > 0 {
            let host = String(text[text.index(after: colon)...])
            return host == Host.name && kill(pid, 0) != 0 && errno == ESRCH
        }
        return text.isEmpty && wallSeconds() - Double(modified.tv_sec) > 2
    }

    /// For repair tools, which report what they remove: the dotlock at `path` when its holder is
    /// dead (`holderIsDead`), removed unless `dryRun`. Returns what it held ("1234:mx", or
    /// "empty"); nil when there is no such lock (none, a live holder, not a regular file).
    public static func removeIfHolderDead(_ path: String, dryRun: Bool) throws -> String? {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        guard let bytes = try Files.read(path, limit: 4096) else { return nil }
        let text = String(decoding: bytes.prefix(300), as: UTF8.self)
        guard holderIsDead(text, modified: st.st_mtim) else { return nil }
        if !dryRun {
            var again = stat()
            guard lstat(path, &again) == 0, again.st_ino == st.st_ino else { return nil }
            if unlink(path) != 0 && errno != ENOENT { throw NestboxFailure.system("remove stale lock", path) }
        }
        return text.isEmpty ? "empty" : text
    }

    /// Throws unless `mode` is a regular file's: anything else at a lock path is a leftover for
    /// the administrator, not a lock.
    static func requireRegularFile(_ path: String, mode: mode_t) throws {
        let what: String
        switch mode & S_IFMT {
        case S_IFREG: return
        case S_IFDIR: what = "a directory"
        case S_IFLNK: what = "a symbolic link"
        case S_IFIFO: what = "a named pipe"
        case S_IFSOCK: what = "a socket"
        case S_IFCHR, S_IFBLK: what = "a device"
        default: what = "not a regular file"
        }
        throw NestboxFailure(.temporary.with(text: "Mailbox lock is broken"),
                             "lock \(path): is \(what), not a lock file; remove it")
    }
}

public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

public func wallSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

