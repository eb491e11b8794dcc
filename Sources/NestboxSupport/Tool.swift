// The start and the end of every Nestbox program, so that each `main.swift` holds only its own
// options and its calls into the library.
//
// `Tool.start` does, in this order: parse the command line against the program's `OptionSpec`
// (`--help` and `--version` answered here, exit 0); load the configuration (`-C file`, else
// $NESTBOX_CONF, else the default path if it exists, else the built-in defaults; then every
// `-o key=value`); set up logging (syslog, or standard error with `-L`); and derive the lock
// policy from `lock_timeout`. Dropping root is left to the program, through `dropPrivileges()`,
// because where it happens matters: nestbox-lmtpd binds its sockets as root first.
//
// Every exit goes through `finish`, with a row of the outcome table (SysExits.swift): no
// program calls exit(3) with a number of its own. How a failure is reported depends on who reads
// it:
// - `.dsnLine` (programs run by Postfix's pipe(8)): one "<RFC 3463 status> <text>[: detail]" line
//   on standard output, which pipe(8) puts in the bounce or defer notice; the detail again on
//   standard error only when it is a terminal. Nothing else may be printed.
// - `.standardError` (daemons and administrators' tools): the detail on standard error, and in the
//   log once logging is set up.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public final class Tool {
    public enum Reporting: Sendable { case dsnLine, standardError }

    /// The options every program that reads the configuration shares; add them to the spec.
    public static let configFile = OptionSpec.Option.value("C", name: "config", "file",
        help: "configuration file (default: $NESTBOX_CONF, else \(Config.defaultPath))")
    public static let override = OptionSpec.Option.value("o", name: "override", "key=value", repeatable: true,
        help: "override one configuration key (repeatable)")
    public static let logToStandardError = OptionSpec.Option.flag("L", name: "log-stderr",
        help: "log to standard error instead of syslog")
    /// Every program's configuration check (ConfigCheck.swift), added to every spec by `init`.
    public static let checkConfig = OptionSpec.Option.flag(long: "check-config",
        help: "print the configuration keys set, check every value, exit 0 or 78")
    public static let allKeys = OptionSpec.Option.flag(long: "all-keys",
        help: "with --check-config, print every key, defaults included")

    public let spec: OptionSpec
    public let reporting: Reporting
    /// What the command line said; valid after `start`.
    public private(set) var options = ParsedOptions()
    /// The configuration in force; the built-in defaults until `start` has loaded it.
    public private(set) var config = Config()
    /// How long and how patiently locks are waited for (`lock_timeout`). Stores and tools take
    /// it from here (or from `Config.lockPolicy`) and pass it to every lock: there is no global.
    public private(set) var lockPolicy = DotLock.Options()
    private var logging: Log.Destination? = nil

    public init(_ spec: OptionSpec, reporting: Reporting) {
        self.spec = spec.adding([Tool.checkConfig, Tool.allKeys])
        self.reporting = reporting
    }

    /// Parses `arguments`, loads the configuration and sets up logging; exits on `--help`,
    /// `--version`, a usage error (64) or a configuration error (78). `syslogFallback` (the
    /// server): with no syslog to reach, say so once on standard error and log there instead.
    /// Not for nestbox-deliver, whose first output line is the DSN line pipe(8) reads, nor for
    /// the nightly tools, whose output cron mails.
    @discardableResult
    public func start(_ arguments: [String] = Array(CommandLine.arguments.dropFirst()),
                      environment: [String: String] = Config.currentEnvironment(),
                      syslogFallback: Bool = false) -> Tool {
        do {
            options = try spec.parse(arguments)
        } catch let f as NestboxFailure {
            usageError(f.detail)
        } catch {
            usageError("\(error)")
        }
        switch options.request {
        case .help: print(spec.helpText, terminator: ""); finish(.delivered)
        case .version: print(spec.versionText, terminator: ""); finish(.delivered)
        case .run: break
        }
        let checking = options.has(Tool.checkConfig.name)
        if options.has(Tool.allKeys.name) && !checking { usageError("--all-keys goes with --check-config") }
        do {
            config = try Config.load(explicitPath: options.value(Tool.configFile.name), environment: environment,
                                     overrides: options.values(Tool.override.name))
        } catch {
            if checking { checkConfigExit(["\(error)"]) }
            finish(.config, detail: "\(error)")
        }
        if checking {
            let check = ConfigCheck(config)
            print(check.listing(all: options.has(Tool.allKeys.name)), terminator: "")
            for w in check.warnings { fputs("\(spec.program): warning: \(w)\n", stderr) }
            checkConfigExit(check.errors)
        }
        lockPolicy = config.lockPolicy
        let destination: Log.Destination = options.has(Tool.logToStandardError.name) ? .stderr : config.logDestination
        logging = Log.setup(program: spec.program, destination: destination, facility: config.syslogFacility,
                            fallbackToStandardError: syslogFallback)
        return self
    }

    /// The end of `--check-config`: each error on standard error (never on a DSN line: the
    /// administrator runs this), exit 78 if there is one, else 0.
    private func checkConfigExit(_ errors: [String]) -> Never {
        for e in errors { fputs("\(spec.program): error: \(e)\n", stderr) }
        fflush(stdout)
        exit(errors.isEmpty ? Outcome.delivered.exitCode : Outcome.config.exitCode)
    }

    /// Becomes the mail owner if started as root (see Privileges.swift); exits through `fail`
    /// if that cannot be done.
    public func dropPrivileges() {
        do {
            try Privileges.dropIfRoot(config: config)
        } catch {
            fail((error as? NestboxFailure) ?? NestboxFailure(.temporary, "drop privileges: \(error)"))
        }
    }

    /// `body`'s value; a failure exits through `fail` (any other error as a temporary one).
    public func orFail<T>(_ body: () throws -> T) -> T {
        do {
            return try body()
        } catch let f as NestboxFailure {
            fail(f)
        } catch {
            fail(NestboxFailure(.temporary, "\(error)"))
        }
    }

    /// A command line that parsed but does not make sense ("no user given"): exit 64.
    public func usageError(_ text: String) -> Never {
        finish(.usage, detail: text + " (see --help)")
    }

    /// Where a maintenance tool's fatal detail goes besides the log: standard error, always
    /// (a cron job or `2>file` must see why it failed), unless the log is standard error
    /// already and has it.
    func detailNeedsStandardError(loggedThere: Bool) -> Bool {
        logging == nil || logging != .stderr || !loggedThere
    }

    /// Logs `failure` as fatal and exits with its row.
    public func fail(_ failure: NestboxFailure) -> Never {
        if logging != nil { Log.fatal(failure.detail) }
        failing = logging != nil
        finish(failure.outcome, detail: failure.detail)
    }

    /// Set by `fail` once the detail is in the log.
    private var failing = false

    /// Reports `outcome` as `reporting` says and exits with its code. `logged`: the detail is
    /// already in the log, so the DSN line does not repeat it.
    public func finish(_ outcome: Outcome, detail: String? = nil, logged: Bool = false) -> Never {
        if !outcome.isSuccess {
            switch reporting {
            case .dsnLine:
                var line = outcome.dsnLine
                if let detail, !logged { line += ": " + detail }
                print(line)
                if let detail, isatty(2) != 0 { fputs("\(spec.program): \(detail)\n", stderr) }
            case .standardError:
                // Only `fail` puts the detail in the log first.
                if let detail, detailNeedsStandardError(loggedThere: outcome != .usage && failing) {
                    fputs("\(spec.program): \(detail)\n", stderr)
                }
            }
        }
        fflush(stdout)
        exit(outcome.exitCode)
    }
}
