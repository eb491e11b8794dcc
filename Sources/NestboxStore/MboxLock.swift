// Locking an mbox as Postfix local(8)/virtual(8), Dovecot and UW-IMAP do, for Mbox.purge.
//
// - The methods are taken in the order the caller lists them (the site's `mailbox_delivery_lock`
//   order, e.g. "dotlock, fcntl"), all against one deadline: `DotLock.Options.timeout` covers
//   the whole set, not each lock. Every waiter polls (Postfix's deliver_flock and dot_lockfile
//   poll too); nothing blocks in F_SETLKW or in flock(2) without LOCK_NB, so the deadline holds.
// - dotlock: `<mbox>.lock`, O_CREAT|O_EXCL, content `<pid>:<hostname>` (Dovecot's; Postfix writes
//   an empty lock with mode 0 and reads nothing in it). Stale when it names this host and a dead
//   process, or when neither the lock nor the mbox changed for `staleAfter` seconds (Dovecot's
//   mbox_dotlock_change_timeout, 2 min, judged by mtime as Dovecot does; Postfix breaks a lock
//   whose ctime is older than stale_lock_time, 500 s). An EMPTY lock is NOT stale after 2 s
//   here, unlike DotLock.swift's rule for dovecot-uidlist.lock: Postfix's own mbox locks are
//   always empty and live for the whole delivery, so that rule would break a lock Postfix
//   holds. This is why the mbox dotlock is not the DotLock class.
// - fcntl: a whole-file F_WRLCK (F_RDLCK for a dry run) on the one descriptor of the mbox. Our
//   process must never open the mbox a second time while it holds the lock: closing any
//   descriptor of a file drops all of the process's fcntl locks on it.
// - flock: LOCK_EX (LOCK_SH for a dry run) on the same descriptor.
// After the kernel locks the path is stat()ed again: if it no longer names the inode we locked
// (someone replaced the file while we waited), the kernel locks are dropped and taken again on
// the new file, within the same deadline. A dry run takes no dotlock (it would create a file)
// and takes the kernel locks shared.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

/// flock(2): in Swift the name `flock` means the fcntl struct, which hides the function.
@_silgen_name("flock")
func systemFlock(_ fd: Int32, _ operation: Int32) -> Int32

public enum MboxLock: String, Sendable, CaseIterable {
    case dotlock, fcntl, flock
}

/// The locks of one mbox, held from `acquire` until `release` (or deinit).
final class MboxLockSession {
    let path: String
    let exclusive: Bool
    /// The mbox, opened once (read-write when exclusive, so that F_WRLCK is allowed).
    private(set) var fd: Int32 = -1
    /// What fstat said once every lock was held.
    private(set) var status = stat()
    private var dotlock: MboxDotLock?

    private init(path: String, exclusive: Bool) {
        self.path = path
        self.exclusive = exclusive
    }

    deinit { release() }

    static func acquire(_ path: String, locks: [MboxLock], options: DotLock.Options, exclusive: Bool) throws -> MboxLockSession {
        try Mbox.requireExisting(path)
        let session = MboxLockSession(path: path, exclusive: exclusive)
        let deadline = monotonicSeconds() + options.timeout
        do {
            while true {
                for lock in locks {
                    switch lock {
                    case .dotlock:
                        if exclusive && session.dotlock == nil {
                            session.dotlock = try MboxDotLock.acquire(mbox: path, options: options, deadline: deadline)
                        }
                    case .fcntl:
                        try session.open()
                        try session.kernelLock(.fcntl, deadline: deadline, timeout: options.timeout)
                    case .flock:
                        try session.open()
                        try session.kernelLock(.flock, deadline: deadline, timeout: options.timeout)
                    }
                }
                try session.open()
                var now = stat()
                if lstat(path, &now) != 0 {
                    if errno != ENOENT { throw NestboxFailure.system("stat", path) }
                } else if now.st_ino == session.status.st_ino && now.st_dev == session.status.st_dev {
                    fstat(session.fd, &session.status)
                    return session
                }
                // Replaced (or removed) while we waited: lock whatever is there now.
                session.closeFile()
                try Mbox.requireExisting(path)
                if monotonicSeconds() > deadline {
                    throw NestboxFailure(.temporary.with(text: "Mailbox is locked, try again later"),
                                         "lock \(path): the file kept changing under us for \(Int(options.timeout)) s")
                }
            }
        } catch {
            session.release()
            throw error
        }
    }

