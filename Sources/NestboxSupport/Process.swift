// Small process-wide facilities: unique counters, the host name, random bytes, hex, and
// threads without Foundation.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A process-wide counter for unique names (temporary files, Maildir `Q` values).
public enum UniqueCounter {
    nonisolated(unsafe) private static var value: UInt64 = 0
    private static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    public static func next() -> UInt64 {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        value += 1
        return value
    }
}

/// The host name as Maildir and lock files use it.
public enum Host {
    public static let name: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        if gethostname(&buffer, buffer.count - 1) != 0 { return "localhost" }
        let n = String(cString: buffer)
        return n.isEmpty ? "localhost" : n
    }()

    /// The fully qualified name, as Postfix's `myhostname` defaults to it: the canonical name
    /// getaddrinfo(3) gives for the host name when it has a dot, else the host name itself.
    public static let fullyQualifiedName: String = {
        if name.contains(".") { return name }
        var hints = addrinfo()
        hints.ai_flags = AI_CANONNAME
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>? = nil
        guard getaddrinfo(name, nil, &hints, &result) == 0, let first = result else { return name }
        defer { freeaddrinfo(result) }
        guard let canonical = first.pointee.ai_canonname.map({ String(cString: $0) }), canonical.contains(".") else { return name }
        return canonical
    }()
}

/// Random bytes from the kernel (/dev/urandom; falls back to time and pid if it cannot be read).
public func randomBytes(_ count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    let fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
    if fd >= 0 {
        defer { close(fd) }
        var got = 0
        while got < count {
            let n = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, count - got) }
            if n <= 0 { break }
            got += n
        }
        if got == count { return out }
    }
    var seed = UInt64(wallSeconds() * 1e6) ^ UInt64(getpid()) << 32 ^ UniqueCounter.next()
    for i in 0..<count {
        seed = seed &* 6364136223846793005 &+ 1442695040888963407
        out[i] = UInt8(truncatingIfNeeded: seed >> 33)
    }
    return out
}

public func hexString<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
    let digits: [Character] = Array("0123456789abcdef")
    var s = ""
    for b in bytes {
        s.append(digits[Int(b >> 4)])
        s.append(digits[Int(b & 15)])
    }
    return s
}

/// Starts a detached thread running `body` (no Foundation needed).
public func startThread(_ body: @escaping () -> Void) {
    final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { arg in
        let box = Unmanaged<AnyObject>.fromOpaque(arg!).takeRetainedValue() as! Box
        box.body()
        return nil
    }, box)
    if rc == 0 { pthread_detach(thread) } else { Unmanaged<AnyObject>.fromOpaque(box).release() }
}
