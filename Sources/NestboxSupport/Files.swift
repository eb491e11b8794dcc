// File primitives every writer in Nestbox goes through.
//
// Invariants: nothing here follows a symbolic link at the last component (O_NOFOLLOW, lstat);
// every write is checked, short writes are continued, EINTR is retried; a file that is meant to
// survive a crash is fsynced and so is the directory that names it; replacing a file is always
// "write a temporary file, fsync, rename over" so a reader sees the old or the new, never half.
// Files are created 0600 and directories 0700 unless told otherwise.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum Files {
    public static let fileMode: mode_t = 0o600
    public static let directoryMode: mode_t = 0o700

    /// Creates `path` exclusively for writing. Fails with EEXIST if anything is there,
    /// including a symbolic link.
    public static func createExclusive(_ path: String, mode: mode_t = fileMode) throws -> Int32 {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        if fd < 0 { throw NestboxFailure.system("create", path) }
        return fd
    }

    /// Opens an existing file for reading without following a symlink; nil when it does not exist.
    public static func openForReading(_ path: String) throws -> Int32? {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw NestboxFailure.system("open", path)
        }
        return fd
    }

    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        guard var base = bytes.baseAddress else { return }
        var left = bytes.count
        while left > 0 {
            let n = write(fd, base, left)
            if n < 0 {
                if errno == EINTR { continue }
                throw NestboxFailure.system("write", path)
            }
            if n == 0 { throw NestboxFailure.system("write", path, errno: EIO) }
            left -= n
            base = base.advanced(by: n)
        }
    }

    public static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
        try bytes.withUnsafeBytes { try writeAll(fd, $0, path: path) }
    }

    public static func fsync(_ fd: Int32, path: String) throws {
        while Glibc.fsync(fd) != 0 {
            if errno == EINTR { continue }
            throw NestboxFailure.system("fsync", path)
        }
    }

    public static func fdatasync(_ fd: Int32, path: String) throws {
        while Glibc.fdatasync(fd) != 0 {
            if errno == EINTR { continue }
            throw NestboxFailure.system("fdatasync", path)
        }
    }

    /// close(2), checked: on NFS and some file systems a deferred write error shows up here.
    public static func close(_ fd: Int32, path: String) throws {
        if Glibc.close(fd) != 0 && errno != EINTR { throw NestboxFailure.system("close", path) }
    }

    /// fsync of a directory, so that a name created or renamed in it survives a crash.
    public static func fsyncDirectory(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 { throw NestboxFailure.system("open directory", path) }
        defer { Glibc.close(fd) }
        try fsync(fd, path: path)
    }

    /// Removes a file, ignoring "not there". Used on failure paths: never throws.
    public static func removeQuietly(_ path: String) {
        _ = unlink(path)
    }

    public static func rename(_ from: String, _ to: String) throws {
        if Glibc.rename(from, to) != 0 { throw NestboxFailure.system("rename \(from) to", to) }
    }

    /// Writes `contents` to `path` atomically: a unique temporary name in the same directory,
    /// fsync, rename over, fsync of the directory. The old file is intact if anything fails.
    /// `temporary` names the temporary file when a lock held by the caller makes that name its
    /// own (Dovecot's `dovecot-uidlist.tmp`): a leftover of a crash there is overwritten.
    public static func replace(_ path: String, with contents: [UInt8], mode: mode_t = fileMode,
                               temporary: String? = nil) throws {
        let tmp = temporary ?? "\(path).tmp.\(getpid()).\(UniqueCounter.next())"
        let fd: Int32
        if temporary != nil {
            fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode)
            if fd < 0 { throw NestboxFailure.system("create", tmp) }
        } else {
            fd = try createExclusive(tmp, mode: mode)
        }
        do {
            try writeAll(fd, contents, path: tmp)
            try fsync(fd, path: tmp)
        } catch {
            Glibc.close(fd)
            removeQuietly(tmp)
            throw error
        }
        do {
            // close(2) releases the descriptor even when it reports an error: never twice.
            try close(fd, path: tmp)
        } catch {
            removeQuietly(tmp)
            throw error
        }
        do {
            try rename(tmp, path)
        } catch {
            removeQuietly(tmp)
            throw error
        }
        try fsyncDirectory(directoryName(path))
    }

    /// Reads a whole (small) file; nil when it does not exist. Refuses files over `limit` bytes.
    /// `reserve`: the capacity to leave in the array beyond the file's size (given that size),
    /// for a caller that appends to it: one allocation instead of a copy on the first append.
    public static func read(_ path: String, limit: Int = 16 << 20, reserve: (Int) -> Int = { _ in 0 }) throws -> [UInt8]? {
        guard let fd = try openForReading(path) else { return nil }
        defer { Glibc.close(fd) }
        var out: [UInt8] = []
        // Sized from the file: this runs several times a delivery on small files (maildirsize,
        // duplicate records), where a fixed 64 KiB buffer would be allocated and zeroed each time.
        var st = stat()
        let size = fstat(fd, &st) == 0 ? Int(st.st_size) : 65536
        out.reserveCapacity(min(size, limit) + 1 + reserve(size))
        var chunk = [UInt8](repeating: 0, count: min(65536, max(256, size + 1)))
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw NestboxFailure.system("read", path)
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
            if out.count > limit { throw NestboxFailure(.temporary, "read \(path): file larger than \(limit) bytes") }
        }
        return out
    }

    /// pread(2) of up to `count` bytes at `offset`.
    public static func pread(_ fd: Int32, count: Int, offset: Int, path: String) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = buffer.withUnsafeMutableBytes {
                Glibc.pread(fd, $0.baseAddress! + got, count - got, off_t(offset + got))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw NestboxFailure.system("read", path)
            }
            if n == 0 { break }
            got += n
        }
        buffer.removeLast(count - got)
        return buffer
    }

    /// lstat(2); nil when nothing is there.
    public static func status(_ path: String) throws -> stat? {
        var st = stat()
        if lstat(path, &st) != 0 {
            if errno == ENOENT || errno == ENOTDIR { return nil }
            throw NestboxFailure.system("stat", path)
        }
        return st
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// mkdir(2) with mode 0700; an existing directory is fine, anything else in the way
    /// (a file, a symlink) is an error. Returns true when it created the directory.
    @discardableResult
    public static func makeDirectory(_ path: String, mode: mode_t = directoryMode) throws -> Bool {
        if mkdir(path, mode) == 0 { return true }
        let code = errno
        if code == EEXIST && isDirectory(path) { return false }
        throw NestboxFailure.system("mkdir", path, errno: code)
    }

    /// makeDirectory, remembered per process: for directories that, once made, stay (the
    /// spool, the duplicate database's buckets). Saves a mkdir per delivery.
    public static func ensureDirectory(_ path: String) throws {
        if KnownDirectories.contains(path) { return }
        try makeDirectory(path)
        KnownDirectories.insert(path)
    }

    /// Opens the directory `relative` (levels joined by `/`, none of them `.` or `..`) below
    /// `base` one level at a time, each with O_NOFOLLOW | O_DIRECTORY relative to the level
    /// above, so that no symbolic link below `base` is ever followed; `base` itself is opened
    /// as configured (an administrator may make the mail root a link). Returns the descriptor
    /// (the caller closes it), or nil when a level does not exist. A level that is a symbolic
    /// link, or anything but a directory, is a temporary failure naming it.
    public static func openDirectoryBeneath(_ base: String, _ relative: String) throws -> Int32? {
        try walkBeneath(base, relative, create: false)
    }

    /// As `openDirectoryBeneath`, making the missing levels (mode 0700, each fsynced into its
    /// parent) with mkdirat relative to the level above.
    public static func makeDirectoryBeneath(_ base: String, _ relative: String) throws -> Int32 {
        guard let fd = try walkBeneath(base, relative, create: true) else {
            throw NestboxFailure.system("open directory", "\(base)/\(relative)", errno: ENOENT)
        }
        return fd
    }

    private static func walkBeneath(_ base: String, _ relative: String, create: Bool) throws -> Int32? {
        var fd = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT && !create { return nil }
            throw NestboxFailure.system("open directory", base)
        }
        var reached = base
        for level in relative.split(separator: "/") {
            let name = String(level)
            reached += "/" + name
            var next = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if next < 0 && errno == ENOENT && create {
                if mkdirat(fd, name, directoryMode) == 0 {
                    do { try fsync(fd, path: Files.directoryName(reached)) } catch { Glibc.close(fd); throw error }
                } else if errno != EEXIST {
                    let code = errno
                    Glibc.close(fd)
                    throw NestboxFailure.system("mkdir", reached, errno: code)
                }
                next = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            let code = errno
            if next < 0 {
                defer { Glibc.close(fd) }
                if code == ENOENT && !create { return nil }
                var st = stat()
                if fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 {
                    if (st.st_mode & S_IFMT) == S_IFLNK {
                        throw NestboxFailure(.temporary, "\(reached) is a symbolic link: refused below the mail root \(base)")
                    }
                    if (st.st_mode & S_IFMT) != S_IFDIR {
                        throw NestboxFailure(.temporary, "\(reached) is not a directory")
                    }
                }
                throw NestboxFailure.system("open directory", reached, errno: code)
            }
            Glibc.close(fd)
            fd = next
        }
        return fd
    }

    /// Throws, as `openDirectoryBeneath` does, when a level of `path` below `base` is a
    /// symbolic link or not a directory; returns whether the whole path exists.
    @discardableResult
    public static func checkBeneath(_ base: String, _ path: String) throws -> Bool {
        guard let fd = try openDirectoryBeneath(base, try relativePath(path, below: base)) else { return false }
        Glibc.close(fd)
        return true
    }

    /// `path` without the leading `base/` ("" for `base` itself); throws if it is not below.
    public static func relativePath(_ path: String, below base: String) throws -> String {
        if path == base { return "" }
        let prefix = base.hasSuffix("/") ? base : base + "/"
        guard path.hasPrefix(prefix) else { throw NestboxFailure(.temporary, "\(path) is not below the mail root \(base)") }
        return String(path.dropFirst(prefix.count))
    }

    /// Calls `body` for each entry of a directory except "." and "..", with its NUL-terminated
    /// name and the name's length (valid only during the call), its d_type (DT_UNKNOWN when the
    /// file system does not say) and the directory's descriptor (for fstatat). For scans of many
    /// thousand names, which `list` would turn into as many Strings. Returns false when the
    /// directory does not exist; a read error part way through throws (never a short listing).
    @discardableResult
    public static func forEachEntry(_ path: String,
                                    _ body: (UnsafePointer<CChar>, Int, UInt8, Int32) throws -> Void) throws -> Bool {
        guard let dir = opendir(path) else {
            if errno == ENOENT { return false }
            throw NestboxFailure.system("opendir", path)
        }
        defer { closedir(dir) }
        let fd = dirfd(dir)
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        let typeOffset = MemoryLayout<dirent>.offset(of: \dirent.d_type)!
        while true {
            errno = 0
            guard let entry = readdir(dir) else {
                if errno != 0 { throw NestboxFailure.system("readdir", path) }
                return true
            }
            // The name where it lies (see `list`).
            let raw = UnsafeRawPointer(entry)
            let name = raw.advanced(by: nameOffset).assumingMemoryBound(to: CChar.self)
            let count = strlen(name)
            if name[0] == 46 && (count == 1 || (count == 2 && name[1] == 46)) { continue }
            try body(name, count, raw.load(fromByteOffset: typeOffset, as: UInt8.self), fd)
        }
    }

    /// A directory opened for *at calls (O_DIRECTORY, not following a link at its last
    /// level); nil when it does not exist.
    public static func openDirectory(_ path: String) throws -> Int32? {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw NestboxFailure.system("open", path)
        }
        return fd
    }

    /// `body(0..<count)` in up to as many threads as the machine has cores (each taking a
    /// contiguous share of at least `minimumPerThread`), results in order. For independent
    /// system calls over many files (stat of a whole folder), where the kernel work, not the
    /// caller, is the cost. `body` must not touch shared mutable state.
    public static func parallelMap<T>(_ count: Int, minimumPerThread: Int, _ body: (Int) -> T) -> [T] {
        let cores = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        let threads = max(1, min(cores, 8, count / max(1, minimumPerThread)))
        if threads == 1 { return (0..<count).map(body) }
        return withoutActuallyEscaping(body) { body in
            var results = [T?](repeating: nil, count: count)
            results.withUnsafeMutableBufferPointer { buffer in
                let out = buffer
                let share = (count + threads - 1) / threads
                var ids: [pthread_t] = []
                for t in 1..<threads {
                    let range = (t * share)..<min(count, (t + 1) * share)
                    let job = ThreadJob { for k in range { out[k] = body(k) } }
                    var id = pthread_t()
                    let box = Unmanaged.passRetained(job).toOpaque()
                    if pthread_create(&id, nil, { arg in
                        Unmanaged<ThreadJob>.fromOpaque(arg!).takeRetainedValue().run()
                        return nil
                    }, box) == 0 {
                        ids.append(id)
                    } else {
                        Unmanaged<ThreadJob>.fromOpaque(box).release()
                        for k in range { out[k] = body(k) }  // no thread: do it here
                    }
                }
                for k in 0..<min(count, share) { out[k] = body(k) }
                for id in ids { pthread_join(id, nil) }
            }
            return results.map { $0! }
        }
    }

    /// The names in a directory except "." and "..", unsorted. nil when it does not exist.
    public static func list(_ path: String) throws -> [String]? {
        guard let dir = opendir(path) else {
            if errno == ENOENT { return nil }
            throw NestboxFailure.system("opendir", path)
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            // Read the name where it lies: copying d_name by value reads all 256 bytes, past a
            // short last entry at the end of the directory buffer (a crash at a page boundary).
            let name = String(cString: UnsafeRawPointer(entry)
                .advanced(by: MemoryLayout<dirent>.offset(of: \dirent.d_name)!)
                .assumingMemoryBound(to: CChar.self))
            if name == "." || name == ".." { continue }
            names.append(name)
        }
        return names
    }

    public static func directoryName(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        if slash == path.startIndex { return "/" }
        return String(path[..<slash])
    }

    public static func baseName(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }
}

/// One thread's share of Files.parallelMap.
private final class ThreadJob {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

enum KnownDirectories {
    nonisolated(unsafe) private static var set = Set<String>()
    private static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    static func contains(_ p: String) -> Bool {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return set.contains(p)
    }

    static func insert(_ p: String) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        set.insert(p)
    }
}
