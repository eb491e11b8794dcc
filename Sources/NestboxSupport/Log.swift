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
    public enum Destination: Sendable { case syslog, stderr }

    nonisolated(unsafe) private static var program = "nestbox"
    nonisolated(unsafe) private static var destination: Destination = .stderr
    nonisolated(unsafe) private static var identity: UnsafeMutablePointer<CChar>? = nil

    /// Sets the program name and destination. syslog's identity string must outlive openlog.
    public static func setup(program name: String, destination dest: Destination, facility: Int32 = LOG_MAIL) {
        program = name
        destination = dest
        if dest == .syslog {
            identity = strdup(name)
            openlog(identity, LOG_PID | LOG_NDELAY, facility)
        }
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