    /// Opens the mbox once; checks it is a regular file.
    private func open() throws {
        guard fd < 0 else { return }
        let flags = (exclusive ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC
        let opened = Glibc.open(path, flags)
        if opened < 0 {
            let code = errno
            if code == ENOENT { try Mbox.requireExisting(path) }
            if code == EACCES || code == EPERM || code == EROFS {
                throw NestboxFailure(.config, "open \(path) for \(exclusive ? "update" : "reading"): \(errnoText(code))")
            }
            throw NestboxFailure.system("open", path, errno: code)
        }
        fd = opened
        fstat(fd, &status)
        guard (status.st_mode & S_IFMT) == S_IFREG else {
            closeFile()
            throw NestboxFailure(.dataError.with(text: "Not a mailbox"), "\(path): not a regular file")
        }
    }

    private func kernelLock(_ kind: MboxLock, deadline: Double, timeout: Double) throws {
        var pause: UInt32 = 1_000
        while true {
            let rc: Int32
            if kind == .fcntl {
                rc = Mbox.fcntlLock(fd, exclusive ? F_WRLCK : F_RDLCK)
            } else {
                rc = systemFlock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB)
            }
            if rc == 0 { return }
            let code = errno
            if code == EINTR { continue }
            guard code == EAGAIN || code == EACCES || code == EWOULDBLOCK else {
                throw NestboxFailure.system("\(kind.rawValue) lock", path, errno: code)
            }
            if monotonicSeconds() > deadline {
                throw NestboxFailure(.temporary.with(text: "Mailbox is locked, try again later"),
                                     "\(kind.rawValue) lock \(path): timed out after \(Int(timeout)) s")
            }
            usleep(pause / 2 + UInt32.random(in: 0...pause))
            pause = min(pause * 2, 50_000)
        }
    }

    /// Marks the dotlock alive during long work.
    func touch() { dotlock?.touch() }

    private func closeFile() {
        if fd >= 0 { Glibc.close(fd) }  // drops our fcntl and flock locks on it
        fd = -1
    }

    /// Kernel locks first (closing the file), the dotlock last: the reverse of the usual order.
    func release() {
        closeFile()
        dotlock?.release()
        dotlock = nil
    }
}

/// `<mbox>.lock` under the rules written at the top of this file.
final class MboxDotLock {
    let path: String
    private var held = true
    private let inode: ino_t
    private static var content: [UInt8] { Array("\(getpid()):\(Host.name)".utf8) }

    private init(path: String, inode: ino_t) {
        self.path = path
        self.inode = inode
    }

    deinit { release() }

