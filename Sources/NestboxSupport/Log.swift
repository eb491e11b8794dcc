// One logging path for every program: `program[pid]: text`, to syslog (facility mail by
// default) or to stderr when asked. Under Postfix's pipe(8) stdout and stderr end up in bounce
// messages, so nothing but the one DSN line may be printed there unless the administrator asks
// for stderr logging.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum Log {
    /// `file`: lines appended to a file of their own (`log_file`), for hosts without syslog.
    public enum Destination: Equatable, Sendable { case syslog, stderr, file(String) }

    nonisolated(unsafe) private static var program = "nestbox"
    nonisolated(unsafe) private static var destination: Destination = .stderr
    nonisolated(unsafe) private static var identity: UnsafeMutablePointer<CChar>? = nil
    nonisolated(unsafe) private static var fileDescriptor: Int32 = -1

    /// The socket syslog(3) writes to.
    public static let syslogSocket = "/dev/log"

    /// Sets the program name and destination. syslog's identity string must outlive openlog.
    /// With `fallbackToStandardError`, when syslog cannot be reached (no socket at /dev/log:
    /// many containers and minimal hosts run no syslog daemon), that is said once on standard
    /// error and the lines go there instead of being dropped. A log file that cannot be opened is said once too, and the
    /// lines go to standard error. Returns where the lines really go.
    @discardableResult
    public static func setup(program name: String, destination dest: Destination, facility: Int32 = LOG_MAIL,
                             fallbackToStandardError: Bool = false) -> Destination {
        program = name
        destination = dest
        switch dest {
        case .syslog:
            var st = stat()
            guard !fallbackToStandardError || (stat(syslogSocket, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK) else {
                fputs("\(name): syslog is unreachable (no socket at \(syslogSocket)); log lines go to standard error (set log_file to keep them in a file)\n", Glibc.stderr)
                destination = .stderr
                return destination
            }
            identity = strdup(name)
            openlog(identity, LOG_PID | LOG_NDELAY, facility)
        case .file(let path):
            fileDescriptor = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o640)
            if fileDescriptor < 0 {
                fputs("\(name): log_file \(path): \(String(cString: strerror(errno))); log lines go to standard error\n", Glibc.stderr)
                destination = .stderr
            }
        case .stderr:
            break
        }
        return destination
    }

    public static func info(_ text: String) { emit(LOG_INFO, text) }
    public static func warning(_ text: String) { emit(LOG_WARNING, "warning: " + text) }
    public static func error(_ text: String) { emit(LOG_ERR, "error: " + text) }
    public static func fatal(_ text: String) { emit(LOG_CRIT, "fatal: " + text) }

    private static func emit(_ priority: Int32, _ text: String) {
        switch destination {
        case .syslog:
            text.withCString { p in withVaList([p]) { vsyslog(priority, "%s", $0) } }
        case .stderr:
            let line = "\(program)[\(getpid())]: \(text)\n"
            line.withCString { p in _ = fputs(p, Glibc.stderr) }
        case .file:
            // One write per line (O_APPEND): lines of several processes never mix.
            var now = time(nil)
            var tm = tm()
            localtime_r(&now, &tm)
            var stamp = [CChar](repeating: 0, count: 32)
            strftime(&stamp, stamp.count, "%b %e %H:%M:%S", &tm)
            let line = Array("\(String(cString: stamp)) \(Host.name) \(program)[\(getpid())]: \(text)\n".utf8)
            _ = line.withUnsafeBytes { write(fileDescriptor, $0.baseAddress, $0.count) }
        }
    }

    /// Maps a syslog facility name from the configuration.
    public static func facility(named name: String) -> Int32? {
        let table: [String: Int32] = [
            "mail": LOG_MAIL, "daemon": LOG_DAEMON, "user": LOG_USER,
            "local0": LOG_LOCAL0, "local1": LOG_LOCAL1, "local2": LOG_LOCAL2, "local3": LOG_LOCAL3,
            "local4": LOG_LOCAL4, "local5": LOG_LOCAL5, "local6": LOG_LOCAL6, "local7": LOG_LOCAL7,
        ]
        return table[name.lowercased()]
    }
}