    static func acquire(mbox: String, options: DotLock.Options, deadline: Double) throws -> MboxDotLock {
        let lockPath = mbox + ".lock"
        var pause: UInt32 = 1_000
        var warned = false
        while true {
            let whole = try createWhole(lockPath)
            if case .made(let lock) = whole { return lock }
            errno = EEXIST
            let fd = whole == .exists ? -1 : Glibc.open(lockPath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            if fd >= 0 {
                defer { Glibc.close(fd) }
                var st = stat()
                fstat(fd, &st)
                do { try Files.writeAll(fd, content, path: lockPath) } catch { Files.removeQuietly(lockPath); throw error }
                return MboxDotLock(path: lockPath, inode: st.st_ino)
            }
            let code = errno
            if code == EACCES || code == EPERM || code == EROFS {
                throw NestboxFailure(.config, "create lock \(lockPath): \(errnoText(code)) (the mbox's directory must be writable by the purge)")
            }
            if code != EEXIST { throw NestboxFailure.system("create lock", lockPath, errno: code) }
            if try removeIfStale(lockPath, mbox: mbox, staleAfter: options.staleAfter, warned: &warned) { continue }
            if monotonicSeconds() > deadline {
                throw NestboxFailure(.temporary.with(text: "Mailbox is locked, try again later"),
                                     "lock \(lockPath): timed out after \(Int(options.timeout)) s")
            }
            usleep(pause / 2 + UInt32.random(in: 0...pause))
            pause = min(pause * 2, 50_000)
        }
    }

    /// The lock made whole in one step where the file system allows it: an unnamed file
    /// (O_TMPFILE) gets `<pid>:<host>`, then is linked to the lock's name, which fails if the
    /// lock exists (as O_EXCL does). A process killed at any instant leaves either no lock or
    /// one naming it, never an empty one: an empty lock looks like Postfix's (never stale here
    /// while the mbox changes, and for Postfix not before stale_lock_time, 500 s), so
    /// deliveries and purges would wait on it for minutes. Returns nil when the lock exists
    /// (the caller judges it) or when O_TMPFILE is not supported (the caller falls back to
    /// O_EXCL then a write).
    private enum Whole: Equatable {
        case made(MboxDotLock), exists, unsupported
        static func == (a: Whole, b: Whole) -> Bool {
            switch (a, b) {
            case (.exists, .exists), (.unsupported, .unsupported): return true
            case (.made(let x), .made(let y)): return x === y
            default: return false
            }
        }
    }

    private static func createWhole(_ lockPath: String) throws -> Whole {
        let dir = Files.directoryName(lockPath)
        // O_TMPFILE is a macro Swift does not import: __O_TMPFILE | O_DIRECTORY, with
        // __O_TMPFILE 020000000 in Linux's generic flags (x86_64, arm64, ...).
        let tmpFile: Int32 = 0o20000000 | O_DIRECTORY
        let fd = Glibc.open(dir, tmpFile | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return .unsupported }  // EOPNOTSUPP, EISDIR (old kernels), EACCES...: fall back
        defer { Glibc.close(fd) }
        try Files.writeAll(fd, content, path: lockPath)
        var st = stat()
        fstat(fd, &st)
        if linkat(AT_FDCWD, "/proc/self/fd/\(fd)", AT_FDCWD, lockPath, AT_SYMLINK_FOLLOW) == 0 {
            return .made(MboxDotLock(path: lockPath, inode: st.st_ino))
        }
        return errno == EEXIST ? .exists : .unsupported  // no /proc, or another error: the O_EXCL way says what
    }

    /// True when the lock is gone (removed here as stale, or by its holder meanwhile).
    private static func removeIfStale(_ path: String, mbox: String, staleAfter: Double, warned: inout Bool) throws -> Bool {
        var st = stat()
        if lstat(path, &st) != 0 { return errno == ENOENT }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw NestboxFailure(.temporary.with(text: "Mailbox lock is broken"),
                                 "lock \(path): is not a regular file, not a lock; remove it")
        }
        // Mode 0 (Postfix's locks) cannot be opened by non-root: judge those by age only.
        var text = ""
        let fd = Glibc.open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if fd >= 0 {
            var buffer = [UInt8](repeating: 0, count: 300)
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            Glibc.close(fd)
            if n > 0 { text = String(decoding: buffer[0..<n], as: UTF8.self) }
        }
        var stale = false
        if let colon = text.firstIndex(of: ":"), let pid = pid_t(text[..<colon]), pid > 0,
           String(text[text.index(after: colon)...]) == Host.name, kill(pid, 0) != 0, errno == ESRCH {
            stale = true
        } else {
            var newest = Double(st.st_mtim.tv_sec)
            var m = stat()
            if lstat(mbox, &m) == 0 { newest = max(newest, Double(m.st_mtim.tv_sec)) }
            stale = wallSeconds() - newest > staleAfter
        }
        guard stale else { return false }
        var again = stat()
        guard lstat(path, &again) == 0, again.st_ino == st.st_ino else { return true }
        if unlink(path) != 0 {
            if errno == ENOENT { return true }
            if !warned { Log.warning("remove stale lock \(path): \(errnoText(errno))") }
            warned = true
            return false
        }
        Log.warning("removed stale lock \(path) (\(text.isEmpty ? "empty" : text))")
        return true
    }

    func touch() {
        guard held else { return }
        _ = utimes(path, nil)
    }

    /// Removes the lock if it is still ours (same inode, our content).
    func release() {
        guard held else { return }
        held = false
        var st = stat()
        guard lstat(path, &st) == 0, st.st_ino == inode else { return }
        if let text = try? Files.read(path, limit: 300), text == MboxDotLock.content { unlink(path) }
    }
}
